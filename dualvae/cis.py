"""Conditional inception score (CIS), Algorithm 2 of the paper.

For an image x and each domain i of n:  x^(i) = m^i(x) (transfer to domain i),  M_i = f(x^(i)) - f(x),
so M is n x n with row i the change of every attribute probability when transferring to domain i.
    ts  = avg(diag(M))             transfer score: the target attribute should rise
    rs  = -avg(|notdiag(M)|)       reconstruction score: every other attribute should stay
    CIS = ts + rs
ts and rs are averaged over the images. f is the attribute classifier (probabilities in [0, 1]).

CIS scores attribute domains only. A model trained with identity labels has a dual vector per training identity
("identity_2880") and transfers toward it (`transfer`), but f predicts the 40 attributes, not who a face is, so
there is no f_i for an identity domain: asking CIS for one is an error naming it, rather than a score from some
other f.

Two evaluators behind `conditional_inception_score`, which agree to 1e-5 (tests/test_cis.py):
- batched=True (default): one pass. The N x n x len(lam) (image, domain, lam) triples stream through the model's
  `transfer_all` and the classifier in chunks of `max_batch`; ts and rs are reduced chunk by chunk, and no more
  than one chunk of transferred images is ever held, so memory follows the chunk size, not N x n.
- batched=False: the reference loop, one image at a time (its n transfers as one batch of n copies).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from dualvae import batching
from dualvae.precision import autocast, check_precision
from dualvae.transfer_model import TransferModel, is_identity_name

# evaluation runs fp32 or bf16 autocast
CIS_PRECISIONS = ("fp32", "bf16")


@dataclass
class CISResult:
    ts: float
    rs: float
    cis: float
    lam: float
    domains: list[int]
    M: torch.Tensor | None  # (N, n_dom, n_dom): M[j, i, k] = f_k(x_j^(i)) - f_k(x_j); None with keep_M=False
    f_original: torch.Tensor  # (N, n_dom): f(x_j) on the chosen domains

    def as_dict(self, domain_names=None) -> dict:
        names = [domain_names[d] for d in self.domains] if domain_names else None
        return {"ts": self.ts, "rs": self.rs, "cis": self.cis, "lam": self.lam,
                "num_images": int(self.f_original.shape[0]), "domains": names or self.domains}


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
def conditional_inception_score(model, classifier, images: torch.Tensor, *, domains=None, lam=1.0,
                                batched: bool = True, max_batch: int | None = None, precision: str = "fp32",
                                keep_M: bool = True, progress: bool = False,
                                source_labels: torch.Tensor | None = None):
    """Algorithm 2 over `images` (N, C, H, W) in [-1, 1].

    model: a `dualvae.transfer_model.TransferModel` (DualVAE, the baselines); batched uses its `transfer_all`,
           the loop its `transfer`.
    classifier: callable (B, C, H, W) -> attribute probabilities (B, n_labels) (f), or a module with `probs`.
    domains: as in `resolve_domains`: None (all of the model's labels), a count k (the first k), or a list of
           indices/names.
    lam: one number -> a CISResult; a list of numbers -> {lam: CISResult}, all of them from one pass.
    batched: the one-pass evaluator (default) or the per-image reference loop.
    max_batch: triples per chunk (batched); default from the free memory on a GPU, a fixed size on a CPU.
    precision: "fp32", or "bf16" (autocast; M, ts, rs are still reduced in fp32/fp64).
    keep_M: batched only; False drops M (result.M is None) and keeps only ts and rs.
    source_labels: batched only; (N, num_labels) dataset labels of the images, handed to the model's
           `transfer_all` (label-conditioned models then start from them instead of predicting their own).
    Models (and the classifier) that are nn.Modules must be in eval mode: BatchNorm in train mode would make the
    scores depend on the batch.
    """
    lams, single = _check_lams(lam)
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or len(images) == 0:
        raise ValueError(f"CIS: images must be a non-empty (N, C, H, W) tensor, got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    if not isinstance(model, TransferModel):
        raise TypeError(f"CIS: model must be a dualvae.transfer_model.TransferModel (DualVAE, the baselines), got "
                        f"{type(model).__name__}")
    check_precision(precision, "CIS", CIS_PRECISIONS)
    batching.check_max_batch(max_batch, "CIS")
    f = classifier.probs if hasattr(classifier, "probs") else classifier
    for what, obj in (("model", model), ("classifier", getattr(f, "__self__", classifier))):
        if isinstance(obj, nn.Module) and obj.training:
            raise ValueError(f"CIS: {what} is in training mode (BatchNorm would use batch statistics); call .eval()")
    domain_idx = resolve_domains(model, domains)
    check_classifier_domains(model, getattr(f, "__self__", classifier), domain_idx)
    if source_labels is not None:
        if not batched:
            raise ValueError("CIS: source_labels needs the batched evaluator (batched=True)")
        if source_labels.dim() != 2 or len(source_labels) != len(images):
            raise ValueError(f"CIS: source_labels has shape {tuple(source_labels.shape)}, expected "
                             f"({len(images)}, num_labels)")
    with autocast(images.device, precision):
        if batched:
            results = _cis_batched(model, f, images, domain_idx, lams, max_batch, keep_M, progress, source_labels)
        else:
            results = {lam_: _cis_loop(model, f, images, domain_idx, lam_, progress) for lam_ in lams}
    return results[lams[0]] if single else results


def _check_lams(lam) -> tuple[list[float], bool]:
    single = not isinstance(lam, (list, tuple))
    lams = [lam] if single else list(lam)
    if not lams or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                       for v in lams):
        raise ValueError(f"CIS: lam must be a finite number or a non-empty list of them, got {lam!r}")
    lams = [float(v) for v in lams]
    if len(set(lams)) != len(lams):
        raise ValueError(f"CIS: lam has repeated values: {lam!r}")
    return lams, single


def _cis_loop(model, f, images, domain_idx, lam, progress) -> CISResult:
    """The reference: per image, its n transfers as one batch of n copies, then f on them."""
    dom = torch.tensor(domain_idx, device=images.device)
    Ms, f0s = [], []
    for j in tqdm(range(len(images)), desc=f"CIS lam={lam:g}", disable=not progress, dynamic_ncols=True):
        x = images[j:j + 1]
        f_x = f(x)[0, dom].float()  # (n_dom,)
        x_t = model.transfer(x.expand(len(domain_idx), *x.shape[1:]), domain_idx, lam)  # row i: x^(i)
        M = f(x_t)[:, dom].float() - f_x  # M_i = f(x^(i)) - f(x)
        Ms.append(M.cpu())
        f0s.append(f_x.cpu())
    M = torch.stack(Ms)
    ts, rs = scores_from_M(M)
    return CISResult(ts=ts, rs=rs, cis=ts + rs, lam=float(lam), domains=domain_idx, M=M,
                     f_original=torch.stack(f0s))


def _work_items(n_images: int, n_dom: int, n_lams: int, chunk: int):
    """(lam index, image slice, domain slice) covering every triple once, each item at most `chunk` triples:
    blocks of whole images (all domains) when n_dom <= chunk, else one image and `chunk` domains at a time."""
    for l in range(n_lams):
        if n_dom <= chunk:
            per = chunk // n_dom
            for a in range(0, n_images, per):
                yield l, slice(a, min(a + per, n_images)), slice(0, n_dom)
        else:
            for j in range(n_images):
                for a in range(0, n_dom, chunk):
                    yield l, slice(j, j + 1), slice(a, min(a + chunk, n_dom))


def _packed(items, n_dom: int, chunk: int):
    """Consecutive work items grouped so that each group holds at most `chunk` triples (one classifier call)."""
    group, size = [], 0
    for item in items:
        rows = (item[1].stop - item[1].start) * (item[2].stop - item[2].start)
        if group and size + rows > chunk:
            yield group, size
            group, size = [], 0
        group.append(item)
        size += rows
    if group:
        yield group, size


def _default_chunk(model, f, images, domain_idx) -> int:
    def per_row():
        x1 = images[:1]
        modules = [model, getattr(f, "__self__", f)]
        one = lambda x: model.transfer_all(x, domain_idx[:1], 1.0, max_batch=1)  # noqa: E731
        return batching.activation_bytes_per_row(one, x1, modules[:1]) + batching.activation_bytes_per_row(
            f, x1, modules[1:])

    return batching.max_batch_for(images.device, per_row)


def _cis_batched(model, f, images, domain_idx, lams, max_batch, keep_M, progress,
                 source_labels=None) -> dict[float, CISResult]:
    N, n, L = len(images), len(domain_idx), len(lams)
    cl = torch.channels_last
    chunk = max_batch or _default_chunk(model, f, images, domain_idx)
    dom = torch.tensor(domain_idx, device=images.device)
    f0 = torch.cat([f(images[a:a + chunk].contiguous(memory_format=cl))[:, dom].float()
                    for a in range(0, N, chunk)])  # f(x) on the originals, (N, n)
    eye = torch.eye(n, dtype=torch.bool, device=images.device)
    diag_sum = torch.zeros(L, dtype=torch.float64, device=images.device)  # on the device: no sync per chunk
    off_sum = torch.zeros(L, dtype=torch.float64, device=images.device)
    M = torch.zeros(L, N, n, n) if keep_M else None
    bar = tqdm(total=N * n * L, desc=f"CIS {L} lam x {N} images x {n} domains", unit="transfer",
               disable=not progress, dynamic_ncols=True)
    for group, rows in _packed(_work_items(N, n, L, chunk), n, chunk):
        x_t = [model.transfer_all(images[js], domain_idx[ks], lams[l], max_batch=chunk,
                            **({} if source_labels is None else {"source_labels": source_labels[js]}))
               .flatten(0, 1) for l, js, ks in group]
        probs = f(torch.cat(x_t).contiguous(memory_format=cl))[:, dom].float()  # one classifier pass per chunk
        start = 0
        for l, js, ks in group:
            b, k = js.stop - js.start, ks.stop - ks.start
            Mb = probs[start:start + b * k].view(b, k, n) - f0[js, None, :]  # M_i = f(x^(i)) - f(x)
            start += b * k
            on = eye[ks].expand(b, k, n)
            diag_sum[l] += Mb[on].double().sum()
            off_sum[l] += Mb[~on].double().abs().sum()
            if keep_M:
                M[l, js, ks] = Mb.cpu()
        bar.update(rows)
    bar.close()
    out = {}
    for l, lam in enumerate(lams):
        ts = (diag_sum[l] / (N * n)).item()
        rs = -(off_sum[l] / (N * n * (n - 1))).item() if n > 1 else 0.0
        out[lam] = CISResult(ts=ts, rs=rs, cis=ts + rs, lam=lam, domains=domain_idx,
                             M=M[l] if keep_M else None, f_original=f0.cpu())
    return out


def check_classifier_domains(model: TransferModel, classifier, domain_idx: list[int]) -> None:
    """Every scored domain must be one f predicts, at the same label index (M reads f's column of the model's
    domain index): ValueError naming the first that is not. An identity domain never is (f predicts attributes)."""
    names = model.attr_names
    f_names = getattr(classifier, "attr_names", None)
    for d in domain_idx:
        name = names[d] if names and d < len(names) else None
        if is_identity_name(name):
            f_what = f"the {len(f_names)} attributes" if f_names else "attributes"
            raise ValueError(
                f"CIS: domain {name} (label {d}) is an identity: the classifier f predicts {f_what}, not who a "
                f"face is, so the transfer score f_i(m^i(x)) - f_i(x) has no f_i for it. Score the attributes "
                f"(domains 40, or their names) and look at identity transfers with `dualvae transfer --domains "
                f"{name}`")
        if f_names is not None and name is not None and (d >= len(f_names) or f_names[d] != name):
            got = f"predicts {f_names[d]!r} at label {d}" if d < len(f_names) else f"has {len(f_names)} labels"
            raise ValueError(f"CIS: domain {name} (label {d} of the model) is not the classifier's label {d}: f {got}")


def resolve_domains(model: TransferModel, domains) -> list[int]:
    """The domains CIS scores and the transfer grids show. An int k is a count: the first k labels. Anything
    else (None for all, an attribute name, a list of indices/names) is `model.domain_indices`'s."""
    if isinstance(domains, int) and not isinstance(domains, bool):
        if not 1 <= domains <= model.num_labels:
            raise ValueError(f"CIS: domains={domains} must be in [1, {model.num_labels}]")
        return list(range(domains))
    return model.domain_indices(domains)


def sweep_lam(model, classifier, images: torch.Tensor, lams, *, domains=None, progress: bool = False,
              **kwargs):
    """CIS at each lam, all from one pass; returns (best lam, {lam: CISResult}). Used to choose lam on the
    validation split. `kwargs` go to `conditional_inception_score` (batched, max_batch, precision, ...)."""
    results = conditional_inception_score(model, classifier, images, domains=domains, lam=list(lams),
                                          progress=progress, **kwargs)
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
