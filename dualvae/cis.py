"""Conditional inception score (CIS), Algorithm 2 of the paper.

For an image x and each domain i of n:  x^(i) = m^i(x) (transfer to domain i),  M_i = f(x^(i)) - f(x),
so M is n x n with row i the change of every attribute probability when transferring to domain i.
    ts  = avg(diag(M))             transfer score: the target attribute should rise
    rs  = -avg(|notdiag(M)|)       reconstruction score: every other attribute should stay
    CIS = ts + rs
ts and rs are averaged over the images. f is the attribute classifier (probabilities in [0, 1]).
This is the plain loop over images (each image's n transfers go through the model as one batch of n copies);
the batched one-pass evaluator is a separate issue.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm import tqdm


@dataclass
class CISResult:
    ts: float
    rs: float
    cis: float
    lam: float
    domains: list[int]
    M: torch.Tensor  # (N, n_dom, n_dom): M[j, i, k] = f_k(x_j^(i)) - f_k(x_j)
    f_original: torch.Tensor  # (N, n_dom): f(x_j) on the chosen domains

    def as_dict(self, domain_names=None) -> dict:
        names = [domain_names[d] for d in self.domains] if domain_names else None
        return {"ts": self.ts, "rs": self.rs, "cis": self.cis, "lam": self.lam, "num_images": int(self.M.shape[0]),
                "domains": names or self.domains}


def scores_from_M(M: torch.Tensor) -> tuple[float, float]:
    """(ts, rs) of a stack of M matrices (N, n, n); rs is 0 for a single domain (no off-diagonal)."""
    n = M.shape[-1]
    diag = torch.diagonal(M, dim1=-2, dim2=-1)
    ts = diag.mean().item()
    if n < 2:
        return ts, 0.0
    off = ~torch.eye(n, dtype=torch.bool, device=M.device)
    rs = -M[..., off].abs().mean().item()
    return ts, rs


@torch.no_grad()
def conditional_inception_score(model, classifier, images: torch.Tensor, *, domains=None, lam: float = 1.0,
                                progress: bool = False) -> CISResult:
    """Algorithm 2 over `images` (N, C, H, W) in [-1, 1].

    model: anything with `transfer(x, domains, lam)` taking one domain per image of x (DualVAE's signature) and,
           for `domains` given by name, `domain_indices`;
    classifier: callable (B, C, H, W) -> attribute probabilities (B, n_labels) (f), or a module with `probs`.
    domains: None (all of the model's labels), a count k (the first k), or a list of indices/names.
    """
    f = classifier.probs if hasattr(classifier, "probs") else classifier
    domain_idx = resolve_domains(model, domains)
    dom = torch.tensor(domain_idx, device=images.device)
    Ms, f0s = [], []
    for j in tqdm(range(len(images)), desc=f"CIS lam={lam:g}", disable=not progress, dynamic_ncols=True):
        x = images[j:j + 1]
        f_x = f(x)[0, dom]  # (n_dom,)
        x_t = model.transfer(x.expand(len(domain_idx), *x.shape[1:]), domain_idx, lam)  # row i: x^(i)
        M = f(x_t)[:, dom] - f_x  # M_i = f(x^(i)) - f(x)
        Ms.append(M.float().cpu())
        f0s.append(f_x.float().cpu())
    M = torch.stack(Ms)
    ts, rs = scores_from_M(M)
    return CISResult(ts=ts, rs=rs, cis=ts + rs, lam=float(lam), domains=domain_idx, M=M,
                     f_original=torch.stack(f0s))


def resolve_domains(model, domains) -> list[int]:
    """Domain indices from None (all), a count k (the first k in the label order), or a list of indices/names."""
    if isinstance(domains, int) and not isinstance(domains, bool):
        n_labels = model.config.num_labels if hasattr(model, "config") else None
        if domains < 1 or (n_labels is not None and domains > n_labels):
            raise ValueError(f"CIS: domains={domains} must be in [1, {n_labels}]")
        return list(range(domains))
    if hasattr(model, "domain_indices"):
        return model.domain_indices(domains)
    if domains is None:
        raise ValueError("CIS: the model has no domain list; pass domains explicitly")
    return [int(d) for d in domains]


def sweep_lam(model, classifier, images: torch.Tensor, lams, *, domains=None, progress: bool = False):
    """CIS at each lam; returns (best lam, {lam: CISResult}). Used to choose lam on the validation split."""
    results = {float(lam): conditional_inception_score(model, classifier, images, domains=domains, lam=lam,
                                                       progress=progress) for lam in lams}
    best = max(results, key=lambda lam: results[lam].cis)
    return best, results


def plot_sweep(results: dict, path: str, title: str = "CIS over lam") -> str:
    """The paper's Fig. 4/6 axes: rs on x, ts on y, one point per lam (CIS grows towards the upper right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lams = sorted(results)
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot([results[l].rs for l in lams], [results[l].ts for l in lams], "o-")
    for lam in lams:
        r = results[lam]
        ax.annotate(f"λ={lam:g}\nCIS {r.cis:+.3f}", (r.rs, r.ts), textcoords="offset points", xytext=(4, 4),
                    fontsize=7)
    ax.set_xlabel("rs (reconstruction score)")
    ax.set_ylabel("ts (transfer score)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
