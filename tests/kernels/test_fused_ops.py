"""The fused backends against float64 references, each test once per backend (the `backend` fixture):
"triton" (CUDA tensors where there is a GPU, else CPU tensors under TRITON_INTERPRET=1: tests/conftest.py) and "cpu"
(the C++ kernels of kernels/csrc). Plus the public-API contract every backend shares: packed labels, bad input,
opcheck, torch.compile; and what only the C++ kernels promise: results independent of the thread count, the
baseline (non-AVX2) build agreeing with the AVX2 one, bf16/fp16 inputs on a CPU.

Error rule: ours is within max(1e-5, 4 x eager-fp32's error) of the float64 reference, for the loss and
every gradient, with error = max |x - ref| / max(1, max |ref|) (absolute near zero, relative for large values).
"""
import math
import os
import subprocess
import sys

import pytest
import torch

from dualvae import kernels
from dualvae.kernels import ops, reference as ref
from dualvae.kernels._jit import interpreting
from dualvae.kernels.dual_bce_triton import dual_bce_bwd, dual_bce_fwd
from dualvae.kernels.labels import LabelArgs

import kernel_cases
from kernel_cases import require_backend

INTERPRET = interpreting()  # tests/conftest.py has set TRITON_INTERPRET for this session
HAVE_TRITON = INTERPRET or torch.cuda.is_available()
needs_triton = pytest.mark.skipif(not HAVE_TRITON, reason="Triton needs CUDA or TRITON_INTERPRET=1")
needs_cpu_kernels = pytest.mark.skipif(not kernels.has_compiled_ops() and os.environ.get("DUALVAE_REQUIRE_EXT") != "1",
                                       reason="the C++ CPU kernels are not built")
# Interpreted kernels take CPU tensors; compiled ones CUDA tensors.
TRITON_DEVICE = "cpu" if INTERPRET else "cuda"
# What a GPU-only test needs: a CUDA device and the compiled kernels (not the interpreter).
needs_cuda_triton = pytest.mark.skipif(not torch.cuda.is_available() or INTERPRET,
                                       reason="needs CUDA and the compiled Triton kernels (TRITON_INTERPRET unset)")


@pytest.fixture(params=["triton", "cpu"])
def backend(request):
    """Each fused backend in turn."""
    return require_backend(request.param)


def device_of(backend):
    """The device a backend's tensors are built on."""
    return TRITON_DEVICE if backend == "triton" else "cpu"


def on(backend, *tensors):
    """tensors (None kept) as float32 on the backend's device."""
    return tuple(t.to(device_of(backend), torch.float32) if t is not None else None for t in tensors)


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
    """kernel_cases.bce_inputs with logits of about `scale` whatever d."""
    return kernel_cases.bce_inputs(B, n, d, mask_kind, seed=seed, scale=scale / math.sqrt(d))


def run_bce(fn, z, U, y, mask, bias, reduction, upstream, dtype, **kw):
    """(loss, dz, dU, db) of fn at `dtype` with the upstream gradient `upstream`, on `device` (default: the
    backend's)."""
    DEVICE = kw.pop("device", None) or device_of(kw.get("backend"))
    leaves = [t.detach().to(DEVICE, dtype).requires_grad_() for t in (z, U, bias) if t is not None]
    zz, UU = leaves[0], leaves[1]
    bb = leaves[2] if bias is not None else None
    yy = y.to(DEVICE, dtype)
    mm = mask.to(DEVICE, dtype) if mask is not None else None
    loss = fn(zz, UU, yy, mm, bias=bb, reduction=reduction, **kw)
    grads = torch.autograd.grad((loss.double() * upstream.to(DEVICE)).sum(), leaves)
    return [loss.cpu()] + [g.cpu() for g in grads]


def check_bce(B, n, d, mask_kind, with_bias, reduction, seed, scale=1.0, backend="triton", dtype=torch.float32):
    z, U, y, mask, bias = bce_inputs(B, n, d, mask_kind, seed=seed, scale=scale)
    bias = bias if with_bias else None
    shape = (B,) if reduction == "none" else ()
    upstream = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 1))
    expected = run_bce(ref.dual_bce, z, U, y, mask, bias, reduction, upstream, torch.float64)
    eager32 = run_bce(ref.dual_bce, z, U, y, mask, bias, reduction, upstream, dtype)
    ours = run_bce(kernels.dual_bce, z, U, y, mask, bias, reduction, upstream, dtype, backend=backend)
    assert ours[0].dtype == torch.float32 and ours[0].shape == shape
    for name, a, b, c in zip(("loss", "dz", "dU", "db"), ours, eager32, expected):
        assert torch.isfinite(a).all(), name
        assert_error_rule(a, b, c, f"{name} ({reduction}, mask {mask_kind}, B={B} n={n} d={d})")
    return ours


@pytest.mark.parametrize("mask_kind", ["none", "all_zero", "all_one", "random"])
@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
@pytest.mark.parametrize("B,n,d", [(1, 1, 1), (5, 3, 7), (37, 53, 20)])
def test_dual_bce_matches_float64(B, n, d, mask_kind, reduction, backend):
    check_bce(B, n, d, mask_kind, with_bias=(B + n) % 2 == 1, reduction=reduction, seed=B * 7 + n + d, backend=backend)


