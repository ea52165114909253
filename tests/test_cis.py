"""CIS (Algorithm 2) on hand-computed examples, and on a real (random) DualVAE."""
import pytest
import torch

from dualvae.cis import conditional_inception_score, scores_from_M, sweep_lam


class ShiftModel:
    """Transfer to domain i adds lam * c_i to every pixel."""

    c = torch.tensor([0.5, -0.25])

    def transfer(self, x, domains, lam):
        return x + lam * self.c[torch.as_tensor(domains)].view(-1, 1, 1, 1)

    def domain_indices(self, domains):
        return [0, 1] if domains is None else list(domains)


def f_square_identity(x):
    """f(x) = [v^2, v] for an image of constant value v."""
    v = x.mean(dim=(1, 2, 3))
    return torch.stack([v**2, v], dim=1)


def test_cis_two_domains_by_hand():
    images = torch.stack([torch.full((1, 2, 2), 1.0), torch.full((1, 2, 2), 2.0)])
    r = conditional_inception_score(ShiftModel(), f_square_identity, images, lam=1.0)
    # x=1: M = [[2.25-1, 1.5-1], [0.5625-1, 0.75-1]] = [[1.25, 0.5], [-0.4375, -0.25]]
    # x=2: M = [[6.25-4, 2.5-2], [3.0625-4, 1.75-2]] = [[2.25, 0.5], [-0.9375, -0.25]]
    expected_M = torch.tensor([[[1.25, 0.5], [-0.4375, -0.25]], [[2.25, 0.5], [-0.9375, -0.25]]])
    torch.testing.assert_close(r.M, expected_M)
    assert r.ts == pytest.approx((1.25 - 0.25 + 2.25 - 0.25) / 4)  # 0.75
    assert r.rs == pytest.approx(-(0.5 + 0.4375 + 0.5 + 0.9375) / 4)  # -0.59375
    assert r.cis == pytest.approx(0.75 - 0.59375)
    torch.testing.assert_close(r.f_original, torch.tensor([[1.0, 1.0], [4.0, 2.0]]))
    assert r.as_dict(["A", "B"]) == {"ts": r.ts, "rs": r.rs, "cis": r.cis, "lam": 1.0, "num_images": 2,
                                     "domains": ["A", "B"]}


def test_cis_lam_and_domain_subset():
    images = torch.stack([torch.full((1, 2, 2), 1.0), torch.full((1, 2, 2), 2.0)])
    r = conditional_inception_score(ShiftModel(), f_square_identity, images, lam=2.0, domains=[1])
    # domain 1 only, lam 2: v -> v - 0.5; f_1 = v changes by -0.5; no off-diagonal
    assert r.M.shape == (2, 1, 1) and r.ts == pytest.approx(-0.5) and r.rs == 0.0
    best, results = sweep_lam(ShiftModel(), f_square_identity, images, [0.0, 1.0], domains=[0, 1])
    assert results[0.0].cis == 0.0 and best == 1.0


def test_scores_from_M_definition():
    M = torch.tensor([[[0.9, -0.1, 0.2], [0.0, 0.5, -0.3], [0.1, 0.1, 0.1]]])
    ts, rs = scores_from_M(M)
    assert ts == pytest.approx((0.9 + 0.5 + 0.1) / 3)
    assert rs == pytest.approx(-(0.1 + 0.2 + 0.0 + 0.3 + 0.1 + 0.1) / 6)


def test_cis_on_dualvae_matches_explicit_loop():
    from dualvae.classifier import AttributeClassifier
    from dualvae.model import DualVAE

    torch.manual_seed(0)
    model = DualVAE(image_size=16, latent_dim=6, num_labels=4, width=8).eval()
    with torch.no_grad():
        model.U.normal_()
    clf = AttributeClassifier(num_labels=4, image_size=16, width=8).eval()
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    r = conditional_inception_score(model, clf, images, lam=1.5, domains=3)
    assert r.domains == [0, 1, 2]
    for j in range(3):
        x = images[j:j + 1]
        f_x = clf.probs(x)[0, :3]
        for i in range(3):
            expected = clf.probs(model.transfer(x, i, 1.5))[0, :3] - f_x
            torch.testing.assert_close(r.M[j, i], expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="domains=5"):
        conditional_inception_score(model, clf, images, domains=5)
