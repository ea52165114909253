"""dualvae.baselines.common: the masked label loss, filling missing labels, transfer targets, the failure
detector."""
import pytest
import torch
import torch.nn.functional as F

from dualvae.baselines import common


def per_attribute_sum(logits, y):
    """The originals' attribute loss: one BCE per attribute (batch mean), added up over the attributes."""
    return sum(F.binary_cross_entropy_with_logits(logits[:, i], y[:, i]) for i in range(y.shape[1]))


def test_masked_bce_is_the_sum_over_attributes_with_its_gradient():
    torch.manual_seed(0)
    logits = (torch.randn(5, 7, dtype=torch.float64) * 3).requires_grad_(True)
    y = (torch.rand(5, 7) > 0.5).double()
    for mask in (None, torch.ones(5, 7, dtype=torch.bool)):
        got = common.masked_bce(logits, y, mask)
        want = per_attribute_sum(logits, y)
        assert torch.allclose(got, want, rtol=1e-12)
        g_got, = torch.autograd.grad(got, logits)
        g_want, = torch.autograd.grad(want, logits)
        assert torch.allclose(g_got, g_want, rtol=1e-12)
        # 7 attributes: the sum is 7x the mean over all entries
        assert torch.allclose(got, 7 * F.binary_cross_entropy_with_logits(logits, y), rtol=1e-12)


def test_masked_bce_with_missing_labels_keeps_the_full_sum_scale():
    torch.manual_seed(0)
    logits, y = torch.randn(5, 7, dtype=torch.float64), (torch.rand(5, 7) > 0.5).double()
    mask = torch.rand(5, 7) > 0.4
    want = 7 * F.binary_cross_entropy_with_logits(logits[mask], y[mask])  # n x the mean over observed entries
    assert torch.allclose(common.masked_bce(logits, y, mask), want, rtol=1e-12)


def test_masked_bce_ignores_missing_values_even_nan():
    torch.manual_seed(1)
    logits = torch.randn(4, 6, requires_grad=True)
    y, mask = (torch.rand(4, 6) > 0.5).float(), torch.rand(4, 6) > 0.5
    y_nan = torch.where(mask, y, torch.full_like(y, float("nan")))
    g1, = torch.autograd.grad(common.masked_bce(logits, y, mask), logits)
    g2, = torch.autograd.grad(common.masked_bce(logits, y_nan, mask), logits)
    assert torch.equal(g1, g2)
    assert (g1[~mask] == 0).all()
    empty = common.masked_bce(logits, y, torch.zeros(4, 6, dtype=torch.bool))
    assert empty.item() == 0.0


def test_masked_bce_names_bad_shapes():
    with pytest.raises(ValueError, match=r"mask has shape \(2, 3\), expected \(2, 4\)"):
        common.masked_bce(torch.zeros(2, 4), torch.zeros(2, 4), torch.ones(2, 3))


def test_fill_missing_and_target_labels():
    y, mask, pred = torch.tensor([[1.0, 0.0]]), torch.tensor([[True, False]]), torch.tensor([[0.2, 0.7]])
    assert torch.equal(common.fill_missing(y, mask, pred), torch.tensor([[1.0, 0.7]]))
    y = torch.tensor([[0.2, 0.4], [0.0, 1.0]])
    out = common.target_labels(y, torch.tensor([1, 0]), 0.5)
    assert torch.allclose(out, torch.tensor([[0.2, 0.7], [0.5, 1.0]]))
    assert torch.equal(y, torch.tensor([[0.2, 0.4], [0.0, 1.0]]))  # not in place


NAMES = ["Bald", "Bangs", "Black_Hair", "Blond_Hair", "Brown_Hair", "Eyeglasses", "Gray_Hair", "Male"]


def test_targets_make_hair_colours_exclusive_like_stargans_create_labels():
    groups = common.exclusive_groups(NAMES)
    assert groups == [[2, 3, 4, 6]]
    y = torch.tensor([[0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0]] * 3)
    out = common.target_labels(y, torch.tensor([3, 5, 2]), 1.0, groups)
    # blond: every other hair colour off, the rest untouched
    assert out[0].tolist() == [0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    assert out[1].tolist() == [0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0]  # eyeglasses: hair unchanged
    assert out[2].tolist() == [0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0]  # black: brown and gray off
    # strength 2: the target moves 2x as far up, the other hair colours 2x as far down
    out2 = common.target_labels(y, torch.tensor([3]), 2.0, groups)
    assert out2[0].tolist() == [0.0, 1.0, -1.0, 2.0, -1.0, 0.0, -1.0, 1.0]
    assert common.exclusive_groups(["Bald", "Blond_Hair", "Male"]) == []  # one hair colour: no group


@pytest.mark.parametrize("kind", ["cvae", "fader", "stargan"])
def test_every_baseline_transfers_with_the_exclusive_targets(kind, monkeypatch):
    from dualvae import baselines

    model = baselines.build(kind, image_size=16, num_labels=len(NAMES),
                            **({"g_width": 8, "d_width": 8, "res_blocks": 1} if kind == "stargan" else
                               {"width": 8, "max_channels": 32} if kind == "fader" else
                               {"width": 8, "latent_dim": 8})).eval()
    model.attr_names = NAMES
    seen = []
    src = torch.tensor([[0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0]] * 2)
    if kind == "stargan":
        monkeypatch.setattr(model.G, "forward", lambda x, c: seen.append(c) or x)
    else:
        monkeypatch.setattr(model, "decode", lambda z, c: seen.append(c) or torch.zeros(len(c), 3, 16, 16))
    model.transfer_all(torch.zeros(2, 3, 16, 16), [3], 1.0, source_labels=src)
    assert seen[-1].tolist() == [[0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]] * 2


class Identity(torch.nn.Module):
    """A transfer model that returns its input: a perfect reconstruction."""

    def transfer_all(self, x, domains, lam, max_batch=None):
        return x[:, None].expand(-1, len(domains), -1, -1, -1)


def blobs(n, size=16, seed=0):
    """n images of a coloured disc on a coloured background, at random places: a stand-in for faces."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    cx, cy, r = torch.rand(3, n, 1, 1, generator=g)
    disc = ((xx - (cx - 0.5)) ** 2 + (yy - (cy - 0.5)) ** 2 < (0.2 + 0.4 * r) ** 2).float()[:, None]
    fg, bg = torch.rand(2, n, 3, 1, 1, generator=g) * 2 - 1
    return disc * fg + (1 - disc) * bg


def test_reconstruction_ratio_flags_noise_and_passes_a_trained_model():
    from dualvae import baselines
    from dualvae.experiments.budgets import FAILED_RATIO

    torch.manual_seed(0)
    x = blobs(256)
    assert common.reconstruction_ratio(Identity(), x[:32]) == 0.0
    noise = baselines.build("stargan", image_size=16, num_labels=4, g_width=8, d_width=8, res_blocks=1).eval()
    assert common.reconstruction_ratio(noise, x[:32]) > 1.0  # an untrained generator: noise
    cvae = baselines.build("cvae", image_size=16, num_labels=4, width=8, latent_dim=16)
    assert common.reconstruction_ratio(cvae.eval(), x[:32]) > FAILED_RATIO  # untrained: fails
    u8 = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    baselines.fit(cvae, u8, torch.zeros(256, 4), None, steps=300, batch_size=32, progress=False)
    assert common.reconstruction_ratio(cvae, x[:32]) < FAILED_RATIO - 0.2  # trained: reproduces its inputs
    with pytest.raises(ValueError, match="at least 2 images"):
        common.reconstruction_ratio(Identity(), x[:1])
