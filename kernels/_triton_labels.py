"""What the dual_bce Triton kernels share about labels: the hashed mask in uint32 Triton arithmetic (bit for bit
mask_hash.py's), and a call's LabelArgs turned into kernel arguments once (`kernel_labels`): a hashed mask with
nothing missing dropped, pointers, strides, the mask's scalars and the constexpr flags."""
from __future__ import annotations

from typing import NamedTuple

import triton.language as tl

from ._jit import jit
from .labels import LabelArgs


@jit
def fmix32(x):
    """MurmurHash3's 32-bit finalizer of uint32 x (`mask_hash.fmix32`); the constants are uint32, so the
    products wrap mod 2**32."""
    x = x ^ (x >> 16)
    x = x * 0x85EBCA6B
    x = x ^ (x >> 13)
    x = x * 0xC2B2AE35
    return x ^ (x >> 16)


@jit
def mask_row_key(mask_key, grows):
    """fmix32(key + r * 0x9E3779B1) of global rows r (an int tensor in [0, 2**31)); mask_key is the uint32 key's
    int32 bit pattern (`mask_hash.mask_row_keys`)."""
    return fmix32(grows.to(tl.uint32) * 0x9E3779B1 + mask_key.to(tl.uint32, bitcast=True))


@jit
def hash_observed(row_key, lcols, mask_thr, mask_off):
    """Whether entries (row_key's rows, label mask_off + lcols) are observed: fmix32(row_key ^ j * 0x85EBCA77)
    >= threshold (`mask_hash.hashed_observed`). mask_thr is threshold - 1 as an int32 bit pattern (the
    launchers pass a threshold of 0 as no mask at all), so h >= threshold is h > mask_thr in uint32 for every
    threshold in [1, 2**32], and the argument has one type whatever its value."""
    gcols = lcols.to(tl.uint32) + mask_off.to(tl.uint32)
    h = fmix32(row_key ^ (gcols * 0x85EBCA77))
    return h > mask_thr.to(tl.uint32, bitcast=True)


def signed32(x: int) -> int:
    """A uint32 as the int32 with its bits: a kernel argument of one type (i32) whatever its value."""
    return x - 2**32 if x >= 2**31 else x


def threshold_arg(threshold: int) -> int:
    """The kernels' mask_thr for a hashed mask's threshold in [1, 2**32]: threshold - 1 as an int32 bit pattern
    (see hash_observed; a threshold of 0 is passed as no mask)."""
    return signed32(threshold - 1)


class KernelLabels(NamedTuple):
    """A call's LabelArgs as the kernels take them: `args` (a hashed mask with nothing missing, threshold 0,
    dropped: it is all ones), the (y, mask, mask_rows) pointers (unread stand-ins where absent), the four label
    strides, the hashed mask's three scalars and the constexpr flags."""

    args: LabelArgs
    pointers: tuple
    strides: tuple
    mask_scalars: tuple
    flags: dict


def kernel_labels(z, args: LabelArgs) -> KernelLabels:
    if args.mask_threshold == 0:  # nothing missing: the hashed mask is all ones
        args = args._replace(mask_rows=None)
    labels, mask, kind = args.labels, args.mask, args.label_kind
    if kind == "sparse":  # the dense tiles load no labels
        y = mask if mask is not None else z
        y_strides = (0, 0)
    else:
        y, y_strides = labels, labels.stride()
    m = mask if mask is not None else y
    m_strides = mask.stride() if mask is not None else y_strides
    rows = args.mask_rows if args.mask_rows is not None else z
    flags = {"HAS_MASK": mask is not None, "PACKED": kind == "packed", "SPARSE": kind == "sparse",
             "HASHED": args.mask_rows is not None,
             "MASK_LIKE_Y": mask is None or (kind == "dense" and mask.stride() == labels.stride())}
    return KernelLabels(args, (y, m, rows), (*y_strides, *m_strides),
                         (signed32(args.mask_key), threshold_arg(max(args.mask_threshold, 1)), args.mask_col_offset),
                         flags)
