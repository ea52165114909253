"""dual_bce with sparse positive labels (SparseLabels) and the in-kernel hashed mask (HashedMask) on the fused
backends ("triton", "cpu"; the `backend` fixture of test_fused_ops), against the float64 reference of their dense
matrices: the loss and the gradients of z, U and bias, every reduction, the bad inputs, opcheck and
torch.compile. Error rule as in test_fused_ops."""
import math

import pytest
import torch

from dualvae import kernels
from dualvae.kernels import HashedMask, SparseLabels, reference as ref
from dualvae.kernels._jit import jit
from dualvae.kernels._triton_labels import hash_observed, mask_row_key
from dualvae.kernels.dual_bce_sparse import sparse_csc
from dualvae.kernels.dual_bce_triton import dual_bce_fwd
from dualvae.kernels.labels import LabelArgs

from kernel_cases import require_backend
from test_fused_ops import HAVE_TRITON, TRITON_DEVICE, assert_error_rule, backend, device_of  # noqa: F401 (fixture)

import triton.language as tl


def sparse_case(B, n, d, density, *, seed, index_dtype=torch.int64, empty_row=None, full_row=None):
    """(z, U, bias) float64 with logits of about 1, and (B, n) labels of `density` as a dense float64 matrix
    and as SparseLabels with `index_dtype` indices; rows empty_row / full_row are all 0 / all 1."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(B, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    U = torch.randn(n, d, generator=g, dtype=torch.float64)
    bias = torch.randn(n, generator=g, dtype=torch.float64)
    y = (torch.rand(B, n, generator=g) < density).double()
    if empty_row is not None:
        y[empty_row] = 0
    if full_row is not None:
        y[full_row] = 1
    sp = SparseLabels.from_dense(y)
    sp = SparseLabels(sp.indptr, sp.indices.to(index_dtype), n)
    return z, U, bias, y, sp


def run(fn, z, U, bias, y, mask, reduction, upstream, dtype, device):
    """(loss, dz, dU, db) at `dtype` on `device`; y and mask are passed as they are (moved to the device)."""
    leaves = [t.detach().to(device, dtype).requires_grad_() for t in (z, U, bias)]
    loss = fn(leaves[0], leaves[1], y, mask, bias=leaves[2], reduction=reduction)
    grads = torch.autograd.grad((loss.double() * upstream.to(device)).sum(), leaves)
    return [loss.detach().cpu()] + [g.cpu() for g in grads]


def to_device(x, device):
    """A tensor, SparseLabels or HashedMask on `device` (None kept)."""
    return x.to(device) if x is not None else None


def check_against_float64(z, U, bias, y, sp, mask, reduction, backend, seed, what):
    """Ours with (sp, mask) against the float64 reference of (y, mask's dense matrix); returns ours."""
    B, n = y.shape
    dense_mask = mask.dense(n, torch.float64) if isinstance(mask, HashedMask) else mask
    shape = (B,) if reduction == "none" else ()
    upstream = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 1))
    expected = run(ref.dual_bce, z, U, bias, y, dense_mask, reduction, upstream, torch.float64, "cpu")
    eager32 = run(ref.dual_bce, z, U, bias, y.float(), dense_mask.float() if dense_mask is not None else None,
                  reduction, upstream, torch.float32, "cpu")
    dev = device_of(backend)
    m = mask.float() if isinstance(mask, torch.Tensor) else mask
    ours = run(lambda *a, **k: kernels.dual_bce(*a, backend=backend, **k), z, U, bias, to_device(sp, dev),
               to_device(m, dev), reduction, upstream, torch.float32, dev)
    assert ours[0].dtype == torch.float32 and ours[0].shape == shape
    for name, a, b, c in zip(("loss", "dz", "dU", "db"), ours, eager32, expected):
        assert torch.isfinite(a).all(), f"{what}: {name}"
        assert_error_rule(a, b, c, f"{what}: {name} ({reduction})")
    return ours