@pytest.mark.parametrize("with_bias", [False, True])
def test_dual_bce_odd_shape_several_tiles_every_way(with_bias, backend):
    # B, n, d not multiples of any block; several row and column tiles, d padded inside one tile
    check_bce(41, 70, 33, "random", with_bias, "none", seed=3, backend=backend)


def test_dual_bce_all_missing_mean_is_zero_with_zero_gradients(backend):
    loss, dz, dU = check_bce(9, 21, 5, "all_zero", False, "mean", seed=4, backend=backend)
    assert loss.item() == 0.0
    assert torch.count_nonzero(dz) == 0 and torch.count_nonzero(dU) == 0


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_dual_bce_extreme_logits(reduction, backend):
    # |logits| up to ~1e4 both ways: the log-sum-exp form must stay finite and exact
    ours = check_bce(12, 19, 8, "random", True, reduction, seed=6, scale=3e3, backend=backend)
    assert max(float(t.detach().abs().max()) for t in ours) > 1e3


@needs_triton
def test_dual_bce_split_reductions_agree():
    """Partial sums over splits of n (forward) and of B (backward) give what one split gives."""
    z, U, y, mask, bias = on("triton", *bce_inputs(50, 70, 24, "random", seed=8))
    args = LabelArgs(y, "dense", mask=mask)
    one = dual_bce_fwd(z, U, args, bias, 70, True, splits=1)
    three = dual_bce_fwd(z, U, args, bias, 70, True, splits=3)
    for a, b in zip(one[:3], three[:3]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-5)
    assert int(one[3]) == int(three[3]) == 0
    gs = torch.rand(50, device=TRITON_DEVICE)
    for a, b in zip(dual_bce_bwd(gs, z, U, args, bias, 70, True, splits=1),
                    dual_bce_bwd(gs, z, U, args, bias, 70, True, splits=4)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-5)


def test_dual_bce_bool_and_uint8_labels_and_masks(backend):
    z, U, y, mask, _ = on(backend, *bce_inputs(6, 9, 4, "random", seed=9))
    want = kernels.dual_bce(z, U, y, mask, backend=backend)
    assert kernels.dual_bce(z, U, y.bool(), mask.bool(), backend=backend).item() == want.item()
    assert kernels.dual_bce(z, U, y.to(torch.uint8), mask.to(torch.uint8), backend=backend).item() == want.item()


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
def test_packed_labels_give_identical_results(reduction, backend):
    z, U, y, mask, bias = on(backend, *bce_inputs(23, 45, 12, "random", seed=10))
    packed = kernels.pack_labels(y, mask)
    outs = []
    for labels, m in ((y, mask), (packed, None)):
        zz, UU, bb = (t.clone().requires_grad_() for t in (z, U, bias))
        loss = kernels.dual_bce(zz, UU, labels, m, bias=bb, reduction=reduction, backend=backend)
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
    DEVICE = device_of(kw.get("backend"))
    m, lv = (t.detach().to(DEVICE, dtype).requires_grad_() for t in (mu, logvar))
    z, kl = fn(m, lv, eps.to(DEVICE, dtype) if eps is not None else None, **kw)
    gz, gk = upstream
    dm, dl = torch.autograd.grad((z.double() * gz.to(DEVICE)).sum() + (kl.double() * gk.to(DEVICE)).sum(), (m, lv))
    return [t.detach().cpu() for t in (z, kl, dm, dl)]


@pytest.mark.parametrize("B,d", [(1, 1), (7, 13), (33, 100), (9, 300)])
def test_reparameterize_kl_matches_float64(B, d, backend):
    mu, logvar, eps = reparam_inputs(B, d, seed=B + d)
    g = torch.Generator().manual_seed(1)
    upstream = (torch.randn(B, d, generator=g, dtype=torch.float64), torch.randn(B, generator=g, dtype=torch.float64))
    expected = run_reparam(ref.reparameterize_kl, mu, logvar, eps, torch.float64, upstream)
    eager32 = run_reparam(ref.reparameterize_kl, mu, logvar, eps, torch.float32, upstream)
    ours = run_reparam(kernels.reparameterize_kl, mu, logvar, eps, torch.float32, upstream, backend=backend)
    assert ours[0].dtype == torch.float32 and ours[1].shape == (B,)
    for name, a, b, c in zip(("z", "kl", "dmu", "dlogvar"), ours, eager32, expected):
        assert_error_rule(a, b, c, f"{name} (B={B} d={d})")


def test_reparameterize_kl_eps_gradient(backend):
    mu, logvar, eps = on(backend, *reparam_inputs(5, 6, seed=2))
    e = eps.clone().requires_grad_()
    z, _ = kernels.reparameterize_kl(mu, logvar, e, backend=backend)
    z.sum().backward()
    torch.testing.assert_close(e.grad, torch.exp(0.5 * logvar))


