"""The C++ CPU kernel dualvae::dual_bce_cpu with sparse positive labels (label_kind "sparse": CSR indices and
indptr) and the hashed missing-label mask (mask_rows, evaluated in the kernel), called directly, against float64
dense references built from kernels.reference (SparseLabels.dense(), HashedMask.dense(n), reference.dual_bce).

Error rule as in test_fused_ops.py: ours is within max(1e-5, 4 x eager-fp32's error) of the float64 reference,
error = max |x - ref| / max(1, max |ref|). Beyond it, sparse labels and the hashed mask must give bit for bit
what the same kernel gives for their dense forms (the label-row loader makes the same float rows), and the hash
must equal the reference's integers exactly.
"""
import os
import subprocess
import sys

import pytest
import torch

from dualvae import kernels
from dualvae.kernels import HashedMask, SparseLabels, reference as ref

pytestmark = pytest.mark.skipif(not kernels.has_compiled_ops() and os.environ.get("DUALVAE_REQUIRE_EXT") != "1",
                                reason="the C++ CPU kernels are not built")

OUTPUTS = ("rows", "count", "bad", "dz", "dU", "db")


def op(z, U, labels, mask=None, bias=None, gscale=None, *, n, kind="dense", indptr=None, hashed=None,
       need=(True, True, True, True)):
    """torch.ops.dualvae.dual_bce_cpu with a HashedMask `hashed` passed as (mask_rows, key, threshold, offset)."""
    rows, key, thr, off = ((hashed.rows, hashed.key, hashed.threshold, hashed.col_offset) if hashed is not None
                           else (None, 0, 0, 0))
    return torch.ops.dualvae.dual_bce_cpu(z, U, labels, mask, bias, gscale, n, kind, indptr, rows, key, thr, off,
                                          *need)


def sparse_labels(B, n, density, idx_dtype, seed):
    """Random CSR positives at `density`, with an empty row 0 and an all-positive row 1 (where B > 1)."""
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(B, n, generator=g) < density).float()
    y[0] = 0
    if B > 1:
        y[1] = 1
    s = SparseLabels.from_dense(y)
    return SparseLabels(s.indptr, s.indices.to(idx_dtype), n)


def inputs(B, n, d, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(B, d, generator=g, dtype=torch.float64) * scale / d ** 0.5
    U = torch.randn(n, d, generator=g, dtype=torch.float64)
    bias = torch.randn(n, generator=g, dtype=torch.float64)
    gscale = torch.randn(B, generator=g, dtype=torch.float64)
    return z, U, bias, gscale


def reference_outputs(z, U, y, mask, bias, gscale, dtype):
    """(rows, count, dz, dU, db) of reference.dual_bce at `dtype`: the per-row loss and the gradients of
    sum_b gscale_b * rows_b (dz = G U, dU = G^T z, db = column sums of G)."""
    leaves = [t.detach().to(dtype).requires_grad_() for t in (z, U, bias)]
    m = mask.to(dtype) if mask is not None else None
    rows = ref.dual_bce(leaves[0], leaves[1], y.to(dtype), m, bias=leaves[2], reduction="none")
    grads = torch.autograd.grad((rows * gscale.to(dtype)).sum(), leaves)
    count = m.sum() if m is not None else torch.tensor(float(y.numel()), dtype=dtype)
    return [rows.detach(), count] + list(grads)


def err(x, expected):
    x, expected = x.double(), expected.double()
    if expected.numel() == 0:
        return 0.0
    return float((x - expected).abs().max() / max(1.0, float(expected.abs().max())))


def check_against_float64(ours, z, U, y, mask, bias, gscale, what):
    expected = reference_outputs(z, U, y, mask, bias, gscale, torch.float64)
    eager32 = reference_outputs(z, U, y, mask, bias, gscale, torch.float32)
    got = [ours[0], ours[1], ours[3], ours[4], ours[5]]
    for name, a, b, c in zip(("rows", "count", "dz", "dU", "db"), got, eager32, expected):
        assert a.dtype == torch.float32 and a.shape == c.shape, (name, a.dtype, a.shape, c.shape)
        assert torch.isfinite(a).all(), f"{what}: {name} not finite"
        e_ours, e_eager = err(a, c), err(b, c)
        assert e_ours <= max(1e-5, 4 * e_eager), f"{what}: {name} error {e_ours:.3g} vs eager fp32 {e_eager:.3g}"
    assert int(ours[2]) == 0, f"{what}: bad = {int(ours[2])}"


MASKS = ["none", "hashed0", "hashed0.3", "hashed1", "dense"]


def make_mask(kind, B, n, seed):
    """(dense mask or None, HashedMask or None) of a mask kind; the hashed ones at a column offset."""
    rows = torch.randint(0, 2**31 - 1, (B,), generator=torch.Generator().manual_seed(seed))
    if kind.startswith("hashed"):
        hm = HashedMask(seed, float(kind[len("hashed"):]), rows, col_offset=1000 + seed)
        return None, hm
    if kind == "dense":
        return (torch.rand(B, n, generator=torch.Generator().manual_seed(seed + 1)) > 0.4).float(), None
    return None, None


@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("idx_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("B,n,d,density", [(1, 1, 1, 0.5), (5, 3, 7, 0.3), (300, 700, 24, 0.02),
                                           (70, 530, 40, 0.5), (40, 5000, 8, 0.05)])
