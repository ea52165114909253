"""Data parallelism for the trainer through torch.distributed (torchrun): process group, BatchNorm over the
global batch, and one all-reduce of gradients + metrics per optimizer step.

Why not the DistributedDataParallel wrapper: Algorithm 1 runs two forward/backward passes per iteration through
the encoder (the VAE step with g, then the label step with g_e at the encoder g has just updated), each followed
by its own optimizer step. Each backward's gradients are summed over ranks here, in one flat buffer in a fixed
parameter order, right before that step; that is exactly single-process training on the global batch when every
rank's loss is its share of the global loss (sums over its rows, divided by the global row count where the loss
is a mean; see loop.train_step). The same buffer carries the step's metric sums and a stop flag, so every rank
sees the same values and stops (NaN, SIGTERM) at the same step.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env(device: str = "auto") -> Dist:
    """The process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT), or one process.
    NCCL with one GPU per process when CUDA is used, gloo on CPU. `device`: auto | cpu | cuda."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for but no CUDA device is available; use --device cpu")
    if use_cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        dev = torch.device("cuda", torch.cuda.current_device())
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world,
                                timeout=datetime.timedelta(minutes=30))
    return Dist(rank, world, local_rank, dev)


def shutdown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


class _AllReduceSum(torch.autograd.Function):
    """y = sum over ranks of x; its gradient is the sum over ranks of dy (every rank's loss depends on y)."""

    @staticmethod
    def forward(ctx, x):
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, dy):
        dx = dy.clone()
        dist.all_reduce(dx)
        return dx


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch (all ranks), for gloo on CPU, where
    torch's SyncBatchNorm does not run. Two differentiable all-reduces (sum, then the sum of squared deviations:
    the two-pass variance, as single-process BatchNorm computes it). Same parameters and buffers as
    BatchNorm2d, so checkpoints are interchangeable."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        xf = x.float()
        count = torch.tensor([xf.numel() // xf.shape[1]], dtype=torch.float32, device=x.device)
        sums = _AllReduceSum.apply(torch.cat([xf.sum((0, 2, 3)), count]))
        n = sums[-1]
        mean = sums[:-1] / n
        centred = xf - mean[None, :, None, None]
        var = _AllReduceSum.apply(centred.pow(2).sum((0, 2, 3))) / n
        with torch.no_grad():
            self.num_batches_tracked += 1
            m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.lerp_(mean.detach(), m)
            self.running_var.lerp_(var.detach() * n / (n - 1).clamp_min(1), m)
        y = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(x.dtype)


def convert_batchnorm(module: nn.Module, d: Dist) -> nn.Module:
    """BatchNorm over the global batch under several processes: torch's SyncBatchNorm on CUDA (NCCL),
    GlobalBatchNorm2d on CPU (gloo). One process: unchanged."""
    if not d.enabled:
        return module
    if d.device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            new = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                    child.track_running_stats).to(child.weight.device)
            new.load_state_dict(child.state_dict())
            setattr(module, name, new)
        else:
            convert_batchnorm(child, d)
    return module


def reduce_grads_and_stats(params: list[nn.Parameter], stats: torch.Tensor, d: Dist) -> torch.Tensor:
    """Sum the gradients of `params` (those that have one) and the float vector `stats` over all ranks, in one
    all-reduce of one flat buffer in a fixed order; gradients are written back in place. Returns the summed
    stats. One process: returns `stats` and touches nothing."""
    if not d.enabled:
        return stats
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([*(g.reshape(-1).float() for g in grads), stats.float().reshape(-1)])
    dist.all_reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()
    return flat[offset:]


def gather_objects(obj, d: Dist) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (used for per-rank RNG states)."""
    if not d.enabled:
        return [obj]
    out = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, d: Dist):
    if not d.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()