def test_in_kernel_eps_is_standard_normal_and_seeded(backend):
    mu = torch.zeros(64, 256, device=device_of(backend))
    z, kl = kernels.reparameterize_kl(mu, torch.zeros_like(mu), seed=1234, backend=backend)  # z == eps
    assert abs(z.mean().item()) < 0.03 and abs(z.std().item() - 1) < 0.03
    assert abs((z > 0).float().mean().item() - 0.5) < 0.02 and torch.count_nonzero(kl) == 0
    again, _ = kernels.reparameterize_kl(mu, torch.zeros_like(mu), seed=1234, backend=backend)
    other, _ = kernels.reparameterize_kl(mu, torch.zeros_like(mu), seed=1235, backend=backend)
    assert torch.equal(z, again) and not torch.allclose(z, other)
    # offset k moves the stream by k elements (row-major): row 1 at offset 0 is row 0 at offset 256
    shifted, _ = kernels.reparameterize_kl(mu[:1], torch.zeros_like(mu[:1]), seed=1234, offset=256, backend=backend)
    assert torch.equal(shifted[0], z[1])
    # the reference draws the very same numbers (Philox in torch ops)
    expected = ref.philox_randn(1234, 0, (64, 256))
    torch.testing.assert_close(z.cpu(), expected, rtol=0, atol=2e-6)
    torch.testing.assert_close(kernels.reparameterize_kl(mu.cpu(), mu.cpu(), seed=1234, backend="reference")[0],
                               expected, rtol=0, atol=0)


def test_backward_regenerates_the_forward_eps(backend):
    mu, logvar, _ = on(backend, *reparam_inputs(19, 37, seed=3))
    m, lv = mu.clone().requires_grad_(), logvar.clone().requires_grad_()
    z, kl = kernels.reparameterize_kl(m, lv, seed=99, offset=5, backend=backend)
    gz = torch.randn_like(z)
    gk = torch.randn_like(kl)
    dm, dl = torch.autograd.grad((z * gz).sum() + (kl * gk).sum(), (m, lv))
    std = torch.exp(0.5 * logvar)
    eps = (z.detach() - mu) / std  # the eps the forward used
    torch.testing.assert_close(eps, ref.philox_randn(99, 5, (19, 37), device=mu.device), rtol=0, atol=1e-4)
    torch.testing.assert_close(dm, gz + gk[:, None] * mu)
    torch.testing.assert_close(dl, 0.5 * (gz * eps * std + gk[:, None] * (logvar.exp() - 1)), rtol=1e-4, atol=1e-4)


