"""The label formats every fused dual_bce backend reads in place: PackedLabels (pack_labels; a (B, n) label
matrix and its observed-mask at 2 bits per entry), SparseLabels (the positives, CSR rows) and HashedMask (the
missing-label mask as a hash, mask_hash.py)."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ._checks import check_index_tensor, check_labels, check_same_device, check_seed, describe
from .mask_hash import MASK_INDEX_MAX, hashed_observed, mask_key, mask_threshold


class PackedLabels(NamedTuple):
    """Labels and their observed-mask at 2 bits per entry: entry j of row b lives in words[b, j // 16] at bits
    2*(j % 16) (the label) and 2*(j % 16) + 1 (1 = observed). A (B, n) label matrix costs B * ceil(n/16) * 4
    bytes: n/4 bytes a row instead of 8n for float32 labels and mask."""

    words: Tensor  # (B, ceil(n / 16)) int32
    n: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.words.shape[0], self.n)

    @property
    def device(self) -> torch.device:
        return self.words.device

    def to(self, device) -> "PackedLabels":
        return PackedLabels(self.words.to(device), self.n)

    def unpack(self, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        """(y, mask) as (B, n) tensors of `dtype`."""
        B = self.words.shape[0]
        shifts = torch.arange(0, 32, 2, device=self.words.device)
        codes = (self.words.to(torch.int64).unsqueeze(-1) >> shifts) & 3  # (B, words, 16)
        codes = codes.reshape(B, -1)[:, : self.n]
        return (codes & 1).to(dtype), (codes >> 1).to(dtype)




def pack_labels(y: Tensor, mask: Tensor | None = None) -> PackedLabels:
    """Pack (B, n) labels in {0, 1} and an optional observed-mask (nonzero = observed) into 2 bits an entry."""
    op = "pack_labels"
    if not isinstance(y, Tensor) or y.dim() != 2:
        raise ValueError(f"{op}: y must be a 2-D (B, n) tensor, got {describe(y)}")
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.shape != y.shape:
            raise ValueError(f"{op}: mask has shape {describe(mask)}, expected {tuple(y.shape)} (y's)")
        check_same_device(op, y=y, mask=mask)
    check_labels(op, y)
    B, n = y.shape
    codes = y.to(torch.int64)
    codes = codes + 2 * ((mask != 0).to(torch.int64) if mask is not None else torch.ones_like(codes))
    width = -(-n // 16) * 16
    codes = torch.nn.functional.pad(codes, (0, width - n)).reshape(B, -1, 16)
    shifts = torch.arange(0, 32, 2, device=y.device)
    words = (codes << shifts).sum(-1)  # < 2**32
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)  # same bits as uint32
    return PackedLabels(words.contiguous(), n)


def check_index_tensor(op: str, name: str, t, dtypes) -> None:
    if not isinstance(t, Tensor) or t.dim() != 1 or t.dtype not in dtypes:
        got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, Tensor) else type(t).__name__
        raise ValueError(f"{op}: {name} must be a 1-D tensor of {' or '.join(map(str, dtypes))}, got {got}")


class SparseLabels:
    """A (B, n) 0/1 label matrix as its positives, CSR rows: the positives of row b are the label indices
    indices[indptr[b]:indptr[b + 1]], strictly increasing. indptr: int64 (B + 1,), indptr[0] = 0,
    non-decreasing, indptr[B] = nnz; indices: int32 or int64 (nnz,) in [0, n). The dual_bce backends read it in
    place: the loss is sum mask * softplus(L) over every entry minus sum mask * L over the positives.

    validate=True (the default) checks all of the above once, here (one host sync on CUDA), raising ValueError
    naming the first bad row; pass False for labels already known to be valid. The "cpu" backend checks them
    again as it reads them (one pass over indptr and indices, the same errors); the Triton kernels trust them."""

    def __init__(self, indptr: Tensor, indices: Tensor, n: int, *, validate: bool = True):
        op = "SparseLabels"
        check_index_tensor(op, "indptr", indptr, (torch.int64,))
        check_index_tensor(op, "indices", indices, (torch.int32, torch.int64))
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MASK_INDEX_MAX + 1:
            raise ValueError(f"{op}: n must be an int in [0, 2**31], got {n!r}")
        if len(indptr) < 1:
            raise ValueError(f"{op}: indptr must have B + 1 >= 1 entries, got an empty tensor")
        check_same_device(op, indptr=indptr, indices=indices)
        self.indptr, self.indices, self.n = indptr, indices, n
        if validate:
            self.validate()

    @property
    def shape(self) -> tuple[int, int]:
        return (self.indptr.shape[0] - 1, self.n)

    @property
    def nnz(self) -> int:
        return self.indices.shape[0]

    @property
    def device(self) -> torch.device:
        return self.indptr.device

    def validate(self) -> None:
        """ValueError naming the first bad row: indptr not starting at 0, decreasing or not ending at nnz, an
        index outside [0, n), or a row whose indices are not strictly increasing (unsorted or duplicate)."""
        op = "SparseLabels"
        p, idx, nnz = self.indptr, self.indices, self.nnz
        if int(p[0]) != 0:
            raise ValueError(f"{op}: indptr[0] must be 0, got {int(p[0])}")
        steps = p[1:] - p[:-1]
        if bool((steps < 0).any()):
            b = int(torch.nonzero(steps < 0)[0, 0])
            raise ValueError(f"{op}: indptr is not monotone at row {b}: indptr[{b}] = {int(p[b])} > "
                             f"indptr[{b + 1}] = {int(p[b + 1])}")
        if int(p[-1]) != nnz:
            raise ValueError(f"{op}: indptr[-1] = {int(p[-1])} but indices holds {nnz} entries")
        if nnz == 0:
            return
        row_of = torch.repeat_interleave(torch.arange(len(steps), device=p.device), steps)
        bad = (idx < 0) | (idx >= self.n)
        if bool(bad.any()):
            k = int(torch.nonzero(bad)[0, 0])
            raise ValueError(f"{op}: row {int(row_of[k])} has label index {int(idx[k])} outside [0, {self.n})")
        same_row = row_of[1:] == row_of[:-1]
        bad = same_row & (idx[1:] <= idx[:-1])
        if bool(bad.any()):
            k = int(torch.nonzero(bad)[0, 0])
            what = "a duplicate" if int(idx[k + 1]) == int(idx[k]) else "unsorted indices"
            raise ValueError(f"{op}: row {int(row_of[k])} has {what}: {int(idx[k])} then {int(idx[k + 1])} (each "
                             f"row's indices must be strictly increasing)")

    def row_ids(self) -> Tensor:
        """(nnz,) int64: the row of each positive."""
        B = self.shape[0]
        return torch.repeat_interleave(torch.arange(B, device=self.device), self.indptr[1:] - self.indptr[:-1],
                                       output_size=self.nnz)

    def dense(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The (B, n) label matrix."""
        y = torch.zeros(self.shape, dtype=dtype, device=self.device)
        y[self.row_ids(), self.indices.to(torch.int64)] = 1
        return y

    @classmethod
    def from_dense(cls, y: Tensor) -> "SparseLabels":
        """The positives of a (B, n) matrix of labels in {0, 1}."""
        op = "SparseLabels.from_dense"
        if not isinstance(y, Tensor) or y.dim() != 2:
            raise ValueError(f"{op}: y must be a 2-D (B, n) tensor, got {describe(y)}")
        check_labels(op, y)
        pos = y != 0
        counts = pos.sum(1)
        indptr = torch.zeros(y.shape[0] + 1, dtype=torch.int64, device=y.device)
        indptr[1:] = torch.cumsum(counts, 0)
        indices = torch.nonzero(pos)[:, 1]  # row-major: sorted within each row
        return cls(indptr, indices, y.shape[1], validate=False)

    def columns(self, lo: int, hi: int) -> "SparseLabels":
        """The labels of columns [lo, hi), re-indexed from 0 (a label-parallel shard's labels)."""
        if not 0 <= lo <= hi <= self.n:
            raise ValueError(f"SparseLabels.columns: need 0 <= lo <= hi <= {self.n}, got [{lo}, {hi})")
        keep = (self.indices >= lo) & (self.indices < hi)
        kept_before = torch.zeros(self.nnz + 1, dtype=torch.int64, device=self.device)
        kept_before[1:] = torch.cumsum(keep, 0)
        indptr = kept_before[self.indptr]  # a row's kept entries are contiguous in CSR order
        return SparseLabels(indptr, self.indices[keep] - lo, hi - lo, validate=False)

    def to(self, device) -> "SparseLabels":
        return SparseLabels(self.indptr.to(device), self.indices.to(device), self.n, validate=False)

    def __repr__(self) -> str:
        return f"SparseLabels(shape={self.shape}, nnz={self.nnz}, device={self.device})"


class HashedMask:
    """The missing-label indicator I as a function: entry (b, j) is observed unless the counter-based hash of
    (seed, rows[b], col_offset + j) falls below missing_ratio * 2**32 (`mask_hash.hashed_observed`). The fused
    dual_bce backends evaluate it inside the kernels, so no (B, n) mask is formed; `dense(n)` forms it.

    rows: (B,) int64 global image indices (the batch's rows in the training split), in [0, 2**31).
    col_offset: the global index of label 0 of the call (a label-parallel shard's first label)."""

    def __init__(self, seed: int, missing_ratio: float, rows: Tensor, col_offset: int = 0, *,
                 validate: bool = True):
        op = "HashedMask"
        self.seed = check_seed(seed, op)
        ratio = float(missing_ratio)
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"{op}: missing_ratio must be in [0, 1], got {missing_ratio!r}")
        check_index_tensor(op, "rows", rows, (torch.int64, torch.int32))
        if (isinstance(col_offset, bool) or not isinstance(col_offset, int)
                or not 0 <= col_offset <= MASK_INDEX_MAX):
            raise ValueError(f"{op}: col_offset must be an int in [0, 2**31), got {col_offset!r}")
        if validate and rows.numel():
            lo, hi = int(rows.min()), int(rows.max())
            if lo < 0 or hi > MASK_INDEX_MAX:
                raise ValueError(f"{op}: rows must lie in [0, 2**31), got values in [{lo}, {hi}]")
        self.missing_ratio, self.rows, self.col_offset = ratio, rows.to(torch.int64), col_offset
        self.key = mask_key(self.seed)
        self.threshold = mask_threshold(ratio)

    @property
    def device(self) -> torch.device:
        return self.rows.device

    def dense(self, n: int, dtype: torch.dtype = torch.bool) -> Tensor:
        """The (B, n) indicator (1 = observed) of labels col_offset .. col_offset + n - 1."""
        cols = torch.arange(self.col_offset, self.col_offset + n, device=self.device)
        return hashed_observed(self.key, self.threshold, self.rows, cols).to(dtype)

    def columns(self, lo: int, hi: int) -> "HashedMask":
        """The mask of columns [lo, hi) of this one, re-indexed from 0 (same entries)."""
        if not 0 <= lo <= hi or self.col_offset + hi > MASK_INDEX_MAX + 1:
            raise ValueError(f"HashedMask.columns: need 0 <= lo <= hi and col_offset + hi <= 2**31, got [{lo}, {hi}) "
                             f"at col_offset {self.col_offset}")
        return HashedMask(self.seed, self.missing_ratio, self.rows, self.col_offset + lo, validate=False)

    def select(self, index: Tensor) -> "HashedMask":
        """The mask of rows `index` of this batch."""
        return HashedMask(self.seed, self.missing_ratio, self.rows[index], self.col_offset, validate=False)

    def to(self, device) -> "HashedMask":
        return HashedMask(self.seed, self.missing_ratio, self.rows.to(device), self.col_offset, validate=False)

    def __repr__(self) -> str:
        return (f"HashedMask(seed={self.seed}, missing_ratio={self.missing_ratio}, rows={len(self.rows)}, "
                f"col_offset={self.col_offset})")


