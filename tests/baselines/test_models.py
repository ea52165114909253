"""CVAE, FaderNetworks, StarGAN: shapes, a few training steps lower the loss on a fixed batch, transfer_all,
missing labels change no gradient, checkpoints round-trip. Tiny networks at 16x16."""
import pytest
import torch

from dualvae import baselines
from dualvae.cis import conditional_inception_score

N_LABELS, SIZE = 6, 16
CONFIGS = {"cvae": dict(width=8, latent_dim=8),
           "fader": dict(width=8, max_channels=32, ramp_steps=1, lambda_lat_dis=1e-2),
           "stargan": dict(g_width=8, d_width=8, res_blocks=1, n_critic=1)}


def make(kind, seed=0):
    torch.manual_seed(seed)
    return baselines.build(kind, image_size=SIZE, num_labels=N_LABELS, **CONFIGS[kind])


def batch(seed=0, b=8):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, SIZE, SIZE, generator=g) * 2 - 1
    y = (torch.rand(b, N_LABELS, generator=g) > 0.5).float()
    mask = (torch.rand(b, N_LABELS, generator=g) > 0.5).float()
    return x, y, mask


def fixed_losses(model, x, y, mask) -> dict:
    """Every loss the model trains, on a fixed batch with fixed randomness (eps, dropout, GP mix, targets)."""
    torch.manual_seed(123)
    if model.kind == "cvae":
        return {"loss": model.loss(x, y, mask)[0]}
    if model.kind == "fader":
        ae, pred, _ = model.ae_loss(x, y, mask, step=1)
        return {"ae": ae, "pred": pred, "dis": model.dis_loss(x, y, mask)[0]}
    y_src = model.source_labels(x, y, mask)
    c_trg = y_src.flip(0)
    return {"d": model.d_loss(x, y, mask, c_trg)[0], "g": model.g_loss(x, y_src, c_trg)[0]}


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_shapes_and_transfer_all(kind):
    model = make(kind).eval()
    x, _, _ = batch(b=3)
    out = model.transfer_all(x, [0, 2, 5], lam=1.5)
    assert out.shape == (3, 3, 3, SIZE, SIZE)
    assert out.abs().max() <= 1.0
    # chunking does not change the result; domains=None is all of them
    assert torch.allclose(model.transfer_all(x, [0, 2, 5], lam=1.5, max_batch=2), out, atol=1e-5)
    assert model.transfer_all(x[:1], None, lam=1.0).shape == (1, N_LABELS, 3, SIZE, SIZE)
    assert model.predict_labels(x).shape == (3, N_LABELS)
    with pytest.raises(ValueError, match=r"x has shape \(3, 3, 8, 8\)"):
        model.transfer_all(x[:, :, :8, :8], [0])
    with pytest.raises(ValueError, match="domains \\[6\\] out of range"):
        model.transfer_all(x, [6])


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_training_steps_lower_the_loss_on_a_fixed_batch(kind):
    model = make(kind)
    x, y, mask = batch(seed=1)
    opts = model.make_optimizers()
    model.train()
    before = {k: v.item() for k, v in fixed_losses(model, x, y, mask).items()}
    for step in range(8):
        model.train_step(opts, x, y, mask, step=step, total_steps=8)
    after = {k: v.item() for k, v in fixed_losses(model, x, y, mask).items()}
    key = {"cvae": "loss", "fader": "ae", "stargan": "g"}[kind]
    assert after[key] < before[key], (before, after)
    if kind == "fader":
        assert after["pred"] < before["pred"] and after["dis"] < before["dis"], (before, after)
    if kind == "stargan":
        assert after["d"] < before["d"], (before, after)


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_missing_labels_change_no_gradient(kind):
    x, y, mask = batch(seed=2)
    y_other = torch.where(mask.bool(), y, 1 - y)  # differs from y at every missing entry only
    grads = []
    for labels in (y, y_other):
        model = make(kind).train()
        losses = fixed_losses(model, x, labels, mask)
        grads.append(torch.autograd.grad(sum(losses.values()), [p for p in model.parameters()],
                                         allow_unused=True))
    for g1, g2 in zip(*grads):
        assert (g1 is None) == (g2 is None)
        if g1 is not None:
            assert torch.equal(g1, g2)
    # and the observed entries do matter (the test can fail)
    model = make(kind).train()
    flipped = fixed_losses(model, x, 1 - y, mask)
    model = make(kind).train()
    same = fixed_losses(model, x, y, mask)
    assert any(not torch.equal(flipped[k], same[k]) for k in same)


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_fit_save_load_and_cis(kind, tmp_path):
    from dualvae.checkpoint import save_atomic

    model = make(kind)
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (16, 3, SIZE, SIZE), dtype=torch.uint8, generator=g)
    labels = (torch.rand(16, N_LABELS, generator=g) > 0.5).float()
    rows = baselines.fit(model, images, labels, torch.rand(16, N_LABELS, generator=g) > 0.9, steps=3,
                         batch_size=8, progress=False, log_every=1)
    assert [r["step"] for r in rows] == [0, 1, 2] and not model.training
    path = save_atomic(model.checkpoint_state(), str(tmp_path / "m.pt"))
    loaded = baselines.load(path)
    x = images[:2].float() / 127.5 - 1
    assert torch.equal(loaded.transfer_all(x, [1, 3], 2.0), model.transfer_all(x, [1, 3], 2.0))
    f = lambda imgs: torch.sigmoid(imgs.mean((2, 3)).repeat(1, 2))  # noqa: E731  (B, 6) "classifier"
    r = conditional_inception_score(loaded, f, x, domains=[0, 1, 2], lam=[1.0, 2.0])
    loop = conditional_inception_score(loaded, f, x, domains=[0, 1, 2], lam=[1.0, 2.0], batched=False)
    for lam in (1.0, 2.0):
        assert abs(r[lam].cis - loop[lam].cis) < 1e-5


