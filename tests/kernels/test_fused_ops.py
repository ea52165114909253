"""The fused ops on the Triton backend (CPU tensors under TRITON_INTERPRET=1, set in tests/conftest.py) against
float64 references, plus the public-API contract every backend shares: packed labels, bad input, opcheck,
torch.compile.

Error rule (issue 4): ours is within max(1e-5, 4 x eager-fp32's error) of the float64 reference, for the loss and
every gradient, with error = max |x - ref| / max(1, max |ref|) (absolute near zero, relative for large values).
"""
import math

import pytest
import torch

from dualvae import kernels
from dualvae.kernels import ops, reference as ref
from dualvae.kernels import triton_kernels as tk

pytestmark = pytest.mark.skipif(not tk.INTERPRET and not torch.cuda.is_available(),
                                reason="Triton needs CUDA or TRITON_INTERPRET=1")
DEVICE = "cuda" if torch.cuda.is_available() and not tk.INTERPRET else "cpu"


def err(x, expected):
    x, expected = x.detach().double(), expected.detach().double()
    if expected.numel() == 0:
        return 0.0
    return float((x - expected).abs().max() / max(1.0, float(expected.abs().max())))


def assert_error_rule(got, eager32, expected, what):
    e_ours, e_eager = err(got, expected), err(eager32, expected)
    assert e_ours <= max(1e-5, 4 * e_eager), f"{what}: error {e_ours:.3g} vs eager fp32 {e_eager:.3g}"


# ---------------------------------------------------------------------------------------------------------
# dual_bce
# ---------------------------------------------------------------------------------------------------------
def bce_inputs(B, n, d, mask_kind, *, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(B, d, generator=g, dtype=torch.float64) * scale / math.sqrt(d)
    U = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = (torch.rand(B, n, generator=g) > 0.5).double()
    bias = torch.randn(n, generator=g, dtype=torch.float64)
    mask = {"none": None, "all_zero": torch.zeros(B, n, dtype=torch.float64),
            "all_one": torch.ones(B, n, dtype=torch.float64),
            "random": (torch.rand(B, n, generator=g) > 0.4).double()}[mask_kind]
    return z, U, y, mask, bias


def run_bce(fn, z, U, y, mask, bias, reduction, upstream, dtype, **kw):
    """(loss, dz, dU, db) of fn at `dtype` with the upstream gradient `upstream`."""
    leaves = [t.detach().to(DEVICE, dtype).requires_grad_() for t in (z, U, bias) if t is not None]
    zz, UU = leaves[0], leaves[1]
    bb = leaves[2] if bias is not None else None
    yy = y.to(DEVICE, dtype)
    mm = mask.to(DEVICE, dtype) if mask is not None else None
    loss = fn(zz, UU, yy, mm, bias=bb, reduction=reduction, **kw)
    grads = torch.autograd.grad((loss.double() * upstream.to(DEVICE)).sum(), leaves)
    return [loss.cpu()] + [g.cpu() for g in grads]


def check_bce(B, n, d, mask_kind, with_bias, reduction, seed, scale=1.0):
    z, U, y, mask, bias = bce_inputs(B, n, d, mask_kind, seed=seed, scale=scale)
    bias = bias if with_bias else None
    shape = (B,) if reduction == "none" else ()
    upstream = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 1))
    expected = run_bce(ref.dual_bce, z, U, y, mask, bias, reduction, upstream, torch.float64)
    eager32 = run_bce(ref.dual_bce, z, U, y, mask, bias, reduction, upstream, torch.float32)
    ours = run_bce(kernels.dual_bce, z, U, y, mask, bias, reduction, upstream, torch.float32, backend="triton")
    assert ours[0].dtype == torch.float32 and ours[0].shape == shape
    for name, a, b, c in zip(("loss", "dz", "dU", "db"), ours, eager32, expected):
        assert torch.isfinite(a).all(), name
        assert_error_rule(a, b, c, f"{name} ({reduction}, mask {mask_kind}, B={B} n={n} d={d})")
    return ours


@pytest.mark.parametrize("mask_kind", ["none", "all_zero", "all_one", "random"])
@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
@pytest.mark.parametrize("B,n,d", [(1, 1, 1), (5, 3, 7), (37, 53, 20)])
def test_dual_bce_matches_float64(B, n, d, mask_kind, reduction):
    check_bce(B, n, d, mask_kind, with_bias=(B + n) % 2 == 1, reduction=reduction, seed=B * 7 + n + d)