def test_sparse_matches_float64_and_its_dense_form(B, n, d, density, idx_dtype, mask_kind):
    # 300 x 700: 2 x 3 tiles of 256 x 256 with partial ones at both edges; row 0 empty, row 1 all positive.
    # n = 5000: 20 column tiles in 16 work items, so some items read a row's positives over two tiles.
    seed = B + n + d
    z, U, bias, gscale = inputs(B, n, d, seed)
    sp = sparse_labels(B, n, density, idx_dtype, seed)
    dense_mask, hm = make_mask(mask_kind, B, n, seed)
    f = [t.float() for t in (z, U, bias, gscale)]
    ours = op(f[0], f[1], sp.indices, dense_mask, f[2], f[3], n=n, kind="sparse", indptr=sp.indptr, hashed=hm)
    y = sp.dense(torch.float64)
    mask = hm.dense(n, torch.float64) if hm is not None else dense_mask
    check_against_float64(ours, z, U, y, mask, bias, gscale, f"sparse {idx_dtype} mask {mask_kind} B={B} n={n}")
    dense = op(f[0], f[1], y.float(), mask.float() if mask is not None else None, f[2], f[3], n=n)
    for name, a, b in zip(OUTPUTS, ours, dense):
        assert torch.equal(a, b), f"{name}: sparse + {mask_kind} differs from its dense form"