class LabelArgs(NamedTuple):
    """The labels and mask of one dual_bce call as the fused ops take them (their schema's argument names), built
    once from y and mask by `label_args` and passed on whole: to the custom ops as keywords (`_asdict()`), to the
    Triton launchers as this object.

    label_kind "dense": labels = y (B, n); "packed": PackedLabels' words (the mask is in them); "sparse":
    SparseLabels' indices, with indptr. A HashedMask is mask_rows with its key, threshold and label offset (mask
    None); a dense mask is `mask`."""

    labels: Tensor
    label_kind: str
    indptr: Tensor | None = None
    mask: Tensor | None = None
    mask_rows: Tensor | None = None
    mask_key: int = 0
    mask_threshold: int = 0
    mask_col_offset: int = 0

    def for_kernels(self, contiguous: bool) -> "LabelArgs":
        """Bool labels and masks viewed as uint8 (the kernels read bytes); every tensor made contiguous when
        `contiguous` (the C++ kernels read row-major memory; the Triton ones take strides)."""
        labels, mask, indptr, rows = self.labels, self.mask, self.indptr, self.mask_rows
        if labels.dtype == torch.bool:
            labels = labels.view(torch.uint8)
        if mask is not None and mask.dtype == torch.bool:
            mask = mask.view(torch.uint8)
        if contiguous:  # (built field by field: this runs on every call, where _replace costs microseconds)
            labels = labels.contiguous()
            mask, indptr, rows = (t.contiguous() if t is not None else None for t in (mask, indptr, rows))
        return LabelArgs(labels, self.label_kind, indptr, mask, rows, self.mask_key, self.mask_threshold,
                         self.mask_col_offset)