@pytest.mark.parametrize("with_bias", [False, True])
def test_dual_bce_odd_shape_several_tiles_every_way(with_bias):
    # B, n, d not multiples of any block; several row and column tiles, d padded inside one tile
    check_bce(41, 70, 33, "random", with_bias, "none", seed=3)


def test_dual_bce_all_missing_mean_is_zero_with_zero_gradients():
    loss, dz, dU = check_bce(9, 21, 5, "all_zero", False, "mean", seed=4)
    assert loss.item() == 0.0
    assert torch.count_nonzero(dz) == 0 and torch.count_nonzero(dU) == 0


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_dual_bce_extreme_logits(reduction):
    # |logits| up to ~1e4 both ways: the log-sum-exp form must stay finite and exact
    ours = check_bce(12, 19, 8, "random", True, reduction, seed=6, scale=3e3)
    assert max(float(t.detach().abs().max()) for t in ours) > 1e3


def test_dual_bce_split_reductions_agree():
    """Partial sums over splits of n (forward) and of B (backward) give what one split gives."""
    z, U, y, mask, bias = (t.float() for t in bce_inputs(50, 70, 24, "random", seed=8))
    one = tk.dual_bce_fwd(z, U, y, mask, bias, 70, False, True, splits=1)
    three = tk.dual_bce_fwd(z, U, y, mask, bias, 70, False, True, splits=3)
    for a, b in zip(one[:3], three[:3]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-5)
    assert one[3] == three[3] == 0
    gs = torch.rand(50)
    for a, b in zip(tk.dual_bce_bwd(gs, z, U, y, mask, bias, 70, False, True, splits=1),
                    tk.dual_bce_bwd(gs, z, U, y, mask, bias, 70, False, True, splits=4)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-5)


def test_dual_bce_bool_and_uint8_labels_and_masks():
    z, U, y, mask, _ = (t.float() if t is not None else None for t in bce_inputs(6, 9, 4, "random", seed=9))
    want = kernels.dual_bce(z, U, y, mask, backend="triton")
    assert kernels.dual_bce(z, U, y.bool(), mask.bool(), backend="triton").item() == want.item()
    assert kernels.dual_bce(z, U, y.to(torch.uint8), mask.to(torch.uint8), backend="triton").item() == want.item()


