"""DualHead and ReparameterizeKL: the functional ops and the float64 references, as modules."""
import pytest
import torch

from dualvae import kernels
from dualvae.kernels import DualHead, ReparameterizeKL, reference as ref
from dualvae.kernels._jit import interpreting

from kernel_cases import require_backend

DEVICE = {"triton": "cpu" if interpreting() else "cuda", "cpu": "cpu", "reference": "cpu"}


@pytest.fixture(params=["triton", "cpu", "reference"])
def backend(request):
    return require_backend(request.param)


def _inputs(B=7, d=5, n=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(B, d, generator=g, dtype=torch.float64)
    y = (torch.rand(B, n, generator=g) > 0.5).double()
    mask = (torch.rand(B, n, generator=g) > 0.3).double()
    return z, y, mask


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_dual_head_is_dual_bce_and_the_float64_reference(bias, reduction, backend):
    torch.manual_seed(1)
    head = DualHead(5, 11, bias=bias, backend=backend, reduction=reduction).to(DEVICE[backend])
    assert (head.weight.shape, head.bias is not None) == ((11, 5), bias)
    if bias:
        with torch.no_grad():
            head.bias.uniform_(-1, 1)
    z64, y, mask = _inputs()
    dev = DEVICE[backend]

    def grads(loss, leaves):
        return [loss.detach().double().cpu()] + [g.double().cpu() for g in torch.autograd.grad(loss.sum(), leaves)]

    z = z64.float().to(dev).requires_grad_()
    params = [head.weight] + ([head.bias] if bias else [])
    got = grads(head(z, y.float().to(dev), mask.float().to(dev)), [z, *params])
    fn = grads(kernels.dual_bce(z, head.weight, y.float().to(dev), mask.float().to(dev), bias=head.bias,
                                reduction=reduction, backend=backend), [z, *params])
    leaves64 = [z64.clone().requires_grad_()] + [p.detach().double().cpu().requires_grad_() for p in params]
    want = grads(ref.dual_bce(leaves64[0], leaves64[1], y, mask, bias=leaves64[2] if bias else None,
                              reduction=reduction), leaves64)
    for a, b, c in zip(got, fn, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-5)
    logits = head.logits(z)
    expected = z64 @ head.weight.detach().double().cpu().t() + (head.bias.detach().double().cpu() if bias else 0)
    torch.testing.assert_close(logits.detach().double().cpu(), expected, rtol=1e-5, atol=1e-5)


def test_dual_head_takes_packed_labels(backend):
    head = DualHead(5, 11, backend=backend).to(DEVICE[backend])
    z, y, mask = (t.float().to(DEVICE[backend]) for t in _inputs(seed=2))
    torch.testing.assert_close(head(z, kernels.pack_labels(y, mask)), head(z, y, mask))


def test_reparameterize_kl_module_is_the_function_and_the_reference(backend):
    g = torch.Generator().manual_seed(3)
    mu, logvar, eps = (torch.randn(6, 9, generator=g, dtype=torch.float64) for _ in range(3))
    dev = DEVICE[backend]
    sample = ReparameterizeKL(backend=backend)
    leaves = [t.float().to(dev).requires_grad_() for t in (mu, logvar)]
    z, kl = sample(*leaves, eps.float().to(dev))
    got = [z, kl, *torch.autograd.grad(z.sum() + kl.sum(), leaves)]
    leaves64 = [t.clone().requires_grad_() for t in (mu, logvar)]
    z64, kl64 = ref.reparameterize_kl(*leaves64, eps)
    want = [z64, kl64, *torch.autograd.grad(z64.sum() + kl64.sum(), leaves64)]
    for a, b in zip(got, want):
        torch.testing.assert_close(a.detach().double().cpu(), b.detach(), rtol=1e-5, atol=1e-5)
    seeded = sample(*(t.detach() for t in leaves), seed=7)
    for a, b in zip(seeded, kernels.reparameterize_kl(*(t.detach() for t in leaves), seed=7, backend=backend)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_modules_reject_bad_options_and_inputs():
    for kwargs, match in [({"latent_dim": 0, "num_labels": 3}, "latent_dim must be a positive int"),
                          ({"latent_dim": 4, "num_labels": 2.0}, "num_labels must be a positive int"),
                          ({"latent_dim": 4, "num_labels": 3, "reduction": "avg"}, "reduction must be one of"),
                          ({"latent_dim": 4, "num_labels": 3, "backend": "gpu"}, "backend must be one of")]:
        with pytest.raises(ValueError, match=f"DualHead: {match}"):
            DualHead(**kwargs)
    with pytest.raises(ValueError, match="ReparameterizeKL: backend must be one of"):
        ReparameterizeKL(backend="cuda")
    head = DualHead(4, 3, backend="reference")
    with pytest.raises(ValueError, match=r"DualHead: z has shape \(2, 5\), expected \(B, 4\)"):
        head(torch.zeros(2, 5), torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"dual_bce: y has shape \(2, 4\), expected \(2, 3\)"):
        head(torch.zeros(2, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="reparameterize_kl: logvar has shape"):
        ReparameterizeKL()(torch.zeros(2, 4), torch.zeros(2, 3))
    assert DualHead(4, 3, backend=kernels.Backend.CPU).backend == "cpu"
    assert "num_labels=3" in repr(head) and sorted(dict(head.named_parameters())) == ["weight"]
