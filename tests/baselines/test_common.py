"""dualvae.baselines.common: the masked label loss, filling missing labels, the λ label shift."""
import pytest
import torch
import torch.nn.functional as F

from dualvae.baselines import common


def test_masked_bce_is_the_mean_over_observed_entries():
    torch.manual_seed(0)
    logits, y = torch.randn(5, 7), (torch.rand(5, 7) > 0.5).float()
    mask = torch.rand(5, 7) > 0.4
    want = F.binary_cross_entropy_with_logits(logits[mask], y[mask])
    assert torch.allclose(common.masked_bce(logits, y, mask), want, atol=1e-6)
    assert torch.allclose(common.masked_bce(logits, y), F.binary_cross_entropy_with_logits(logits, y))


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


def test_fill_missing_and_shift_label():
    y, mask, pred = torch.tensor([[1.0, 0.0]]), torch.tensor([[True, False]]), torch.tensor([[0.2, 0.7]])
    assert torch.equal(common.fill_missing(y, mask, pred), torch.tensor([[1.0, 0.7]]))
    y = torch.tensor([[0.2, 0.4], [0.0, 1.0]])
    out = common.shift_label(y, torch.tensor([1, 0]), 0.5)
    assert torch.allclose(out, torch.tensor([[0.2, 0.7], [0.5, 1.0]]))
    assert torch.equal(y, torch.tensor([[0.2, 0.4], [0.0, 1.0]]))  # not in place
