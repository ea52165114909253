"""The losses of DualVAE, and the application's one caller of dualvae.kernels.

    -log p_theta(x | z)       gaussian_recon_nll   ||x - x_hat||^2 / (2 sigma^2) per image (fixed sigma)
    z ~ q_phi(z | x), KL      sample_latent        z = mu + exp(logvar / 2) eps and KL(q || N(0, I)) per row,
                                                   one fused op (kernels.reparameterize_kl)
    negative ELBO (Eq. 1)     neg_elbo             (sum_j -log p(x_j | z_j), sum_j KL_j)
    label term                label_nll            sum_ij I_ij BCE(sigmoid(z_j . u_i), y_ij), one fused op
                                                   (kernels.dual_bce), and the accuracy on the observed labels

`backend` is a dualvae.kernels backend ("auto" | "triton" | "reference" | "cpu"). LossFns resolves it once, for
the model's device, and passes the resolved name to every call: all steps of a run take the same path.
"""
from __future__ import annotations

import torch

from dualvae import kernels


def gaussian_recon_nll(x_hat: torch.Tensor, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """-log p(x | z) per image for N(x; x_hat, sigma^2 I), without the constant D log(sigma sqrt(2 pi))."""
    return ((x - x_hat) ** 2).flatten(1).sum(1) / (2.0 * sigma * sigma)


def sample_latent(model, x: torch.Tensor, eps: torch.Tensor | None, backend: str = "auto"):
    """(z, kl_per_row, mu, logvar) with z ~ q(z | x) by reparameterization; eps None: the kernel draws it."""
    mu, logvar = model.encode(x)
    if eps is not None and eps.dtype != mu.dtype:  # under autocast mu is bf16/fp16, eps drawn in fp32
        eps = eps.to(mu.dtype)
    z, kl = kernels.reparameterize_kl(mu, logvar, eps, backend=backend)
    return z, kl, mu, logvar


def neg_elbo(model, x: torch.Tensor, eps: torch.Tensor, recon_sigma: float, backend: str = "auto"):
    """(sum_j -log p(x_j | z_j), sum_j KL_j): the negative ELBO (Eq. 1) summed over the rows, in float32."""
    z, kl, _, _ = sample_latent(model, x, eps, backend)
    recon = gaussian_recon_nll(model.decode(z).float(), x, recon_sigma)
    return recon.sum(), kl.float().sum()


def label_nll(model, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, eps: torch.Tensor,
              backend: str = "auto"):
    """(sum_ij I_ij BCE(sigma(z_j u_i), y_ij), correct observed predictions, observed count), in float32; the
    counts carry no gradient."""
    z, _, _, _ = sample_latent(model, x, eps, backend)
    nll = kernels.dual_bce(z, model.U, y, mask, reduction="sum", backend=backend).float()
    with torch.no_grad():
        pred = (model.label_logits(z.detach().float()) > 0).to(y.dtype)
        correct = ((pred == y).to(mask.dtype) * mask).sum()
    return nll, correct.float(), mask.sum().float()


class LossFns:
    """The two losses of Algorithm 1 on one model, as sums over the batch's rows (a rank's share of the global
    loss): `vae(x, eps)` is neg_elbo, `label(x, y, mask, eps)` is label_nll, eager or through torch.compile.

    The backend is resolved here, once, for the device of the model's parameters (`backend`: the name resolved).
    """

    def __init__(self, model, recon_sigma: float, backend: str = "auto", compile: bool = False,
                 fullgraph: bool = True):
        self.model, self.recon_sigma = model, recon_sigma
        self.backend = kernels.resolve_backend(backend, device=model.U.device)
        # The fused backends run as dualvae:: custom ops with fake implementations: one graph per loss. The
        # pure-PyTorch reference checks its labels with a data-dependent branch: one graph break, which
        # fullgraph would turn into an error.
        fullgraph = fullgraph and self.fused
        self.vae = torch.compile(self._vae, fullgraph=fullgraph) if compile else self._vae
        self.label = torch.compile(self._label, fullgraph=fullgraph) if compile else self._label

    @property
    def fused(self) -> bool:
        """Whether the losses run on fused kernels (Triton, or the compiled C++ ones on CPU)."""
        return self.backend != "reference"

    def _vae(self, x, eps):
        return neg_elbo(self.model, x, eps, self.recon_sigma, self.backend)

    def _label(self, x, y, mask, eps):
        return label_nll(self.model, x, y, mask, eps, self.backend)