def make_mask(kind, B, n, seed):
    g = torch.Generator().manual_seed(seed + 7)
    if kind == "none":
        return None
    if kind == "dense":
        return (torch.rand(B, n, generator=g) > 0.3).double()
    ratio, offset = {"hashed": (0.3, 0), "hashed_offset": (0.3, 2**31 - 20), "hashed_all": (0.0, 5),
                     "hashed_none": (1.0, 0)}[kind]
    rows = torch.randint(0, 2**31 - 1, (B,), generator=g)
    return HashedMask(seed, ratio, rows, col_offset=offset)


CASES = [
    # (B, n, d, density, mask kind, index dtype, empty row, full row)
    (1, 1, 3, 1.0, "none", torch.int64, None, 0),            # B = n = 1, all positive
    (6, 1, 5, 0.5, "hashed", torch.int32, None, None),       # n = 1
    (9, 23, 7, 0.2, "dense", torch.int32, 2, 5),             # sparse + dense mask, an empty and a full row
    (11, 37, 40, 0.1, "hashed_offset", torch.int64, 0, 10),  # d above a chunk, offset labels past 2**31
    (5, 17, 4, 0.0, "hashed_all", torch.int64, None, None),  # nnz = 0, ratio 0 (all observed)
    (7, 19, 6, 0.3, "hashed_none", torch.int32, None, 3),    # ratio 1: nothing observed
]


@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"B{c[0]}-n{c[1]}-d{c[2]}-{c[4]}-{str(c[5])[6:]}")
def test_sparse_labels_match_float64(case, reduction, backend):
    B, n, d, density, mask_kind, index_dtype, empty_row, full_row = case
    seed = B * 31 + n + d
    z, U, bias, y, sp = sparse_case(B, n, d, density, seed=seed, index_dtype=index_dtype, empty_row=empty_row,
                                    full_row=full_row)
    assert sp.nnz == int(y.sum())
    mask = make_mask(mask_kind, B, n, seed)
    ours = check_against_float64(z, U, bias, y, sp, mask, reduction, backend, seed, f"{case}")
    if mask_kind == "hashed_none":  # nothing observed: zero loss and gradients whatever the reduction
        assert all(torch.count_nonzero(t) == 0 for t in ours)


@pytest.mark.parametrize("ratio,offset", [(0.0, 0), (0.3, 3), (1.0, 0)])
def test_dense_labels_with_hashed_mask(ratio, offset, backend):
    z, U, bias, y, _ = sparse_case(13, 29, 9, 0.5, seed=40)
    mask = HashedMask(11, ratio, torch.arange(1000, 1013), col_offset=offset)
    for reduction in ("mean", "none"):
        check_against_float64(z, U, bias, y, y.float().to(device_of(backend)), mask, reduction, backend, 41,
                              f"dense y, ratio {ratio}")


@pytest.mark.parametrize("labels", ["dense", "sparse"])
def test_hashed_mask_in_kernel_is_the_reference_bit_for_bit(labels, backend):
    """The kernels' observed indicator, counted per row: at logits 0 every observed entry costs log 2 whatever
    its label, so loss_b / log 2 is row b's count, an integer to check exactly against .dense(n)."""
    B, n = 23, 300
    dev = device_of(backend)
    rows = torch.randint(0, 2**31 - 1, (B,), generator=torch.Generator().manual_seed(3))
    for ratio, offset in ((0.3, 0), (0.7, 2**31 - 100), (0.05, 12345)):
        mask = HashedMask(2**40 + 17, ratio, rows, col_offset=offset)
        want = mask.dense(n, torch.float64).sum(1)
        y = (torch.rand(B, n, generator=torch.Generator().manual_seed(4)) < 0.1).float()
        yy = SparseLabels.from_dense(y).to(dev) if labels == "sparse" else y.to(dev)
        z, U = torch.zeros(B, 4, device=dev), torch.zeros(n, 4, device=dev)
        loss = kernels.dual_bce(z, U, yy, mask.to(dev), reduction="none", backend=backend)
        got = (loss.double().cpu() / math.log(2)).round()
        assert torch.equal(got, want), (ratio, offset, (got - want).abs().max())
        assert 0 < want.sum() < B * n