@pytest.mark.parametrize("ratio", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("y_dtype", [torch.float32, torch.uint8])
def test_dense_labels_with_the_hashed_mask(ratio, y_dtype):
    B, n, d = 260, 600, 16
    z, U, bias, gscale = inputs(B, n, d, seed=5)
    y = (torch.rand(B, n, generator=torch.Generator().manual_seed(6)) > 0.5).double()
    hm = HashedMask(11, ratio, torch.arange(5000, 5000 + B), col_offset=77)
    f = [t.float() for t in (z, U, bias, gscale)]
    ours = op(f[0], f[1], y.to(y_dtype), None, f[2], f[3], n=n, hashed=hm)
    check_against_float64(ours, z, U, y, hm.dense(n, torch.float64), bias, gscale, f"dense y + hashed {ratio}")
    dense = op(f[0], f[1], y.float(), hm.dense(n, torch.float32), f[2], f[3], n=n)
    for name, a, b in zip(OUTPUTS, ours, dense):
        assert torch.equal(a, b), f"{name}: dense y + hashed mask differs from its dense form"


def test_the_outputs_can_be_asked_for_one_at_a_time():
    B, n, d = 40, 300, 8
    z, U, bias, gscale = (t.float() for t in inputs(B, n, d, seed=9))
    sp = sparse_labels(B, n, 0.1, torch.int64, seed=9)
    hm = HashedMask(2, 0.5, torch.arange(B))
    full = op(z, U, sp.indices, None, bias, gscale, n=n, kind="sparse", indptr=sp.indptr, hashed=hm)
    for k, idx in enumerate((3, 4, 5)):
        need = [False, False, False, False]
        need[k + 1] = True
        one = op(z, U, sp.indices, None, bias, gscale, n=n, kind="sparse", indptr=sp.indptr, hashed=hm, need=need)
        assert torch.equal(one[idx], full[idx]), OUTPUTS[idx]
        assert one[0].numel() == 0


def hash_outputs(rows, ratio, n, col_offset, seed):
    """(observed (B, n) as the kernel evaluates it, count): with z = I (d = B), U = 0 and y = 0 every logit is 0
    and G = mask / 2, so dU^T = mask / 2 exactly."""
    B = len(rows)
    hm = HashedMask(seed, ratio, rows, col_offset=col_offset)
    z = torch.eye(B)
    U = torch.zeros(n, B)
    y = torch.zeros(B, n, dtype=torch.uint8)
    res = op(z, U, y, None, None, None, n=n, hashed=hm, need=(True, False, True, False))
    return res[4].t() * 2, res[1], hm


@pytest.mark.parametrize("ratio", [0.0, 2.0**-32, 0.3, 0.5, 1 - 2.0**-32, 1.0])
def test_the_hash_is_the_reference_bit_for_bit(ratio):
    # row indices up to 2**31 - 1 and labels up to 2**31 - 1 (col_offset + j), several column tiles
    rows = torch.tensor([0, 1, 2**31 - 1, 12345, 2**30, 7] + list(range(100, 130)), dtype=torch.int64)
    n = 600
    for col_offset in (0, 2**31 - n):
        got, count, hm = hash_outputs(rows, ratio, n, col_offset, seed=2**40 + 3)
        expected = hm.dense(n, torch.float32)
        assert torch.equal(got, expected), f"ratio {ratio}, col_offset {col_offset}: {(got != expected).sum()} " \
                                           f"entries differ"
        # the per-row counts equal the reference's integer counts
        assert torch.equal(got.sum(1).long(), expected.sum(1).long())
        assert int(count) == int(expected.sum())


def cpu_outputs(threads=None):
    """Every output of a sparse + hashed call over 3 x 12 tiles (several work items)."""
    B, n, d = 600, 3000, 16
    z, U, bias, gscale = (t.float() for t in inputs(B, n, d, seed=13))
    sp = sparse_labels(B, n, 0.01, torch.int32, seed=13)
    hm = HashedMask(4, 0.3, torch.arange(B) * 3, col_offset=5)
    before = torch.get_num_threads()
    try:
        if threads:
            torch.set_num_threads(threads)
        return op(z, U, sp.indices, None, bias, gscale, n=n, kind="sparse", indptr=sp.indptr, hashed=hm)
    finally:
        torch.set_num_threads(before)


def test_results_are_deterministic_and_do_not_depend_on_the_thread_count():
    one = cpu_outputs(threads=1)
    for threads in (1, 2):
        for name, a, b in zip(OUTPUTS, cpu_outputs(threads=threads), one):
            assert torch.equal(a, b), f"{threads} threads: {name} differs"


def isa_outputs():
    """What this process's kernel build computes (checked inside: float64 rule, bit-exact hash, sparse = dense
    form), for comparing builds."""
    out = []
    B, n, d = 67, 333, 19  # rows not a multiple of 16 lanes
    z, U, bias, gscale = inputs(B, n, d, seed=21)
    sp = sparse_labels(B, n, 0.05, torch.int32, seed=21)
    hm = HashedMask(8, 0.3, torch.arange(B) + 2**30, col_offset=9)
    f = [t.float() for t in (z, U, bias, gscale)]
    ours = op(f[0], f[1], sp.indices, None, f[2], f[3], n=n, kind="sparse", indptr=sp.indptr, hashed=hm)
    check_against_float64(ours, z, U, sp.dense(torch.float64), hm.dense(n, torch.float64), bias, gscale,
                          kernels.cpu_isa())
    dense = op(f[0], f[1], sp.dense(), hm.dense(n, torch.float32), f[2], f[3], n=n)
    assert all(torch.equal(a, b) for a, b in zip(ours, dense)), kernels.cpu_isa()
    got, count, hm = hash_outputs(torch.arange(40) * 7919, 0.4, 1000, 3, seed=1)
    assert torch.equal(got, hm.dense(1000, torch.float32)), kernels.cpu_isa()
    return list(ours) + [got, count]


_ISA_NEEDS = {"default": (), "avx2": ("avx2", "fma", "f16c"),
              "avx512": ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq")}


def test_every_kernel_build_agrees(tmp_path):
    # The builds this process does not run go to subprocesses; the default one there with 7 x 16 tiles, so many
    # tile edges cut rows of positives and of the hash, and work items span several column tiles (results then
    # differ from 256 x 256 tiles by rounding only).
    from dualvae.sysinfo import cpu_isa
    flags = set(cpu_isa())
    here = os.path.dirname(os.path.abspath(__file__))
    code = ("import sys, torch; sys.path.insert(0, sys.argv[1]); import test_cpu_sparse as t; "
            "import dualvae.kernels as k; assert k.cpu_isa() == sys.argv[3], k.cpu_isa(); "
            "torch.save(t.isa_outputs(), sys.argv[2])")
    results, runs = {}, {}
    for isa, needs in _ISA_NEEDS.items():  # the subprocesses run side by side (most of their time is imports)
        if not set(needs) <= flags or kernels.cpu_isa() == isa:
            continue
        env = dict(os.environ, DUALVAE_CPU_ISA=isa)
        if isa == "default":
            env["DUALVAE_CPU_TILE"] = "7x16"
        path = str(tmp_path / f"{isa}.pt")
        runs[isa] = (path, subprocess.Popen([sys.executable, "-c", code, here, path, isa], env=env,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    results[kernels.cpu_isa()] = isa_outputs()
    for isa, (path, proc) in runs.items():
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"DUALVAE_CPU_ISA={isa}: {stderr[-3000:]}"
        results[isa] = torch.load(path)
    assert "default" in results, sorted(results)
    base = results["default"]
    for isa, res in results.items():
        for i, (a, b) in enumerate(zip(res, base, strict=True)):
            if i >= len(OUTPUTS):  # the hash and its count: exact in every build
                assert torch.equal(a, b), f"{isa} vs default: hash output {i}"
            else:
                torch.testing.assert_close(a, b, rtol=2e-5, atol=1e-5, msg=lambda m: f"{isa} vs default, {i}: {m}")


def test_packed_labels_still_work_and_reject_a_hashed_mask():
    B, n, d = 20, 50, 4
    z, U, bias, gscale = (t.float() for t in inputs(B, n, d, seed=3))
    y = (torch.rand(B, n) > 0.5).float()
    m = (torch.rand(B, n) > 0.3).float()
    packed = kernels.pack_labels(y, m)
    a = op(z, U, packed.words, None, bias, gscale, n=n, kind="packed")
    b = op(z, U, y, m, bias, gscale, n=n)
    assert all(torch.equal(x, w) for x, w in zip(a, b))
    with pytest.raises(ValueError, match="hashed mask .* cannot go with packed labels"):
        op(z, U, packed.words, None, bias, None, n=n, kind="packed", hashed=HashedMask(0, 0.5, torch.arange(B)))


def bad_call(B=4, n=10, **change):
    """One valid sparse + hashed call with `change` applied to its arguments."""
    args = dict(z=torch.randn(B, 3), U=torch.randn(n, 3), labels=torch.tensor([1, 2, 9, 0, 5], dtype=torch.int32),
                mask=None, bias=None, gscale=None, n=n, kind="sparse",
                indptr=torch.tensor([0, 3, 3, 4, 5]), hashed=HashedMask(1, 0.5, torch.arange(B)))
    args.update(change)
    labels = args.pop("labels")
    return op(args.pop("z"), args.pop("U"), labels, **args)


class Hashed:  # a hashed mask with any (rows, key, threshold, col_offset), valid or not
    def __init__(self, rows, key=0, threshold=0, col_offset=0):
        self.rows, self.key, self.threshold, self.col_offset = rows, key, threshold, col_offset


@pytest.mark.parametrize("change,message", [
    (dict(kind="csr"), "label_kind must be 'dense', 'packed' or 'sparse', got 'csr'"),
    (dict(indptr=None), "indptr is required with label_kind 'sparse'"),
    (dict(kind="dense", labels=torch.zeros(4, 10)), "indptr must be None with label_kind 'dense'"),
    (dict(indptr=torch.tensor([0, 3, 3, 4, 5], dtype=torch.int32)), r"indptr must be int64 \(B \+ 1,\) = \(5,\)"),
    (dict(indptr=torch.tensor([0, 3, 3, 5])), r"indptr must be int64 \(B \+ 1,\) = \(5,\), got Long \[4\]"),
    (dict(labels=torch.tensor([1.0, 2, 9, 0, 5])), "indices must be a 1-D int32 or int64 tensor, got Float"),
    (dict(labels=torch.zeros(5, 1, dtype=torch.int64)), "indices must be a 1-D int32 or int64 tensor"),
    (dict(indptr=torch.tensor([1, 3, 3, 4, 5])), r"indptr\[0\] must be 0, got 1"),
    (dict(indptr=torch.tensor([0, 3, 2, 4, 5])), r"indptr is not monotone at row 1: indptr\[1\] = 3 > indptr\[2\] = 2"),
    (dict(indptr=torch.tensor([0, 3, 3, 4, 4])), r"indptr\[-1\] = 4 but indices holds 5 entries"),
    (dict(labels=torch.tensor([1, 2, 9, 0, 10], dtype=torch.int32)), r"row 3 has label index 10 outside \[0, 10\)"),
    (dict(labels=torch.tensor([1, 2, 9, -1, 5])), r"row 2 has label index -1 outside \[0, 10\)"),
    (dict(labels=torch.tensor([1, 9, 2, 0, 5])), "row 0 has unsorted indices: 9 then 2"),
    (dict(labels=torch.tensor([1, 2, 2, 0, 5])), "row 0 has a duplicate: 2 then 2"),
    (dict(mask=torch.ones(4, 10)), "either a dense mask or a hashed one"),
    (dict(hashed=None, mask=torch.ones(4, 9)), r"mask must be \(4, 10\), got \[4, 9\]"),
    (dict(hashed=Hashed(torch.arange(4, dtype=torch.int32))), r"mask_rows must be int64 \(4,\), got Int"),
    (dict(hashed=Hashed(torch.arange(3))), r"mask_rows must be int64 \(4,\), got Long \[3\]"),
    (dict(hashed=Hashed(torch.arange(4), key=2**32)), "mask_key must be a uint32 value"),
    (dict(hashed=Hashed(torch.arange(4), key=-1)), "mask_key must be a uint32 value"),
    (dict(hashed=Hashed(torch.arange(4), threshold=2**32 + 1)), r"mask_threshold must be in \[0, 2\*\*32\]"),
    (dict(hashed=Hashed(torch.arange(4), threshold=-1)), r"mask_threshold must be in \[0, 2\*\*32\]"),
    (dict(hashed=Hashed(torch.arange(4), col_offset=-1)), r"mask_col_offset must be in \[0, 2\*\*31\)"),
    (dict(U=torch.randn(9, 3)), r"z \(B, d\) and U \(n, d\) expected"),
])
def test_bad_input_raises_value_error_naming_the_problem(change, message):
    bad_call()  # the unchanged call is valid
    with pytest.raises(ValueError, match=message):
        bad_call(**change)


def test_the_first_bad_row_is_named_whatever_the_thread_count():
    B, n = 3000, 50
    sp = sparse_labels(B, n, 0.2, torch.int64, seed=1)
    idx = sp.indices.clone()
    for b in (2500, 1700, 900):  # three bad rows in different parallel chunks: row 900 is the first
        k = int(sp.indptr[b])
        assert int(sp.indptr[b + 1]) > k
        idx[k] = n + b
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with pytest.raises(ValueError, match=f"row 900 has label index {n + 900} outside"):
                op(torch.randn(B, 2), torch.randn(n, 2), idx, n=n, kind="sparse", indptr=sp.indptr)
    finally:
        torch.set_num_threads(before)
