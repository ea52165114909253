"""Label parallelism (`dualvae train --label-parallel` under torchrun): the rows of U, the dual vectors, split
over the K ranks, for label sets too large for every process to hold U, its gradient and Adam's two moments.

    shard_range(n, K, r)  rank r owns the contiguous rows [r n // K, (r + 1) n // K) of U
    label step            each rank encodes its rows of the global batch (data parallel, as today), all-gathers
                          z of the whole global batch (GatherRows), and computes the dual-head loss of ITS labels
                          on all of them with the fused kernel: dual_bce(z, U_r, labels.columns(lo, hi),
                          mask.columns(lo, hi)); the labels and mask of the global batch come from the split's
                          labels (labels_for of the batch's rows, which the ranks all-gather: B integers)
    backward              dU_r stays on rank r (U_r's Adam moments too: g_e steps it locally); dz of the global
                          batch is summed over the ranks and each rank keeps its own rows (GatherRows.backward:
                          reduce-scatter on NCCL; on gloo, which has none, an all-reduce of the (B, d) dz), then
                          flows into the encoder, whose gradients are summed over the ranks as in data parallelism
    metrics               the loss, correct and observed counts are sums over each rank's labels, summed in the
                          step's one all-reduce (they ride in the encoder's gradient buffer)

The sum over ranks of the shards' losses is the loss of the whole U, and every gradient is the single-process
one on the global batch up to rounding: Algorithm 1 is unchanged. The VAE step does not touch U and is unchanged.

Checkpoints (write_shard / restore_shard): every rank writes its shard file atomically, step-N.shard-R-of-K.pt
beside the main file (U_r, its range, U_r's optimizer state, the step), then, after a barrier, rank 0 writes the
main file, which lists the shards with their ranges: the main file is the commit point, so a crash leaves either
a complete checkpoint or the previous one. Nothing is gathered to one process. A resume needs the same K (another
K is refused); each rank reads its own shard (own_shard), and the ranks agree on whether all could
(state.find_resume). dualvae.checkpoint.load_model (DualVAE.load) assembles one full model from the shards. The
run folder must be shared by all ranks (one machine, or a shared filesystem).
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from dualvae.checkpoint import LABEL_SHARD_KIND, label_shard_name, read_label_shard, save_atomic
from dualvae.losses import dual_head_terms, label_columns, mask_columns, sample_latent
from dualvae.training.distributed import Dist


def shard_range(n: int, world: int, rank: int) -> tuple[int, int]:
    """The rows [lo, hi) of U that rank `rank` of `world` owns: contiguous, sizes differing by at most one."""
    return rank * n // world, (rank + 1) * n // world


def shard_model(model, d: Dist) -> tuple[int, int]:
    """Make the model hold only this rank's rows of U (model.keep_label_rows; call before building the
    optimizers); returns its range."""
    lo, hi = shard_range(model.U.shape[0], d.world, d.rank)
    model.keep_label_rows(lo, hi)
    return lo, hi


def _gather_padded(t: torch.Tensor, capacity: int, world: int) -> list[torch.Tensor]:
    """Every rank's `t` (at most `capacity` rows), zero-padded to `capacity` rows, on t's device (NCCL gathers
    CUDA tensors only, gloo either kind)."""
    padded = t.new_zeros((capacity, *t.shape[1:]))
    padded[:len(t)] = t
    out = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(out, padded)
    return out


def gather_batch_rows(rows: torch.Tensor, capacity: int, d: Dist) -> tuple[torch.Tensor, list[int]]:
    """(the global batch's rows on d.device, rank 0's first, each rank's row count): one all-gather of B + K
    integers."""
    if not d.enabled:
        return rows, [len(rows)]
    box = torch.cat([torch.tensor([len(rows)], dtype=torch.int64, device=d.device),
                     rows.to(d.device, torch.int64)])
    parts = _gather_padded(box, capacity + 1, d.world)
    counts = torch.stack([p[0] for p in parts]).tolist()  # one device-to-host copy
    return torch.cat([p[1:1 + c] for p, c in zip(parts, counts)]), counts


class GatherRows(torch.autograd.Function):
    """z of the global batch from every rank's rows (in rank order); backward: the sum over ranks of dz, of
    which each rank keeps its own rows (every rank's shard loss depends on every row)."""

    @staticmethod
    def forward(ctx, z, counts, rank, capacity, group_backend):
        ctx.counts, ctx.rank, ctx.capacity, ctx.nccl = counts, rank, capacity, group_backend == "nccl"
        parts = _gather_padded(z.contiguous(), capacity, len(counts))
        return torch.cat([p[:c] for p, c in zip(parts, counts)])

    @staticmethod
    def backward(ctx, dz):
        counts, rank = ctx.counts, ctx.rank
        starts = [sum(counts[:k]) for k in range(len(counts))]
        if ctx.nccl:
            padded = dz.new_zeros((len(counts), ctx.capacity, dz.shape[1]))
            for k, (s, c) in enumerate(zip(starts, counts)):
                padded[k, :c] = dz[s:s + c]
            mine = dz.new_empty((ctx.capacity, dz.shape[1]))
            dist.reduce_scatter_tensor(mine, padded.reshape(-1, dz.shape[1]))
            return mine[:counts[rank]], None, None, None, None
        total = dz.contiguous().clone()
        dist.all_reduce(total)
        return total[starts[rank]:starts[rank] + counts[rank]], None, None, None, None


def gather_z(z: torch.Tensor, counts: list[int], capacity: int, d: Dist) -> torch.Tensor:
    if not d.enabled:
        return z
    return GatherRows.apply(z, counts, d.rank, capacity, dist.get_backend())


class LabelParallel:
    """The label step of one rank: its shard [lo, hi) of U on the global batch. `labels`: what gives the labels
    and mask of any rows of the split, `labels.labels_for(rows) -> (labels, mask)` (the loader's label_source).
    `capacity`: the most rows a rank's batch holds (the global batch size / K)."""

    def __init__(self, model, labels, d: Dist, capacity: int, backend: str):
        self.model, self.labels, self.d, self.capacity, self.backend = model, labels, d, capacity, backend
        self.lo, self.hi = model.label_range

    def label(self, x: torch.Tensor, eps: torch.Tensor, rows: torch.Tensor, metrics: bool = True):
        """(loss, correct, observed) of this rank's labels on the global batch (sums; summed over the ranks
        they are the single-process label_nll). x, eps, rows: this rank's rows of the batch."""
        z, _, _, _ = sample_latent(self.model, x, eps, self.backend)
        idx, counts = gather_batch_rows(rows, self.capacity, self.d)
        zg = gather_z(z, counts, self.capacity, self.d)
        y, mask = self.labels.labels_for(idx)
        y, mask = label_columns(y, self.lo, self.hi), mask_columns(mask, self.lo, self.hi)
        return dual_head_terms(zg, self.model.U, y, mask, self.backend, metrics)


# -- checkpoints ------------------------------------------------------------------------------------------------
def _u_index(model, opt) -> int:
    """The position of U among `opt`'s parameters (the key of its state in opt.state_dict())."""
    params = [p for grp in opt.param_groups for p in grp["params"]]
    return next(i for i, p in enumerate(params) if p is model.U)


def write_shard(model, g_e, main_path: str, step: int, d: Dist) -> str:
    """This rank's shard of the checkpoint whose main file will be `main_path`, written atomically."""
    lo, hi = model.label_range
    state = g_e.state_dict()["state"].get(_u_index(model, g_e))
    shard = {"kind": LABEL_SHARD_KIND, "step": step, "rank": d.rank, "world_size": d.world, "lo": lo, "hi": hi,
             "U": model.U.detach().cpu(), "g_e_U": state}
    return save_atomic(shard, os.path.join(os.path.dirname(main_path),
                                           label_shard_name(os.path.basename(main_path), d.rank, d.world)))


def main_part(ck: dict, model, g_e, d: Dist, shard_dir: str, main_name: str) -> dict:
    """The main file's dict of checkpoint `ck` (rank 0's): without U and U's optimizer state, with the list of
    shards, their files named relative to the main file's folder (`shard_dir`, relative to that folder)."""
    n = model.config.num_labels
    out = dict(ck)
    out["model"] = {k: v for k, v in ck["model"].items() if k != "U"}
    g_e_state = dict(ck["g_e"])
    g_e_state["state"] = {k: v for k, v in g_e_state["state"].items() if k != _u_index(model, g_e)}
    out["g_e"] = g_e_state
    out["label_parallel"] = {
        "world_size": d.world, "num_labels": n,
        "shards": [{"file": os.path.join(shard_dir, label_shard_name(main_name, r, d.world)) if shard_dir else
                    label_shard_name(main_name, r, d.world), "rank": r, "lo": lo, "hi": hi}
                   for r, (lo, hi) in ((r, shard_range(n, d.world, r)) for r in range(d.world))]}
    return out


def own_shard(ck: dict, path: str, d: Dist) -> dict | None:
    """This rank's shard of checkpoint `ck` (read from `path`), read and checked (read_label_shard: ValueError
    naming the shard file when it is missing, unreadable or not this checkpoint's); None when `ck` is not
    label-parallel over d.world processes (restore_shard refuses it, saying what to do)."""
    lp = ck.get("label_parallel")
    if not lp or lp.get("world_size") != d.world:
        return None
    return read_label_shard(path, ck, d.rank)


def restore_shard(ck: dict, path: str, model, g_e, d: Dist, shard: dict | None = None) -> tuple[dict, dict]:
    """(the model state, the g_e state) of checkpoint `ck` (read from `path`) for this rank: the main file's
    with this rank's shard of U and of U's optimizer state (`shard`, own_shard's; read here when None).
    ValueError when the checkpoint is not a label-parallel one of this world size, or its shard file is missing
    or does not belong to it."""
    lp = ck.get("label_parallel")
    if not lp:
        raise ValueError(f"resume: checkpoint {path} was written without --label-parallel; resume it without "
                         f"--label-parallel")
    if lp["world_size"] != d.world:
        raise ValueError(f"resume: checkpoint {path} holds U in {lp['world_size']} label-parallel shards, this "
                         f"run has {d.world} process(es); resume it on {lp['world_size']} processes")
    if (lp["shards"][d.rank]["lo"], lp["shards"][d.rank]["hi"]) != model.label_range:
        raise ValueError(f"resume: checkpoint {path}: rank {d.rank}'s shard holds U rows "
                         f"[{lp['shards'][d.rank]['lo']}, {lp['shards'][d.rank]['hi']}), this run's is "
                         f"{list(model.label_range)}")
    if shard is None:
        shard = read_label_shard(path, ck, d.rank)
    g_e_state = {**ck["g_e"], "state": dict(ck["g_e"]["state"])}
    if shard.get("g_e_U") is not None:
        g_e_state["state"][_u_index(model, g_e)] = shard["g_e_U"]
    return {**ck["model"], "U": shard["U"]}, g_e_state