# ---------------------------------------------------------------------------------------------------------
# packed labels
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 15, 16, 17, 40, 53])
def test_pack_labels_round_trip(n):
    g = torch.Generator().manual_seed(n)
    y = (torch.rand(7, n, generator=g) > 0.5).float()
    mask = (torch.rand(7, n, generator=g) > 0.3).float()
    packed = kernels.pack_labels(y, mask)
    assert packed.words.dtype == torch.int32 and packed.words.shape == (7, -(-n // 16))
    assert packed.shape == (7, n)
    y2, m2 = packed.unpack()
    assert torch.equal(m2, mask) and torch.equal(y2, y)
    assert torch.equal(kernels.pack_labels(y).unpack()[1], torch.ones_like(y))


@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
def test_packed_labels_give_identical_results(reduction):
    z, U, y, mask, bias = (t.float() for t in bce_inputs(23, 45, 12, "random", seed=10))
    packed = kernels.pack_labels(y, mask)
    outs = []
    for labels, m in ((y, mask), (packed, None)):
        zz, UU, bb = (t.clone().requires_grad_() for t in (z, U, bias))
        loss = kernels.dual_bce(zz, UU, labels, m, bias=bb, reduction=reduction, backend="triton")
        loss.sum().backward()
        outs.append([loss, zz.grad, UU.grad, bb.grad])
    for a, b in zip(*outs):
        assert torch.equal(a, b)
    # and the reference backend reads packed labels the same way
    torch.testing.assert_close(kernels.dual_bce(z, U, packed, bias=bias, reduction=reduction, backend="reference"),
                               outs[0][0].detach(), rtol=1e-5, atol=1e-4)


def test_packed_labels_cost_a_quarter_byte_an_entry():
    y = torch.ones(4, 100_000)
    packed = kernels.pack_labels(y)
    assert packed.words.numel() * packed.words.element_size() == 4 * 100_000 // 4


# ---------------------------------------------------------------------------------------------------------
# reparameterize_kl
# ---------------------------------------------------------------------------------------------------------
def reparam_inputs(B, d, seed):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(B, d, generator=g, dtype=torch.float64) * 2
    logvar = torch.randn(B, d, generator=g, dtype=torch.float64)
    eps = torch.randn(B, d, generator=g, dtype=torch.float64)
    return mu, logvar, eps


def run_reparam(fn, mu, logvar, eps, dtype, upstream, **kw):
    m, lv = (t.detach().to(DEVICE, dtype).requires_grad_() for t in (mu, logvar))
    z, kl = fn(m, lv, eps.to(DEVICE, dtype) if eps is not None else None, **kw)
    gz, gk = upstream
    dm, dl = torch.autograd.grad((z.double() * gz.to(DEVICE)).sum() + (kl.double() * gk.to(DEVICE)).sum(), (m, lv))
    return [t.detach().cpu() for t in (z, kl, dm, dl)]


@pytest.mark.parametrize("B,d", [(1, 1), (7, 13), (33, 100), (9, 300)])
def test_reparameterize_kl_matches_float64(B, d):
    mu, logvar, eps = reparam_inputs(B, d, seed=B + d)
    g = torch.Generator().manual_seed(1)
    upstream = (torch.randn(B, d, generator=g, dtype=torch.float64), torch.randn(B, generator=g, dtype=torch.float64))
    expected = run_reparam(ref.reparameterize_kl, mu, logvar, eps, torch.float64, upstream)
    eager32 = run_reparam(ref.reparameterize_kl, mu, logvar, eps, torch.float32, upstream)
    ours = run_reparam(kernels.reparameterize_kl, mu, logvar, eps, torch.float32, upstream, backend="triton")
    assert ours[0].dtype == torch.float32 and ours[1].shape == (B,)
    for name, a, b, c in zip(("z", "kl", "dmu", "dlogvar"), ours, eager32, expected):
        assert_error_rule(a, b, c, f"{name} (B={B} d={d})")


def test_reparameterize_kl_eps_gradient():
    mu, logvar, eps = (t.float() for t in reparam_inputs(5, 6, seed=2))
    e = eps.clone().requires_grad_()
    z, _ = kernels.reparameterize_kl(mu, logvar, e, backend="triton")
    z.sum().backward()
    torch.testing.assert_close(e.grad, torch.exp(0.5 * logvar))


def test_in_kernel_eps_is_standard_normal_and_seeded():
    mu = torch.zeros(64, 256, device=DEVICE)
    z, kl = kernels.reparameterize_kl(mu, torch.zeros_like(mu), seed=1234, backend="triton")  # z == eps
    assert abs(z.mean().item()) < 0.03 and abs(z.std().item() - 1) < 0.03
    assert abs((z > 0).float().mean().item() - 0.5) < 0.02 and torch.count_nonzero(kl) == 0
    again, _ = kernels.reparameterize_kl(mu, torch.zeros_like(mu), seed=1234, backend="triton")
    other, _ = kernels.reparameterize_kl(mu, torch.zeros_like(mu), seed=1235, backend="triton")
    assert torch.equal(z, again) and not torch.allclose(z, other)
    # offset k moves the stream by k elements (row-major): row 1 at offset 0 is row 0 at offset 256
    shifted, _ = kernels.reparameterize_kl(mu[:1], torch.zeros_like(mu[:1]), seed=1234, offset=256, backend="triton")
    assert torch.equal(shifted[0], z[1])
    # the reference draws the very same numbers (Philox in torch ops)
    expected = ref.philox_randn(1234, 0, (64, 256))
    torch.testing.assert_close(z.cpu(), expected, rtol=0, atol=2e-6)
    torch.testing.assert_close(kernels.reparameterize_kl(mu.cpu(), mu.cpu(), seed=1234, backend="reference")[0],
                               expected, rtol=0, atol=0)


def test_backward_regenerates_the_forward_eps():
    mu, logvar, _ = (t.float() for t in reparam_inputs(19, 37, seed=3))
    m, lv = mu.clone().requires_grad_(), logvar.clone().requires_grad_()
    z, kl = kernels.reparameterize_kl(m, lv, seed=99, offset=5, backend="triton")
    gz = torch.randn_like(z)
    gk = torch.randn_like(kl)
    dm, dl = torch.autograd.grad((z * gz).sum() + (kl * gk).sum(), (m, lv))
    std = torch.exp(0.5 * logvar)
    eps = (z.detach() - mu) / std  # the eps the forward used
    torch.testing.assert_close(eps, ref.philox_randn(99, 5, (19, 37)), rtol=0, atol=1e-4)
    torch.testing.assert_close(dm, gz + gk[:, None] * mu)
    torch.testing.assert_close(dl, 0.5 * (gz * eps * std + gk[:, None] * (logvar.exp() - 1)), rtol=1e-4, atol=1e-4)


def test_seeded_backends_agree():
    mu, logvar, _ = (t.float() for t in reparam_inputs(11, 29, seed=4))
    a = kernels.reparameterize_kl(mu, logvar, seed=7, backend="triton")
    b = kernels.reparameterize_kl(mu, logvar, seed=7, backend="reference")
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# the contract: bad input, non-contiguous input, backends, opcheck, torch.compile
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["triton", "reference", "auto", "cpu"])
def test_bad_input_raises_value_error_naming_the_argument(backend):
    z, U, y, mask, bias = (t.float() for t in bce_inputs(4, 5, 3, "random", seed=0))
    bce = lambda *a, **k: kernels.dual_bce(*a, backend=backend, **k)  # noqa: E731
    cases = [
        (lambda: bce(z, U, torch.zeros(4, 6)), r"y has shape \(4, 6\), expected \(4, 5\)"),
        (lambda: bce(z, torch.zeros(5, 4), y), "U has shape"),
        (lambda: bce(z, U, y, mask[:, :2]), "mask has shape"),
        (lambda: bce(z, U, y, bias=torch.zeros(4)), "bias has shape"),
        (lambda: bce(z.long(), U, y), "z must be a floating tensor"),
        (lambda: bce(z, U.int(), y), "U must be a floating tensor"),
        (lambda: bce(z, U, y * 2 - 1), r"labels in \{0, 1\}"),
        (lambda: bce(z, U, y, reduction="avg"), "reduction"),
        (lambda: bce(z, U.to("meta"), y), "one device"),
        (lambda: bce(z, U, kernels.pack_labels(y), mask), "mask must be None"),
        (lambda: bce(z, U, kernels.pack_labels(y[:, :3])), "packed y"),
    ]
    mu = torch.zeros(3, 4)
    rk = lambda *a, **k: kernels.reparameterize_kl(*a, backend=backend, **k)  # noqa: E731
    cases += [
        (lambda: rk(mu, torch.zeros(3, 5)), "logvar has shape"),
        (lambda: rk(mu.long(), mu), "mu must be a floating tensor"),
        (lambda: rk(mu, mu, torch.zeros(4, 3)), "eps has shape"),
        (lambda: rk(mu, mu, seed=float("nan")), "seed must be a finite integer"),
        (lambda: rk(mu, mu, seed=float("inf")), "seed must be a finite integer"),
        (lambda: rk(mu, mu, seed=-1), "seed must lie in"),
        (lambda: rk(mu, mu, seed="3"), "seed must be an int"),
        (lambda: rk(mu, mu.to("meta")), "one device"),
        (lambda: rk(mu, mu, offset=-2, seed=1), "offset"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()


def test_unknown_backend_and_unsupported_dtype():
    z = torch.zeros(2, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="backend must be one of"):
        kernels.dual_bce(z, z, torch.zeros(2, 2, dtype=torch.float64), backend="cuda")
    with pytest.raises(ValueError, match="backend 'triton' takes float32"):
        kernels.reparameterize_kl(z, z, backend="triton")
    # auto runs float64 on the reference
    assert kernels.reparameterize_kl(z, z, seed=0)[0].dtype == torch.float64


def test_non_contiguous_inputs_work():
    z, U, y, mask, bias = (t.float() for t in bce_inputs(10, 12, 6, "random", seed=12))
    zt, Ut = z.t().contiguous().t(), U.t().contiguous().t()
    yt, mt = y.t().contiguous().t(), mask.t().contiguous().t()
    assert not zt.is_contiguous() and not yt.is_contiguous()
    torch.testing.assert_close(kernels.dual_bce(zt, Ut, yt, mt, bias=bias, backend="triton"),
                               kernels.dual_bce(z, U, y, mask, bias=bias, backend="triton"))
    mu = torch.randn(6, 10).t()
    torch.testing.assert_close(kernels.reparameterize_kl(mu, mu, seed=1, backend="triton")[0],
                               kernels.reparameterize_kl(mu.contiguous(), mu.contiguous(), seed=1, backend="triton")[0])


def test_auto_backend_choice():
    cpu = torch.device("cpu")
    assert ops._resolve_backend("x", "auto", cpu, torch.float32) == "reference"  # "cpu" until compiled kernels
    assert ops._resolve_backend("x", "auto", cpu, torch.float64) == "reference"
    assert ops._resolve_backend("x", "auto", torch.device("cuda"), torch.float32) == "triton"


def test_opcheck_passes():
    z, U, y, mask, bias = (t.float() for t in bce_inputs(6, 21, 5, "random", seed=13))
    packed = kernels.pack_labels(y, mask)
    args_list = [
        (z.requires_grad_(), U.requires_grad_(), y, mask, bias.requires_grad_(), 21, False, "mean", True, "triton"),
        (z, U, packed.words, None, None, 21, True, "none", True, "triton"),
    ]
    for args in args_list:
        torch.library.opcheck(torch.ops.dualvae.dual_bce.default, args)
    mu, logvar, eps = (t.float().requires_grad_() for t in reparam_inputs(5, 7, seed=14))
    torch.library.opcheck(torch.ops.dualvae.reparameterize_kl.default, (mu, logvar, None, 5, 0, "triton"))
    torch.library.opcheck(torch.ops.dualvae.reparameterize_kl.default, (mu, logvar, eps, 0, 0, "triton"))


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph_calls_both_ops(compiler):
    torch._dynamo.reset()
    mu, logvar, _ = (t.float() for t in reparam_inputs(8, 6, seed=15))
    _, U, y, mask, bias = (t.float() for t in bce_inputs(8, 11, 6, "random", seed=15))

    def step(mu, logvar, U, bias):
        z, kl = kernels.reparameterize_kl(mu, logvar, seed=21, backend="triton")
        return kernels.dual_bce(z, U, y, mask, bias=bias, reduction="mean", backend="triton") + kl.mean()

    leaves = [t.clone().requires_grad_() for t in (mu, logvar, U, bias)]
    compiled = torch.compile(step, fullgraph=True, backend=compiler)
    got = compiled(*leaves)
    got.backward()
    eager_leaves = [t.clone().requires_grad_() for t in (mu, logvar, U, bias)]
    want = step(*eager_leaves)
    want.backward()
    torch.testing.assert_close(got, want)
    for a, b in zip(leaves, eager_leaves):
        torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_on_gpu(dtype):
    z, U, y, mask, bias = bce_inputs(300, 1000, 128, "random", seed=16)
    upstream = torch.tensor(1.0, dtype=torch.float64)
    expected = run_bce(ref.dual_bce, z, U, y, mask, bias, "sum", upstream, torch.float64)
    eager = run_bce(ref.dual_bce, z, U, y, mask, bias, "sum", upstream, dtype)
    ours = run_bce(kernels.dual_bce, z, U, y, mask, bias, "sum", upstream, dtype, backend="triton")
    assert ours[0].dtype == torch.float32 and ours[1].dtype == dtype
    for name, a, b, c in zip(("loss", "dz", "dU", "db"), ours, eager, expected):
        assert_error_rule(a, b, c, f"{name} {dtype}")
    mu, logvar, eps = reparam_inputs(300, 128, seed=17)
    gz = (torch.randn(300, 128, dtype=torch.float64), torch.randn(300, dtype=torch.float64))
    expected = run_reparam(ref.reparameterize_kl, mu, logvar, eps, torch.float64, gz)
    eager = run_reparam(ref.reparameterize_kl, mu, logvar, eps, dtype, gz)
    ours = run_reparam(kernels.reparameterize_kl, mu, logvar, eps, dtype, gz, backend="triton")
    for name, a, b, c in zip(("z", "kl", "dmu", "dlogvar"), ours, eager, expected):
        assert_error_rule(a, b, c, f"{name} {dtype}")


def test_opcheck_backward_ops():
    z, U, y, mask, bias = (t.float() for t in bce_inputs(6, 21, 5, "random", seed=18))
    torch.library.opcheck(torch.ops.dualvae.dual_bce_backward.default,
                          (torch.rand(6), z, U, y, mask, bias, 21, False, True, "triton"))
    mu, logvar, eps = (t.float() for t in reparam_inputs(5, 7, seed=19))
    torch.library.opcheck(torch.ops.dualvae.reparameterize_kl_backward.default,
                          (torch.randn(5, 7), torch.randn(5), mu, logvar, None, 3, 0, False, "triton"))
    torch.library.opcheck(torch.ops.dualvae.reparameterize_kl_backward.default,
                          (torch.randn(5, 7), torch.randn(5), mu, logvar, eps, 0, 0, True, "triton"))