def test_seeded_backends_agree(backend):
    mu, logvar, _ = on(backend, *reparam_inputs(11, 29, seed=4))
    a = kernels.reparameterize_kl(mu, logvar, seed=7, backend=backend)
    b = kernels.reparameterize_kl(mu, logvar, seed=7, backend="reference")
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# the contract: bad input, non-contiguous input, backends, opcheck, torch.compile
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["triton", "reference", "auto", "cpu"])
def test_bad_input_raises_value_error_naming_the_argument(backend):
    if backend == "triton" and not HAVE_TRITON:
        pytest.skip("Triton needs CUDA or TRITON_INTERPRET=1")
    z, U, y, mask, bias = on(backend, *bce_inputs(4, 5, 3, "random", seed=0))
    dev = z.device
    bce = lambda *a, **k: kernels.dual_bce(*a, backend=backend, **k)  # noqa: E731
    cases = [
        (lambda: bce(z, U, torch.zeros(4, 6, device=dev)), r"y has shape \(4, 6\), expected \(4, 5\)"),
        (lambda: bce(z, torch.zeros(5, 4, device=dev), y), "U has shape"),
        (lambda: bce(z, U, y, mask[:, :2]), "mask has shape"),
        (lambda: bce(z, U, y, bias=torch.zeros(4, device=dev)), "bias has shape"),
        (lambda: bce(z.long(), U, y), "z must be a floating tensor"),
        (lambda: bce(z, U.int(), y), "U must be a floating tensor"),
        (lambda: bce(z, U, y * 2 - 1), r"labels in \{0, 1\}"),
        (lambda: bce(z, U, y, reduction="avg"), "reduction"),
        (lambda: bce(z, U.to("meta"), y), "one device"),
        (lambda: bce(z, U, kernels.pack_labels(y), mask), "mask must be None"),
        (lambda: bce(z, U, kernels.pack_labels(y[:, :3])), "packed y"),
    ]
    mu = torch.zeros(3, 4, device=dev)
    rk = lambda *a, **k: kernels.reparameterize_kl(*a, backend=backend, **k)  # noqa: E731
    cases += [
        (lambda: rk(mu, torch.zeros(3, 5, device=dev)), "logvar has shape"),
        (lambda: rk(mu.long(), mu), "mu must be a floating tensor"),
        (lambda: rk(mu, mu, torch.zeros(4, 3, device=dev)), "eps has shape"),
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
    if HAVE_TRITON:
        zt = z.to(TRITON_DEVICE)
        with pytest.raises(ValueError, match="backend 'triton' takes float32"):
            kernels.reparameterize_kl(zt, zt, backend="triton")
    with pytest.raises(ValueError, match="backend 'cpu' takes float32"):
        kernels.reparameterize_kl(z, z, backend="cpu")
    # auto runs float64 on the reference
    assert kernels.reparameterize_kl(z, z, seed=0)[0].dtype == torch.float64


def _strided(t, kind):
    """t's values in a non-contiguous layout: a transposed copy (column-major) or a slice of a wider tensor."""
    if kind == "transposed":
        out = t.t().contiguous().t()
    else:
        wide = torch.full((t.shape[0], t.shape[1] * 2 + 3), 7.0, dtype=t.dtype, device=t.device)
        out = wide[:, 1:: 2][:, : t.shape[1]]
        out.copy_(t)
    assert not out.is_contiguous() and torch.equal(out, t)
    return out


@pytest.mark.parametrize("kind", ["transposed", "sliced"])
def test_non_contiguous_inputs_give_the_contiguous_results(kind, backend):
    """Values and gradients of strided z, U, labels, mask, bias, mu, logvar, eps equal the contiguous ones."""
    z, U, y, mask, bias = on(backend, *bce_inputs(10, 37, 6, "random", seed=12))
    for reduction in ("mean", "none"):
        results = []
        for strided in (False, True):
            layout = (lambda t: _strided(t, kind)) if strided else (lambda t: t)
            leaves = [layout(t.clone()).requires_grad_() for t in (z, U)]
            b = torch.zeros(2 * bias.shape[0], device=bias.device)[::2].copy_(bias) if strided else bias.clone()
            b.requires_grad_()
            loss = kernels.dual_bce(*leaves, layout(y), layout(mask), bias=b, reduction=reduction, backend=backend)
            grads = torch.autograd.grad((loss * torch.linspace(0.5, 1.5, loss.numel(), device=loss.device)).sum(),
                                        [*leaves, b])
            results.append([loss, *grads])
        for a, c in zip(*results):
            torch.testing.assert_close(a, c, rtol=1e-6, atol=1e-6)
    packed = kernels.pack_labels(y, mask)
    words = _strided(packed.words, kind) if packed.words.shape[1] > 1 else packed.words
    torch.testing.assert_close(kernels.dual_bce(z, U, kernels.PackedLabels(words, packed.n), backend=backend),
                               kernels.dual_bce(z, U, packed, backend=backend), rtol=1e-6, atol=1e-6)

    mu, logvar, eps = on(backend, *reparam_inputs(9, 13, seed=47))
    for eps_arg in (eps, None):
        results = []
        for layout in (lambda t: t, lambda t: _strided(t, kind)):
            leaves = [layout(t.clone()).requires_grad_() for t in (mu, logvar)]
            e = layout(eps_arg.clone()).requires_grad_() if eps_arg is not None else None
            zz, kl = kernels.reparameterize_kl(*leaves, e, seed=3, backend=backend)
            # the upstream gradients are strided too (a transposed dz, an expanded dkl)
            wz = layout(torch.randn(zz.shape, generator=torch.Generator().manual_seed(4)).to(zz.device))
            grads = torch.autograd.grad((zz * wz).sum() + kl.sum(), leaves + ([e] if e is not None else []))
            results.append([zz, kl, *grads])
        for a, c in zip(*results):
            torch.testing.assert_close(a, c, rtol=1e-6, atol=1e-6)


def test_auto_backend_choice():
    cpu = torch.device("cpu")
    expected = "cpu" if kernels.has_compiled_ops() else "reference"
    assert kernels.resolve_backend("auto", device=cpu, dtype=torch.float32) == expected
    assert kernels.resolve_backend(device="cpu") == expected  # "auto" and float32 by default, a device string
    assert kernels.resolve_backend(kernels.Backend.AUTO, device=cpu, dtype=torch.bfloat16) == expected
    assert kernels.resolve_backend("auto", device=cpu, dtype=torch.float64) == "reference"
    assert kernels.resolve_backend("auto", device=torch.device("cuda"), dtype=torch.float32) == "triton"
    assert kernels.resolve_backend("auto", device=torch.device("meta"), dtype=torch.float32) == "reference"
    assert kernels.resolve_backend("reference", device="cuda") == "reference"
    assert kernels.BACKENDS == tuple(b.value for b in kernels.Backend)
    assert ops._resolve_backend("x", "auto", cpu, torch.float32) == expected


def test_resolve_backend_errors_name_the_problem(monkeypatch):
    with pytest.raises(ValueError, match=r"resolve_backend: backend must be one of .* got 'cuda'"):
        kernels.resolve_backend("cuda", device="cpu")
    with pytest.raises(ValueError, match=r"backend 'cpu' needs CPU tensors, got tensors on cuda"):
        kernels.resolve_backend("cpu", device="cuda")
    with pytest.raises(ValueError, match=r"backend 'cpu' takes float32, bfloat16 or float16 inputs"):
        kernels.resolve_backend("cpu", device="cpu", dtype=torch.float64)
    with pytest.raises(ValueError, match=r"backend 'triton' takes float32.*got torch.float64"):
        kernels.resolve_backend("triton", device="cuda", dtype=torch.float64)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # read at the call: CPU tensors are now refused
    with pytest.raises(ValueError, match=r"backend 'triton' needs CUDA tensors \(or TRITON_INTERPRET=1"):
        kernels.resolve_backend("triton", device="cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert kernels.resolve_backend("triton", device="cpu") == "triton"


def test_auto_on_cuda_without_triton_is_the_reference(monkeypatch):
    monkeypatch.setattr(ops, "TRITON_AVAILABLE", False)  # as where triton is not installed
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        assert ops._resolve_backend("x", "auto", torch.device("cuda", 1), dtype) == "reference"
    with pytest.raises(ValueError, match="backend 'triton' needs the triton package"):
        ops._resolve_backend("x", "triton", torch.device("cuda"), torch.float32)
    # and the ops run: a CPU stand-in for the CUDA tensors shows the reference path end to end
    z, U, y, mask, bias = on("cpu", *bce_inputs(6, 9, 4, "random", seed=30))
    monkeypatch.setattr(ops, "_resolve_backend", lambda op, b, d, t: "reference")
    torch.testing.assert_close(kernels.dual_bce(z, U, y, mask, bias=bias), ref.dual_bce(z, U, y, mask, bias=bias))


@pytest.mark.gpu
@needs_cuda_triton
def test_auto_on_cuda_without_triton_runs_the_reference_on_the_gpu(monkeypatch):
    monkeypatch.setattr(ops, "TRITON_AVAILABLE", False)
    z, U, y, mask, bias = (t.float().cuda() for t in bce_inputs(37, 53, 20, "random", seed=31))
    got = kernels.dual_bce(z, U, y, mask, bias=bias)
    assert got.device.type == "cuda"
    torch.testing.assert_close(got, ref.dual_bce(z, U, y, mask, bias=bias))
    mu, logvar, eps = (t.float().cuda() for t in reparam_inputs(7, 13, seed=32))
    for a, b in zip(kernels.reparameterize_kl(mu, logvar, eps), ref.reparameterize_kl(mu, logvar, eps)):
        torch.testing.assert_close(a, b)


def test_label_check_can_be_turned_off_and_is_skipped_while_capturing(backend, monkeypatch):
    z, U, y, mask, _ = on(backend, *bce_inputs(4, 5, 3, "random", seed=33))
    bad = y * 2 - 1
    with pytest.raises(ValueError, match=r"got \d+ values outside it"):
        kernels.dual_bce(z, U, bad, mask, backend=backend)
    assert torch.isfinite(kernels.dual_bce(z, U, bad, mask, backend=backend, check_labels=False))
    # as while a CUDA graph is captured, where the count cannot be read back
    monkeypatch.setattr(ops, "_may_read_back", lambda t: False)
    assert torch.isfinite(kernels.dual_bce(z, U, bad, mask, backend=backend))
    monkeypatch.undo()
    with pytest.raises(ValueError, match="outside"):  # packing checks the labels itself
        kernels.pack_labels(bad)


def test_opcheck_passes(backend):
    z, U, y, mask, bias = on(backend, *bce_inputs(6, 21, 5, "random", seed=13))
    packed = kernels.pack_labels(y, mask)
    args_list = [
        # (z, U, labels, mask, bias, n, label_kind, indptr, mask_rows, mask_key, mask_threshold, mask_col_offset,
        #  reduction, need_dz, grads_in_fwd, need_csc, backend, check_labels)
        (z.requires_grad_(), U.requires_grad_(), y, mask, bias.requires_grad_(), 21, "dense", None, None, 0, 0, 0,
         "mean", True, backend == "cpu", False, backend, True),
        (z, U, packed.words, None, None, 21, "packed", None, None, 0, 0, 0, "none", True, False, False, backend, False),
    ]
    for args in args_list:
        torch.library.opcheck(torch.ops.dualvae.dual_bce.default, args)
    mu, logvar, eps = (t.requires_grad_() for t in on(backend, *reparam_inputs(5, 7, seed=14)))
    torch.library.opcheck(torch.ops.dualvae.reparameterize_kl.default, (mu, logvar, None, 5, 0, backend))
    torch.library.opcheck(torch.ops.dualvae.reparameterize_kl.default, (mu, logvar, eps, 0, 0, backend))


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph_calls_both_ops(compiler, backend):
    torch._dynamo.reset()
    mu, logvar, _ = on(backend, *reparam_inputs(8, 6, seed=15))
    _, U, y, mask, bias = on(backend, *bce_inputs(8, 11, 6, "random", seed=15))

    def step(mu, logvar, U, bias):
        z, kl = kernels.reparameterize_kl(mu, logvar, seed=21, backend=backend)
        return kernels.dual_bce(z, U, y, mask, bias=bias, reduction="mean", backend=backend) + kl.mean()

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
@needs_cuda_triton  # the interpreter has no bf16 tl.dot: this must run compiled, on CUDA tensors
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_on_gpu(dtype):
    assert TRITON_DEVICE == "cuda"
    z, U, y, mask, bias = bce_inputs(300, 1000, 128, "random", seed=16)
    upstream = torch.tensor(1.0, dtype=torch.float64)
    expected = run_bce(ref.dual_bce, z, U, y, mask, bias, "sum", upstream, torch.float64)
    eager = run_bce(ref.dual_bce, z, U, y, mask, bias, "sum", upstream, dtype, device="cuda")
    ours = run_bce(kernels.dual_bce, z, U, y, mask, bias, "sum", upstream, dtype, backend="triton")
    assert ours[0].dtype == torch.float32 and ours[1].dtype == dtype
    for name, a, b, c in zip(("loss", "dz", "dU", "db"), ours, eager, expected):
        assert_error_rule(a, b, c, f"{name} {dtype}")
    mu, logvar, eps = reparam_inputs(300, 128, seed=17)
    gz = (torch.randn(300, 128, dtype=torch.float64), torch.randn(300, dtype=torch.float64))
    expected = run_reparam(ref.reparameterize_kl, mu, logvar, eps, torch.float64, gz)
    eager = run_reparam(ref.reparameterize_kl, mu, logvar, eps, dtype, gz, device="cuda")
    ours = run_reparam(kernels.reparameterize_kl, mu, logvar, eps, dtype, gz, backend="triton")
    for name, a, b, c in zip(("z", "kl", "dmu", "dlogvar"), ours, eager, expected):
        assert_error_rule(a, b, c, f"{name} {dtype}")


def _bce_step(z, U, y, mask, bias, **kw):
    """(loss, dz, dU, db) of one dual_bce forward and backward."""
    loss = kernels.dual_bce(z, U, y, mask, bias=bias, reduction="mean", backend="triton", **kw)
    return (loss, *torch.autograd.grad(loss, (z, U, bias)))


@pytest.mark.gpu
@needs_cuda_triton
def test_dual_bce_is_captured_by_a_cuda_graph():
    """Forward and backward record into a CUDA graph (no host sync inside) and its replays recompute them for
    new inputs: what torch.compile(mode="reduce-overhead") needs."""
    z, U, y, mask, bias = (t.float().cuda() for t in bce_inputs(64, 300, 32, "random", seed=40))
    z, U, bias = (t.requires_grad_() for t in (z, U, bias))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up (compiles the kernels) off the capture
        for _ in range(2):
            _bce_step(z, U, y, mask, bias)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = _bce_step(z, U, y, mask, bias)
    z2, U2, y2, mask2, bias2 = (t.float().cuda() for t in bce_inputs(64, 300, 32, "random", seed=41))
    with torch.no_grad():
        for dst, src in ((z, z2), (U, U2), (y, y2), (mask, mask2), (bias, bias2)):
            dst.copy_(src)
    graph.replay()
    z2, U2, bias2 = (t.requires_grad_() for t in (z2, U2, bias2))
    want = _bce_step(z2, U2, y2, mask2, bias2)
    for a, b in zip(static, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
@needs_cuda_triton
def test_dual_bce_under_reduce_overhead_compile():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    z, U, y, mask, bias = (t.float().cuda() for t in bce_inputs(64, 300, 32, "random", seed=42))

    def loss_fn(z, U, bias):
        return kernels.dual_bce(z, U, y, mask, bias=bias, reduction="mean", backend="triton")

    counters.clear()
    compiled = torch.compile(loss_fn, mode="reduce-overhead", fullgraph=True)
    for _ in range(4):  # warm-up runs, the capture, then replays
        got = compiled(z, U, bias).clone()
    assert not counters["inductor"]["cudagraph_skips"], dict(counters["inductor"])
    torch.testing.assert_close(got, loss_fn(z, U, bias), rtol=1e-5, atol=1e-6)
    # the eager check still names bad labels on CUDA
    with pytest.raises(ValueError, match="values outside it"):
        kernels.dual_bce(z, U, y * 2 - 1, mask, backend="triton")


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2 or INTERPRET,
                    reason="needs 2 CUDA devices and the compiled Triton kernels")
def test_triton_launches_on_the_tensors_device():
    """cuda:1 tensors while cuda:0 is current give what the same tensors give on cuda:0."""
    results = {}
    for dev in ("cuda:0", "cuda:1"):
        torch.cuda.set_device(0)
        z, U, y, mask, bias = (t.float().to(dev) for t in bce_inputs(37, 53, 20, "random", seed=43))
        z, U, bias = (t.requires_grad_() for t in (z, U, bias))
        mu, logvar = (t.float().to(dev).requires_grad_() for t in reparam_inputs(9, 300, seed=44)[:2])
        zz, kl = kernels.reparameterize_kl(mu, logvar, seed=5, backend="triton")
        out = [*_bce_step(z, U, y, mask, bias), zz, kl,
               *torch.autograd.grad((zz.sum() + kl.sum()), (mu, logvar))]
        torch.cuda.synchronize(dev)
        assert all(t.device == torch.device(dev) for t in out)
        results[dev] = [t.detach().cpu() for t in out]
    for a, b in zip(results["cuda:0"], results["cuda:1"]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_opcheck_backward_ops(backend):
    z, U, y, mask, bias = on(backend, *bce_inputs(6, 21, 5, "random", seed=18))
    dev = z.device
    torch.library.opcheck(torch.ops.dualvae.dual_bce_backward.default,
                          (torch.rand(6, device=dev), z, U, y, mask, bias, 21, "dense", None, None, 0, 0, 0, None, None,
                           True, backend))
    mu, logvar, eps = on(backend, *reparam_inputs(5, 7, seed=19))
    torch.library.opcheck(torch.ops.dualvae.reparameterize_kl_backward.default,
                          (torch.randn(5, 7, device=dev), torch.randn(5, device=dev), mu, logvar, None, 3, 0, False,
                           backend))
    torch.library.opcheck(torch.ops.dualvae.reparameterize_kl_backward.default,
                          (torch.randn(5, 7, device=dev), torch.randn(5, device=dev), mu, logvar, eps, 0, 0, True,
                           backend))


# ---------------------------------------------------------------------------------------------------------
# the C++ CPU kernels only
# ---------------------------------------------------------------------------------------------------------
@needs_cpu_kernels
def test_opcheck_cpu_kernel_ops():
    z, U, y, mask, bias = (t.float() for t in bce_inputs(6, 21, 5, "random", seed=20))
    packed = kernels.pack_labels(y, mask)
    op = torch.ops.dualvae.dual_bce_cpu.default
    torch.library.opcheck(op, (z, U, y, mask, bias, None, 21, "dense", None, None, 0, 0, 0, True, True, True, True))
    torch.library.opcheck(op, (z, U, packed.words, None, None, torch.rand(6), 21, "packed", None, None, 0, 0, 0, False,
                               False, True, False))
    mu, logvar, eps = (t.float() for t in reparam_inputs(5, 7, seed=21))
    torch.library.opcheck(torch.ops.dualvae.reparameterize_kl_cpu.default, (mu, logvar, None, 5, 3))
    torch.library.opcheck(torch.ops.dualvae.reparameterize_kl_backward_cpu.default,
                          (torch.randn(5, 7), torch.randn(5), mu, logvar, eps, 0, 0, True))


def cpu_results(B, n, d, seed, reduction="sum", labels="float", threads=None):
    """(loss, dz, dU, db) of backend "cpu" with `threads` intra-op threads."""
    z, U, y, mask, bias = (t.float() for t in bce_inputs(B, n, d, "random", seed=seed))
    if labels == "packed":
        y, mask = kernels.pack_labels(y, mask), None
    before = torch.get_num_threads()
    try:
        if threads:
            torch.set_num_threads(threads)
        zz, UU, bb = (t.clone().requires_grad_() for t in (z, U, bias))
        loss = kernels.dual_bce(zz, UU, y, mask, bias=bb, reduction=reduction, backend="cpu")
        loss.sum().backward()
    finally:
        torch.set_num_threads(before)
    return [loss.detach(), zz.grad, UU.grad, bb.grad]


@needs_cpu_kernels
@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_cpu_results_do_not_depend_on_the_thread_count(reduction):
    # 600 x 3000: 3 x 12 tiles of 256 x 256, cut into several work items; every thread count sums them in the
    # same order, so the results are bit for bit equal (1e-6 relative would do).
    one = cpu_results(600, 3000, 40, seed=22, reduction=reduction, threads=1)
    for threads in (2, 3, 5):
        for a, b in zip(cpu_results(600, 3000, 40, seed=22, reduction=reduction, threads=threads), one):
            assert torch.equal(a, b), f"{threads} threads: max difference {float((a - b).abs().max()):.3g}"


@needs_cpu_kernels
@pytest.mark.parametrize("B,n,d", [(600, 3000, 40), (257, 513, 129), (3, 70000, 16), (1100, 1, 7)])
def test_cpu_many_tiles_match_float64(B, n, d):
    # several row and column tiles, partial tiles at both edges, d above 128, one label column, long rows
    check_bce(B, n, d, "random", True, "sum", seed=B + n, backend="cpu")
    check_bce(B, n, d, "random", False, "none", seed=B + n + 1, backend="cpu")


@needs_cpu_kernels
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_half_precision_inputs(dtype):
    check_bce(70, 300, 64, "random", True, "sum", seed=23, backend="cpu", dtype=dtype)
    mu, logvar, eps = reparam_inputs(33, 64, seed=24)
    g = torch.Generator().manual_seed(2)
    upstream = (torch.randn(33, 64, generator=g, dtype=torch.float64),
                torch.randn(33, generator=g, dtype=torch.float64))
    expected = run_reparam(ref.reparameterize_kl, mu, logvar, eps, torch.float64, upstream)
    eager = run_reparam(ref.reparameterize_kl, mu, logvar, eps, dtype, upstream)
    ours = run_reparam(kernels.reparameterize_kl, mu, logvar, eps, dtype, upstream, backend="cpu")
    assert ours[0].dtype == dtype and ours[1].dtype == torch.float32
    for name, a, b, c in zip(("z", "kl", "dmu", "dlogvar"), ours, eager, expected):
        assert_error_rule(a, b, c, f"{name} {dtype}")


@needs_cpu_kernels
def test_cpu_packed_labels_on_many_tiles():
    for a, b in zip(cpu_results(300, 700, 24, seed=25, labels="packed"), cpu_results(300, 700, 24, seed=25)):
        assert torch.equal(a, b)


def cpu_build_outputs(isa):
    """What the kernel build `isa` computes (it must be the one running: kernels.cpu_isa()), each output also
    checked against float64 (check_bce / assert_error_rule): rows not a multiple of 16 lanes, masks, packed
    labels, reparameterize_kl with a given and a seeded eps."""
    assert kernels.cpu_isa() == isa, (kernels.cpu_isa(), isa)
    out = list(check_bce(300, 700, 24, "random", True, "sum", seed=26, backend="cpu"))
    out += check_bce(45, 1000, 37, "random", False, "none", seed=27, backend="cpu")
    out += cpu_results(67, 333, 19, seed=28, labels="packed")
    mu, logvar, eps = reparam_inputs(29, 37, seed=29)
    g = torch.Generator().manual_seed(3)
    upstream = tuple(torch.randn(shape, generator=g, dtype=torch.float64) for shape in ((29, 37), (29,)))
    expected = run_reparam(ref.reparameterize_kl, mu, logvar, eps, torch.float64, upstream)
    eager32 = run_reparam(ref.reparameterize_kl, mu, logvar, eps, torch.float32, upstream)
    ours = run_reparam(kernels.reparameterize_kl, mu, logvar, eps, torch.float32, upstream, backend="cpu")
    for name, a, b, c in zip(("z", "kl", "dmu", "dlogvar"), ours, eager32, expected):
        assert_error_rule(a, b, c, f"{isa}: reparameterize_kl {name}")
    out += ours
    out.append(kernels.reparameterize_kl(mu.float(), logvar.float(), seed=7, backend="cpu")[0])
    return out


_CPU_BUILD_NEEDS = {"default": (), "avx2": ("avx2", "fma", "f16c"),
                    "avx512": ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq")}


def _skip_unless_cpu_runs(isa):
    from dualvae.sysinfo import cpu_isa
    missing = [f for f in _CPU_BUILD_NEEDS[isa] if f not in cpu_isa()]
    if missing:
        pytest.skip(f"this CPU lacks {', '.join(missing)}: the {isa} kernels cannot run here")


@pytest.fixture(scope="module")
def cpu_build_results(tmp_path_factory):
    """cpu_build_results(isa): cpu_build_outputs(isa), computed once; in a subprocess with DUALVAE_CPU_ISA=isa
    unless it is the build this process runs (the library reads the variable once per process)."""
    here, cache = os.path.dirname(os.path.abspath(__file__)), {}
    code = ("import sys, torch; sys.path.insert(0, sys.argv[1]); import test_fused_ops as t; "
            "torch.save(t.cpu_build_outputs(sys.argv[3]), sys.argv[2])")

    def results(isa):
        if isa in cache:
            return cache[isa]
        if kernels.cpu_isa() == isa:
            cache[isa] = cpu_build_outputs(isa)
            return cache[isa]
        path = str(tmp_path_factory.mktemp("cpu_isa") / f"{isa}.pt")
        env = dict(os.environ, DUALVAE_CPU_ISA=isa)
        run = subprocess.run([sys.executable, "-c", code, here, path, isa], env=env, capture_output=True, text=True,
                             timeout=300)
        assert run.returncode == 0, f"DUALVAE_CPU_ISA={isa}: {run.stderr[-3000:]}"
        cache[isa] = torch.load(path)
        return cache[isa]
    return results


@needs_cpu_kernels
@pytest.mark.parametrize("isa,other", [("avx2", "default"), ("avx512", "default"), ("avx512", "avx2")])
def test_cpu_kernel_builds_agree(isa, other, cpu_build_results):
    """Each build matches float64 (checked inside the run) and the other builds: what a CPU with less gets."""
    _skip_unless_cpu_runs(isa)
    _skip_unless_cpu_runs(other)
    for i, (a, b) in enumerate(zip(cpu_build_results(isa), cpu_build_results(other), strict=True)):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=1e-5, msg=lambda m: f"{isa} vs {other}, output {i}: {m}")


@needs_cpu_kernels
def test_cpu_isa_is_the_widest_build_this_cpu_runs():
    if os.environ.get("DUALVAE_CPU_ISA"):
        pytest.skip(f"DUALVAE_CPU_ISA={os.environ['DUALVAE_CPU_ISA']} is set for this run")
    from dualvae.sysinfo import cpu_isa
    flags = set(cpu_isa())
    widest = next(isa for isa in ("avx512", "avx2", "default") if set(_CPU_BUILD_NEEDS[isa]) <= flags)
    assert kernels.cpu_isa() == widest


@needs_cpu_kernels
def test_cpu_isa_env_var_rejects_an_unknown_build():
    code = "import dualvae.kernels as k; k.cpu_isa()"
    env = dict(os.environ, DUALVAE_CPU_ISA="avx1024")
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert "DUALVAE_CPU_ISA='avx1024': expected one of default, avx2, avx512" in run.stderr, run.stderr[-2000:]

