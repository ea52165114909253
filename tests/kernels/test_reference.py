"""The pure-PyTorch references against float64 formulas written out independently."""
import math

import pytest
import torch

from dualvae import kernels
from dualvae.kernels import reference as ref

from kernel_cases import bce_inputs


def kl_formula(mu, logvar):
    # KL(N(m, s^2) || N(0, 1)) = log(1/s) + (s^2 + m^2)/2 - 1/2, summed over dimensions
    s2 = logvar.exp()
    return (-0.5 * logvar + 0.5 * (s2 + mu**2) - 0.5).sum(1)


def bce_formula(z, U, y, mask, bias):
    """Elementwise -[y log p + (1-y) log(1-p)] in float64 with log p = -log(1+exp(-l)) done by hand."""
    logits = z.double() @ U.double().t()
    if bias is not None:
        logits = logits + bias.double()
    log_p = -torch.log1p(torch.exp(-logits.abs())) + torch.minimum(logits, torch.zeros_like(logits))
    log_1mp = log_p - logits
    out = -(y.double() * log_p + (1 - y.double()) * log_1mp)
    return out * (mask.double() if mask is not None else 1.0)


@pytest.mark.parametrize("B,d", [(1, 1), (7, 13), (33, 128)])
def test_reparameterize_kl_matches_formula(B, d):
    g = torch.Generator().manual_seed(B * 1000 + d)
    mu = torch.randn(B, d, generator=g, dtype=torch.float64) * 2
    logvar = torch.randn(B, d, generator=g, dtype=torch.float64)
    eps = torch.randn(B, d, generator=g, dtype=torch.float64)
    z, kl = ref.reparameterize_kl(mu, logvar, eps)
    torch.testing.assert_close(z, mu + torch.sqrt(logvar.exp()) * eps)
    torch.testing.assert_close(kl, kl_formula(mu, logvar))
    assert kl.shape == (B,) and bool((kl >= 0).all())


def test_reparameterize_kl_gradients_match_formula():
    g = torch.Generator().manual_seed(1)
    mu = torch.randn(5, 9, generator=g, dtype=torch.float64, requires_grad=True)
    logvar = torch.randn(5, 9, generator=g, dtype=torch.float64, requires_grad=True)
    eps = torch.randn(5, 9, generator=g, dtype=torch.float64)
    z, kl = ref.reparameterize_kl(mu, logvar, eps)
    (z.sum() + kl.sum()).backward()
    # d/dmu: 1 + mu ; d/dlogvar: eps*exp(logvar/2)/2 + (exp(logvar) - 1)/2
    torch.testing.assert_close(mu.grad, 1 + mu.detach())
    lv = logvar.detach()
    torch.testing.assert_close(logvar.grad, eps * torch.exp(lv / 2) / 2 + (lv.exp() - 1) / 2)
    assert torch.autograd.gradcheck(lambda m, l: ref.reparameterize_kl(m, l, eps), (mu, logvar))


def test_reparameterize_kl_seed_is_deterministic_and_matters():
    mu, logvar = torch.zeros(4, 6), torch.zeros(4, 6)
    z1, _ = ref.reparameterize_kl(mu, logvar, seed=3)
    z2, _ = ref.reparameterize_kl(mu, logvar, seed=3)
    z3, _ = ref.reparameterize_kl(mu, logvar, seed=4)
    assert torch.equal(z1, z2) and not torch.equal(z1, z3)


def test_reparameterize_kl_bad_input():
    mu = torch.zeros(3, 4)
    with pytest.raises(ValueError, match="logvar has shape"):
        ref.reparameterize_kl(mu, torch.zeros(3, 5))
    with pytest.raises(ValueError, match="mu must be a floating tensor"):
        ref.reparameterize_kl(torch.zeros(3, 4, dtype=torch.long), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="eps has shape"):
        ref.reparameterize_kl(mu, mu, torch.zeros(4, 3))
    with pytest.raises(ValueError, match="seed must be a finite integer"):
        ref.reparameterize_kl(mu, mu, seed=float("nan"))
    with pytest.raises(ValueError, match="seed must be an int"):
        ref.reparameterize_kl(mu, mu, seed=2.5)


MASKS = ["none", "all_zero", "all_one", "random"]


def _inputs(B, n, d, mask_kind, scale=1.0, seed=0):
    return bce_inputs(B, n, d, mask_kind, seed=seed, scale=scale)