def label_args(op: str, y, mask, z: Tensor, n: int) -> LabelArgs:
    """The LabelArgs of labels y (a (B, n) tensor, PackedLabels or SparseLabels) and mask (None, a (B, n) tensor
    or a HashedMask over the B rows) for z's B rows and U's n rows; ValueError naming what does not fit."""
    B = z.shape[0]
    if isinstance(y, PackedLabels):
        if mask is not None:
            raise ValueError(f"{op}: mask must be None when y is PackedLabels (the mask is packed in it)")
        if y.shape != (B, n) or y.words.dtype != torch.int32 or y.words.shape[1] != -(-n // 16):
            raise ValueError(f"{op}: packed y is for shape {y.shape} ({y.words.dtype} words "
                             f"{tuple(y.words.shape)}), expected ({B}, {n})")
        args = LabelArgs(y.words, "packed")
    elif isinstance(y, SparseLabels):
        if y.shape != (B, n):
            raise ValueError(f"{op}: sparse y is for shape {y.shape}, expected ({B}, {n}) (z's rows, U's rows)")
        args = LabelArgs(y.indices, "sparse", indptr=y.indptr)
    else:
        if not isinstance(y, Tensor) or y.shape != (B, n):
            raise ValueError(f"{op}: y has shape {describe(y)}, expected ({B}, {n})")
        args = LabelArgs(y, "dense")
    if isinstance(mask, HashedMask):
        if mask.rows.shape != (B,):
            raise ValueError(f"{op}: the HashedMask has {len(mask.rows)} rows, expected {B} (z's rows, "
                             f"z has shape {tuple(z.shape)})")
        return args._replace(mask_rows=mask.rows, mask_key=mask.key, mask_threshold=mask.threshold,
                             mask_col_offset=mask.col_offset)
    if mask is not None and (not isinstance(mask, Tensor) or mask.shape != (B, n)):
        raise ValueError(f"{op}: mask has shape {describe(mask)}, expected ({B}, {n})")
    return args._replace(mask=mask)
