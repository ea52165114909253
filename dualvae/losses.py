"""The losses of DualVAE, and the application's one caller of dualvae.kernels.

    -log p_theta(x | z)       gaussian_recon_nll   ||x - x_hat||^2 / (2 sigma^2) per image (fixed sigma)
    z ~ q_phi(z | x), KL      sample_latent        z = mu + exp(logvar / 2) eps and KL(q || N(0, I)) per row,
                                                   one fused op (kernels.reparameterize_kl)
    negative ELBO (Eq. 1)     neg_elbo             (sum_j -log p(x_j | z_j), sum_j KL_j)
    label term                label_nll            sum_ij I_ij BCE(sigmoid(z_j . u_i), y_ij), one fused op
                                                   (kernels.dual_bce), and the accuracy on the observed labels
    the same, for given z     dual_head_terms      (what label_nll and the label-parallel step share)

Labels are a dense (B, n) 0/1 tensor or a kernels.SparseLabels (the positives); the mask I is a
kernels.HashedMask (the loaders' mask: a hash of the batch's global image indices, evaluated inside the kernel),
a (B, n) tensor (1 = observed), or None (all observed). Training never forms a (B, n) mask or label matrix: the
loss and its gradients come from the kernel, the accuracy and the observed count from column chunks (see
dual_head_terms).

`backend` is a dualvae.kernels backend ("auto" | "triton" | "reference" | "cpu"). LossFns resolves it once, for
the model's device, and passes the resolved name to every call: all steps of a run take the same path.
"""
from __future__ import annotations

import torch

from dualvae import kernels
from dualvae.kernels import HashedMask, SparseLabels

# Entries (rows x columns) of one chunk of the accuracy's logits: bounded memory at any number of labels.
ACCURACY_CHUNK_ENTRIES = 1 << 20


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


# -- labels and masks, by column range --------------------------------------------------------------------------
def label_columns(y, lo: int, hi: int):
    """Columns [lo, hi) of labels y (a (B, n) tensor or SparseLabels), re-indexed from 0."""
    return y.columns(lo, hi) if isinstance(y, SparseLabels) else y[:, lo:hi]


def mask_columns(mask, lo: int, hi: int):
    """Columns [lo, hi) of a mask (HashedMask, (B, n) tensor or None), re-indexed from 0."""
    if mask is None:
        return None
    return mask.columns(lo, hi) if isinstance(mask, HashedMask) else mask[:, lo:hi]


def first_rows(y, mask, b: int):
    """(labels, mask) of the first b rows of a batch (any of the forms above)."""
    if isinstance(y, SparseLabels):
        y = SparseLabels(y.indptr[:b + 1], y.indices[:int(y.indptr[b])], y.n, validate=False)
    else:
        y = y[:b]
    if isinstance(mask, HashedMask):
        mask = mask.select(torch.arange(b, device=mask.device))
    elif mask is not None:
        mask = mask[:b]
    return y, mask


def _dense_chunk(y, mask, lo: int, hi: int, dtype: torch.dtype):
    """(labels, mask) of columns [lo, hi) as (B, hi - lo) tensors of `dtype` (a chunk, never the whole matrix)."""
    yc = label_columns(y, lo, hi)
    yc = yc.dense(dtype) if isinstance(yc, SparseLabels) else yc.to(dtype)
    mc = mask_columns(mask, lo, hi)
    if mc is None:
        mc = torch.ones_like(yc)
    elif isinstance(mc, HashedMask):
        mc = mc.dense(hi - lo, dtype)
    return yc, mc.to(dtype)


def _chunk_width(rows: int) -> int:
    return max(1, ACCURACY_CHUNK_ENTRIES // max(rows, 1))


def dual_head_terms(z: torch.Tensor, U: torch.Tensor, y, mask, backend: str = "auto", metrics: bool = True):
    """(sum_ij I_ij BCE(sigma(z_j u_i), y_ij), correct observed predictions, observed count) of the dual head U
    on latents z, in float32; only the loss carries a gradient.

    y: (B, n) 0/1 tensor or SparseLabels; mask: HashedMask, (B, n) tensor (1 = observed) or None. The loss is
    one dual_bce call (reduction "sum"). The accuracy counts every observed entry, sign(z_j . u_i) against
    y_ij, over column chunks of ACCURACY_CHUNK_ENTRIES // B labels at a time (an extra z U^T product without
    its gradient, never more than one chunk of it in memory), and the observed count from the same chunks of
    the mask. metrics=False skips both (they are then NaN): the steps that log nothing need the loss only, and
    at many labels the two cost about as much as the loss."""
    B, n = z.shape[0], U.shape[0]
    nll = kernels.dual_bce(z, U, y, mask, reduction="sum", backend=backend).float()
    if not metrics:
        nan = torch.tensor(float("nan"), device=z.device)
        return nll, nan, nan
    with torch.no_grad():
        zf, Uf = z.detach().float(), U.detach().float()
        correct = torch.zeros((), dtype=torch.float64, device=z.device)
        observed = torch.zeros((), dtype=torch.float64, device=z.device)
        width = _chunk_width(B)
        for lo in range(0, n, width):
            hi = min(n, lo + width)
            yc, mc = _dense_chunk(y, mask, lo, hi, torch.float32)
            mc = mc.to(z.device)
            pred = (zf @ Uf[lo:hi].t() > 0).to(torch.float32)
            correct += ((pred == yc.to(z.device)).to(torch.float32) * mc).sum().double()
            observed += mc.sum().double()
    return nll, correct.float(), observed.float()


def label_nll(model, x: torch.Tensor, y, mask, eps: torch.Tensor, backend: str = "auto", metrics: bool = True):
    """dual_head_terms of the model's U on z ~ q(z | x): (sum_ij I_ij BCE(sigma(z_j u_i), y_ij), correct
    observed predictions, observed count), in float32; the counts carry no gradient (NaN with metrics=False)."""
    z, _, _, _ = sample_latent(model, x, eps, backend)
    return dual_head_terms(z, model.U, y, mask, backend, metrics)


class LossFns:
    """The two losses of Algorithm 1 on one model, as sums over the batch's rows (a rank's share of the global
    loss): `vae(x, eps)` is neg_elbo, `label(x, y, mask, eps, metrics=True)` is label_nll, eager or through
    torch.compile.

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

    def _label(self, x, y, mask, eps, metrics=True):
        return label_nll(self.model, x, y, mask, eps, self.backend, metrics)