@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("B,n,d", [(1, 1, 1), (5, 3, 7), (17, 40, 32)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_dual_bce_matches_formula(B, n, d, mask_kind, with_bias):
    z, U, y, mask, bias = _inputs(B, n, d, mask_kind, seed=B + n + d)
    bias = bias if with_bias else None
    expected = bce_formula(z, U, y, mask, bias)
    torch.testing.assert_close(ref.dual_bce(z, U, y, mask, bias=bias, reduction="none"), expected.sum(1))
    torch.testing.assert_close(ref.dual_bce(z, U, y, mask, bias=bias, reduction="sum"), expected.sum())
    observed = mask.sum() if mask is not None else torch.tensor(float(B * n), dtype=torch.float64)
    mean = expected.sum() / observed if observed > 0 else torch.tensor(0.0, dtype=torch.float64)
    torch.testing.assert_close(ref.dual_bce(z, U, y, mask, bias=bias, reduction="mean"), mean)


@pytest.mark.parametrize("mask_kind", MASKS)
def test_dual_bce_gradients(mask_kind):
    z, U, y, mask, bias = _inputs(6, 5, 4, mask_kind, seed=11)
    z.requires_grad_(True), U.requires_grad_(True), bias.requires_grad_(True)
    ref.dual_bce(z, U, y, mask, bias=bias, reduction="sum").backward()
    # dL/dlogits = mask * (sigmoid(logits) - y); dz = G U, dU = G^T z, db = column sums of G
    logits = z.detach() @ U.detach().t() + bias.detach()
    G = (torch.sigmoid(logits) - y) * (mask if mask is not None else 1.0)
    torch.testing.assert_close(z.grad, G @ U.detach())
    torch.testing.assert_close(U.grad, G.t() @ z.detach())
    torch.testing.assert_close(bias.grad, G.sum(0))
    assert torch.autograd.gradcheck(
        lambda a, b, c: ref.dual_bce(a, b, y, mask, bias=c, reduction="mean"), (z, U, bias))


def test_dual_bce_all_missing_mean_is_zero_with_zero_grads():
    z, U, y, mask, _ = _inputs(4, 3, 5, "all_zero")
    z.requires_grad_(True), U.requires_grad_(True)
    loss = ref.dual_bce(z, U, y, mask, reduction="mean")
    loss.backward()
    assert loss.item() == 0.0 and not torch.isnan(loss)
    assert torch.count_nonzero(z.grad) == 0 and torch.count_nonzero(U.grad) == 0


def test_dual_bce_extreme_logits_stay_finite_and_exact():
    z, U, y, mask, _ = _inputs(8, 6, 3, "random", scale=1e4, seed=5)
    z.requires_grad_(True)
    loss = ref.dual_bce(z, U, y, mask, reduction="none")
    assert torch.isfinite(loss).all()
    torch.testing.assert_close(loss, bce_formula(z.detach(), U, y, mask, None).sum(1))
    loss.sum().backward()
    assert torch.isfinite(z.grad).all()
    # a confidently right logit costs ~0, a confidently wrong one costs |logit|
    one = torch.ones(1, 1, dtype=torch.float64)
    assert ref.dual_bce(one * 800, one, one).item() == pytest.approx(0.0, abs=1e-300)
    assert ref.dual_bce(one * 800, one, one * 0).item() == pytest.approx(800.0)


def test_dual_bce_float32_close_to_float64():
    z, U, y, mask, bias = _inputs(9, 11, 16, "random", seed=2)
    got = ref.dual_bce(z.float(), U.float(), y.float(), mask.float(), bias=bias.float(), reduction="none")
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), bce_formula(z, U, y, mask, bias).sum(1), rtol=1e-5, atol=1e-5)


def test_dual_bce_bad_input_names_the_argument():
    z, U, y, mask, _ = _inputs(4, 5, 3, "random")
    with pytest.raises(ValueError, match=r"y has shape \(4, 6\), expected \(4, 5\)"):
        ref.dual_bce(z, U, torch.zeros(4, 6, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"U has shape"):
        ref.dual_bce(z, torch.zeros(5, 4, dtype=torch.float64), y)
    with pytest.raises(ValueError, match=r"mask has shape"):
        ref.dual_bce(z, U, y, mask[:, :2])
    with pytest.raises(ValueError, match=r"z must be a floating tensor"):
        ref.dual_bce(z.long(), U, y)
    with pytest.raises(ValueError, match=r"labels in \{0, 1\}"):
        ref.dual_bce(z, U, y * 2 - 1)
    with pytest.raises(ValueError, match="reduction"):
        ref.dual_bce(z, U, y, reduction="avg")
    with pytest.raises(ValueError, match="bias has shape"):
        ref.dual_bce(z, U, y, bias=torch.zeros(4, dtype=torch.float64))


def test_non_contiguous_inputs():
    z, U, y, mask, _ = _inputs(6, 4, 5, "random")
    zt = z.t().contiguous().t()
    assert not zt.is_contiguous()
    torch.testing.assert_close(ref.dual_bce(zt, U, y, mask), ref.dual_bce(z, U, y, mask))


def test_public_api_on_cpu_defaults_to_the_reference():
    z, U, y, mask, bias = _inputs(6, 4, 5, "random")
    torch.testing.assert_close(kernels.dual_bce(z, U, y, mask, bias=bias), ref.dual_bce(z, U, y, mask, bias=bias))
    mu, logvar = z[:, :3], z[:, 2:]
    torch.testing.assert_close(kernels.reparameterize_kl(mu, logvar, seed=3), ref.reparameterize_kl(mu, logvar, seed=3))


@pytest.mark.skipif(not kernels.has_compiled_ops(), reason="compiled CPU library not built")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_kl_op_matches_reference(dtype):
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(37, 19, generator=g, dtype=dtype)
    logvar = torch.randn(37, 19, generator=g, dtype=dtype)
    got = torch.ops.dualvae.kl_standard_normal(mu, logvar)
    torch.testing.assert_close(got.double(), kl_formula(mu.double(), logvar.double()),
                               rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=1e-5)
    with pytest.raises(RuntimeError, match="logvar has shape"):
        torch.ops.dualvae.kl_standard_normal(mu, logvar[:, :3])
    assert math.isfinite(float(kernels.kl_standard_normal(mu, logvar).sum()))


def test_missing_extension_warns_with_build_hint(tmp_path, monkeypatch):
    from dualvae.kernels import _library

    monkeypatch.setattr(_library, "_HERE", str(tmp_path))
    with pytest.warns(RuntimeWarning, match="make install"):
        assert _library._load_compiled() is False


def test_extension_is_built_when_required():
    # `make test` sets DUALVAE_REQUIRE_EXT=1: there the CMake build must have produced and loaded the library.
    import os

    if os.environ.get("DUALVAE_REQUIRE_EXT") != "1":
        pytest.skip("DUALVAE_REQUIRE_EXT not set")
    assert kernels.has_compiled_ops()