@jit
def _hash_probe_kernel(mr_ptr, out_ptr, N, mask_key, mask_thr, mask_off, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    row_key = mask_row_key(mask_key, tl.load(mr_ptr + row))
    obs = hash_observed(row_key, cols, mask_thr, mask_off)
    tl.store(out_ptr + row * N + cols, obs.to(tl.int8), mask=cols < N)


def test_hash_helpers_are_the_reference_bit_for_bit():
    """Every entry of the kernels' hash helpers against reference.hashed_observed, seeds whose key is above
    2**31 or not, thresholds 1, 2**32 and between (0 is no mask: the launchers pass none), label offsets that
    wrap past 2**32."""
    require_backend("triton")
    from dualvae.kernels._triton_labels import signed32, threshold_arg
    B, n = 9, 64
    rows = torch.tensor([0, 1, 2**31 - 1, 5, 77777, 2**30, 3, 123456789, 42])
    for seed in (0, 1, 2**62 + 5, 987654321):
        key = ref.mask_key(seed)
        for thr in (1, 2, 2**31, 2**31 + 1, ref.mask_threshold(0.3), 2**32 - 1, 2**32):
            for off in (0, 2**31 - 10):
                out = torch.empty(B, n, dtype=torch.int8, device=TRITON_DEVICE)
                _hash_probe_kernel[(B,)](rows.to(TRITON_DEVICE), out, n, signed32(key), threshold_arg(thr), off,
                                         BLOCK=n)
                want = ref.hashed_observed(key, thr, rows, torch.arange(off, off + n))
                assert torch.equal(out.cpu().bool(), want), (seed, thr, off)


def test_reference_backend_densifies_and_the_api_agrees():
    z, U, bias, y, sp = sparse_case(8, 21, 5, 0.3, seed=50, empty_row=1)
    mask = HashedMask(3, 0.4, torch.arange(8) * 3, col_offset=7)
    dense = ref.dual_bce(z, U, y, mask.dense(21, torch.float64), bias=bias, reduction="mean")
    torch.testing.assert_close(ref.dual_bce(z, U, sp, mask, bias=bias, reduction="mean"), dense, rtol=0, atol=0)
    torch.testing.assert_close(kernels.dual_bce(z, U, sp, mask, bias=bias, reduction="mean", backend="reference"),
                               dense, rtol=0, atol=0)
    # DualHead passes them through
    head = kernels.DualHead(5, 21, bias=True, backend="reference", reduction="mean").double()
    with torch.no_grad():
        head.weight.copy_(U)
        head.bias.copy_(bias)
    torch.testing.assert_close(head(z, sp, mask), dense)


def test_sparse_results_are_deterministic_and_match_dense_labels(backend):
    """Two runs give the same bits; sparse labels and their dense matrix give the same values."""
    z, U, bias, y, sp = sparse_case(20, 45, 12, 0.15, seed=60, empty_row=4, full_row=7)
    dev = device_of(backend)
    mask = HashedMask(9, 0.25, torch.arange(20, device=dev) + 100)
    up = torch.linspace(0.5, 1.5, 20, dtype=torch.float64)
    runs = [run(lambda *a, **k: kernels.dual_bce(*a, backend=backend, **k), z, U, bias, labels, mask, "none", up,
                torch.float32, dev) for labels in (sp.to(dev), sp.to(dev), y.float().to(dev))]
    for a, b in zip(runs[0], runs[1]):
        assert torch.equal(a, b)
    for a, b in zip(runs[0], runs[2]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_sparse_csc_is_the_column_order():
    _, _, _, y, sp = sparse_case(9, 13, 2, 0.3, seed=70, index_dtype=torch.int32)
    colptr, crows = sparse_csc(sp.indptr, sp.indices, 13)
    assert colptr.tolist() == [0] + torch.cumsum(y.sum(0), 0).long().tolist()
    for j in range(13):
        assert crows[colptr[j]:colptr[j + 1]].tolist() == torch.nonzero(y[:, j])[:, 0].tolist()


def test_triton_forward_counts_per_row():
    """dual_bce_fwd's per-row count with a hashed mask is the reference's per-row sum, exactly."""
    require_backend("triton")
    z, U, bias, y, sp = sparse_case(17, 40, 6, 0.2, seed=80)
    mask = HashedMask(5, 0.45, torch.arange(17) * 1000 + 3, col_offset=9)
    dev = TRITON_DEVICE
    for kind, labels, indptr in (("sparse", sp.indices, sp.indptr), ("dense", y.float(), None)):
        args = LabelArgs(labels.to(dev), kind, indptr=indptr.to(dev) if indptr is not None else None,
                         mask_rows=mask.rows.to(dev), mask_key=mask.key, mask_threshold=mask.threshold,
                         mask_col_offset=mask.col_offset)
        _, cnt, _, _ = dual_bce_fwd(z.float().to(dev), U.float().to(dev), args, None, 40, False)
        assert torch.equal(cnt.cpu().double(), mask.dense(40, torch.float64).sum(1)), kind


# ---------------------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------------------
def test_sparse_labels_reject_bad_rows():
    i64 = lambda *v: torch.tensor(v, dtype=torch.int64)  # noqa: E731
    cases = [
        ((i64(0, 2, 1, 3), i64(0, 1, 2), 4), r"indptr is not monotone at row 1: indptr\[1\] = 2 > indptr\[2\] = 1"),
        ((i64(0, 1, 3), i64(0, 1, 4), 4), r"row 1 has label index 4 outside \[0, 4\)"),
        ((i64(0, 1, 3), i64(0, 1, -1), 4), r"row 1 has label index -1 outside"),
        ((i64(0, 2, 3), i64(2, 1, 0), 4), r"row 0 has unsorted indices: 2 then 1"),
        ((i64(0, 1, 3), i64(0, 3, 3), 4), r"row 1 has a duplicate: 3 then 3"),
        ((i64(1, 2), i64(0, 1), 4), r"indptr\[0\] must be 0"),
        ((i64(0, 1), i64(0, 1), 4), r"indptr\[-1\] = 1 but indices holds 2 entries"),
        ((i64(0, 1).int(), i64(0), 4), "indptr must be a 1-D tensor of torch.int64"),
        ((i64(0, 1), i64(0).float(), 4), "indices must be a 1-D tensor of torch.int32 or torch.int64"),
        ((i64(0, 1), i64(0), -1), "n must be an int"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            SparseLabels(*args)
    SparseLabels(i64(0, 2, 2, 3), i64(0, 3, 1).int(), 4)  # an empty row is fine


@pytest.mark.parametrize("backend", ["triton", "reference", "cpu", "auto"])
def test_dual_bce_rejects_mismatched_sparse_labels_and_masks(backend):
    if backend == "triton" and not HAVE_TRITON:
        pytest.skip("Triton needs CUDA or TRITON_INTERPRET=1")
    dev = device_of(backend)
    z, U, y = torch.zeros(4, 3, device=dev), torch.zeros(5, 3, device=dev), torch.zeros(4, 5, device=dev)
    sp = SparseLabels.from_dense(y)
    hm = HashedMask(1, 0.5, torch.arange(4, device=dev))
    bce = lambda *a, **k: kernels.dual_bce(*a, backend=backend, **k)  # noqa: E731
    cases = [
        (lambda: bce(z, U, SparseLabels.from_dense(torch.zeros(4, 6, device=dev))),
         r"sparse y is for shape \(4, 6\), expected \(4, 5\)"),
        (lambda: bce(z, U, SparseLabels.from_dense(torch.zeros(3, 5, device=dev))),
         r"sparse y is for shape \(3, 5\), expected \(4, 5\)"),
        (lambda: bce(z, U, sp, HashedMask(1, 0.5, torch.arange(3, device=dev))),
         r"the HashedMask has 3 rows, expected 4 \(z's rows, z has shape \(4, 3\)\)"),
        (lambda: bce(z, U, y, HashedMask(1, 0.5, torch.arange(6, device=dev))), "the HashedMask has 6 rows"),
        (lambda: bce(z, U, sp, y[:, :2]), r"mask has shape \(4, 2\), expected \(4, 5\)"),
        (lambda: bce(z, U, kernels.pack_labels(y), hm), "mask must be None"),
        (lambda: bce(z, U, sp.to("meta"), hm), "one device"),
        (lambda: bce(z, U, sp, hm.to("meta")), "one device"),
        (lambda: bce(z, U, y, hm.to("meta")), "one device"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()


# ---------------------------------------------------------------------------------------------------------
# opcheck and torch.compile
# ---------------------------------------------------------------------------------------------------------
def test_opcheck_sparse_and_hashed(backend):
    z, U, bias, y, sp = sparse_case(6, 21, 5, 0.3, seed=90, index_dtype=torch.int32, empty_row=2)
    dev = device_of(backend)
    z, U, bias = (t.float().to(dev) for t in (z, U, bias))
    sp = sp.to(dev)
    hm = HashedMask(2**35 + 1, 0.3, torch.arange(6, device=dev) * 7, col_offset=4)
    mask = (torch.rand(6, 21, generator=torch.Generator().manual_seed(1)) > 0.3).float().to(dev)
    csc = backend == "triton"
    for m, rows in ((None, hm.rows), (mask, None)):
        args = (z.clone().requires_grad_(), U.clone().requires_grad_(), sp.indices, m, bias.clone().requires_grad_(),
                21, "sparse", sp.indptr, rows, hm.key, hm.threshold, hm.col_offset, "none", True, False, csc,
                backend, True)
        torch.library.opcheck(torch.ops.dualvae.dual_bce.default, args)
        torch.library.opcheck(torch.ops.dualvae.dual_bce_backward.default,
                              (torch.rand(6, device=dev), z, U, sp.indices, m, bias, 21, "sparse", sp.indptr, rows,
                               hm.key, hm.threshold, hm.col_offset, None, None, True, backend))
    # dense labels with the hashed mask
    args = (z.clone().requires_grad_(), U, y.float().to(dev), None, None, 21, "dense", None, hm.rows, hm.key,
            hm.threshold, hm.col_offset, "mean", True, backend == "cpu", False, backend, True)
    torch.library.opcheck(torch.ops.dualvae.dual_bce.default, args)


def test_opcheck_cpu_kernel_op_sparse_and_hashed():
    require_backend("cpu")
    z, U, bias, y, sp = sparse_case(6, 21, 5, 0.3, seed=91, index_dtype=torch.int32)
    z, U, bias = z.float(), U.float(), bias.float()
    hm = HashedMask(7, 0.4, torch.arange(6) + 50, col_offset=3)
    op = torch.ops.dualvae.dual_bce_cpu.default
    torch.library.opcheck(op, (z, U, sp.indices, None, bias, None, 21, "sparse", sp.indptr, hm.rows, hm.key,
                               hm.threshold, hm.col_offset, True, True, True, True))
    torch.library.opcheck(op, (z, U, y.float(), None, None, torch.rand(6), 21, "dense", None, hm.rows, hm.key,
                               hm.threshold, hm.col_offset, False, False, True, False))


def test_torch_compile_fullgraph_with_sparse_labels_and_hashed_mask(backend):
    torch._dynamo.reset()
    z, U, bias, y, sp = sparse_case(8, 11, 6, 0.3, seed=95, empty_row=0)
    dev = device_of(backend)
    sp = sp.to(dev)
    hm = HashedMask(4, 0.3, torch.arange(8, device=dev) + 20, col_offset=2)

    def step(z, U, bias):
        return kernels.dual_bce(z, U, sp, hm, bias=bias, reduction="mean", backend=backend)

    leaves = [t.float().to(dev).requires_grad_() for t in (z, U, bias)]
    got = torch.compile(step, fullgraph=True, backend="aot_eager")(*leaves)
    got.backward()
    eager = [t.float().to(dev).requires_grad_() for t in (z, U, bias)]
    want = step(*eager)
    want.backward()
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    for a, b in zip(leaves, eager):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)