def test_every_baseline_uses_lam_as_its_strength():
    x, _, _ = batch(b=2)
    for kind in ("cvae", "fader", "stargan"):
        model = make(kind).eval()
        a, b = model.transfer_all(x, [0], 0.5), model.transfer_all(x, [0], 3.0)
        assert not torch.equal(a, b), kind


def test_build_names_unknown_kind():
    with pytest.raises(ValueError, match="unknown baseline 'vae'"):
        baselines.build("vae")


def test_stargan_generator_equals_the_concatenated_conv_in_float64():
    """G's first conv computes the label maps' part from the weights alone; it must be the conv of cat[x, maps]
    (borders included, where the zero padding cuts the kernel), values and gradients."""
    from dualvae.baselines import common

    torch.manual_seed(0)
    m = baselines.build("stargan", image_size=16, num_labels=5, g_width=8, d_width=8, res_blocks=1).double()
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64, requires_grad=True)
    c = torch.rand(3, 5, dtype=torch.float64, requires_grad=True)
    got = m.G(x, c)
    want = m.G.net(torch.cat([x, common.label_maps(c, 16)], 1))
    assert torch.allclose(got, want, rtol=0, atol=1e-12)
    wrt = [x, c, m.G.net[0].weight]
    for a, b in zip(torch.autograd.grad(got.square().sum(), wrt), torch.autograd.grad(want.square().sum(), wrt)):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_domains_by_name_and_source_labels_checked(kind):
    model = make(kind).eval()
    model.attr_names = [f"a{i}" for i in range(N_LABELS)]
    x, y, _ = batch(b=2)
    assert torch.equal(model.transfer_all(x, ["a4", "a1"], 1.0), model.transfer_all(x, [4, 1], 1.0))
    assert torch.equal(model.transfer(x, "a2"), model.transfer_all(x, [2])[:, 0])
    torch.testing.assert_close(model.transfer_all(x, [3], source_labels=y)[:, 0],
                               model.transfer_rows(x, y, torch.tensor([3, 3]), 1.0), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="unknown domain 'nope'"):
        model.transfer_all(x, ["nope"])
    with pytest.raises(ValueError, match=r"source_labels have shape \(2, 5\), expected \(2, 6\)"):
        model.transfer_all(x, [0], source_labels=y[:, :5])


def test_fader_adversary_ramps_over_a_third_then_holds_and_logs_its_accuracy():
    model = make("fader")
    model.config.ramp_steps = None
    total = 30
    weights = [model.lambda_dis(t, total) for t in range(total)]
    full = model.config.lambda_lat_dis
    assert weights[0] == 0 and weights[5] == pytest.approx(full / 2) and all(w == full for w in weights[10:])
    x, y, mask = batch(b=6)
    stats = model.train_step(model.make_optimizers(), x, y, mask, step=3, total_steps=total)
    assert 0 <= stats["dis_acc"] <= 1 and 0.5 <= stats["dis_chance"] <= 1
    assert stats["lambda_dis"] == pytest.approx(full * 3 / 10)
    # The majority-answer accuracy of the observed labels: a column of 1, 1, 0 (all observed) scores 2/3.
    y3 = torch.tensor([[1.0], [1.0], [0.0]])
    one = baselines.build("fader", image_size=SIZE, num_labels=1, **CONFIGS["fader"])
    _, s = one.dis_loss(x[:3], y3)
    assert s["dis_chance"] == pytest.approx(2 / 3)


def test_stargan_stats_carry_the_latest_generator_update():
    model = make("stargan")
    model.config.n_critic = 3
    opts = model.make_optimizers()
    x, y, mask = batch()
    first = model.train_step(opts, x, y, mask, step=0)
    assert "g_rec" not in first  # no G update yet
    model.train_step(opts, x, y, mask, step=1)
    g = model.train_step(opts, x, y, mask, step=2)  # the n_critic-th step updates G
    later = model.train_step(opts, x, y, mask, step=3)
    assert {"g_loss", "g_cls", "g_rec"} <= set(later) and later["g_rec"] == g["g_rec"]
