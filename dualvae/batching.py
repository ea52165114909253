"""Batches: chunk sizes for batched inference (from a memory budget on a GPU, a fixed size on the CPU), and
the epoch order of models trained on images in memory (`epoch_batches`).

The batched transfer (`DualVAE.transfer_all`) and the batched CIS evaluator push N x n_dom rows through a decoder
and a classifier; they hold one chunk of `max_batch` rows at a time, so their peak memory is set by the chunk,
not by N x n_dom.
"""
from __future__ import annotations

import torch
from torch import nn

# Rows per chunk on the CPU: the knee of bench/cis.py's chunk sweep, past which a larger chunk costs memory
# without saving time (bench/results/cis-cpu.json, "chunk_sweep" and "memory").
CPU_MAX_BATCH = 128
# On a GPU, use at most this share of the free memory for one chunk's activations.
GPU_MEMORY_FRACTION = 0.4


def check_max_batch(max_batch, who: str) -> None:
    if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1):
        raise ValueError(f"{who}: max_batch must be a positive int or None, got {max_batch!r}")


def activation_bytes_per_row(fn, example: torch.Tensor, modules) -> int:
    """Upper bound on the activation bytes one row needs: the sum of every leaf module's output size when `fn`
    runs on `example` (one row), over the leaf modules of `modules` (nn.Modules; others are skipped)."""
    total = [0]

    def hook(_m, _inp, out):
        if isinstance(out, torch.Tensor):
            total[0] += out.numel() * out.element_size()

    handles = [leaf.register_forward_hook(hook) for m in modules if isinstance(m, nn.Module)
               for leaf in m.modules() if not list(leaf.children())]
    try:
        with torch.no_grad():
            out = fn(example)
        if isinstance(out, torch.Tensor):
            total[0] += out.numel() * out.element_size()
    finally:
        for h in handles:
            h.remove()
    return max(total[0] + example.numel() * example.element_size(), 1)


def max_batch_for(device, bytes_per_row, cpu: int = CPU_MAX_BATCH, free_bytes: int | None = None) -> int:
    """Rows per chunk: `cpu` on a CPU; on CUDA, GPU_MEMORY_FRACTION of the free memory (queried unless
    `free_bytes` is given) divided by `bytes_per_row` (an int, or a callable computing it, called on CUDA only)."""
    device = torch.device(device)
    if device.type != "cuda" and free_bytes is None:
        return cpu
    if free_bytes is None:
        free_bytes = torch.cuda.mem_get_info(device)[0]
    per_row = bytes_per_row() if callable(bytes_per_row) else bytes_per_row
    return int(max(1, min(65536, GPU_MEMORY_FRACTION * free_bytes // max(per_row, 1))))


def epoch_batches(n: int, batch_size: int, gen: torch.Generator):
    """Index batches of `batch_size` rows of n, for ever: each epoch a fresh order from `gen`, drawn when its first
    batch is asked for (so that a caller's own draws from `gen` interleave the same way on every run); the last
    n % batch_size rows of an epoch are left out."""
    per_epoch = n // batch_size
    while True:
        order = torch.randperm(n, generator=gen)
        for pos in range(per_epoch):
            yield order[pos * batch_size:(pos + 1) * batch_size]
