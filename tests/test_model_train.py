"""Model shapes, the losses, Algorithm 1's parameter ownership, checkpoint round trip, TrainConfig's help."""

import pytest
import torch

from dualvae.data import draw_label_mask
from dualvae.model import DualVAE
from dualvae.training import TrainConfig, make_optimizers, train_step


def tiny_model(**kw):
    torch.manual_seed(0)
    return DualVAE(image_size=16, latent_dim=8, num_labels=5, width=8, **kw)


def batch(B=6, n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, 3, 16, 16, generator=g) * 2 - 1
    y = (torch.rand(B, n, generator=g) > 0.5).float()
    mask = (torch.rand(B, n, generator=g) > 0.3).float()
    eps = torch.randn(B, 8, generator=g)
    return x, y, mask, eps


def test_shapes_and_transfer():
    m = tiny_model().eval()
    x, *_ = batch()
    mu, logvar = m.encode(x)
    assert mu.shape == logvar.shape == (6, 8)
    out = m.decode(mu)
    assert out.shape == x.shape and out.abs().max() <= 1
    assert m.label_logits(mu).shape == (6, 5)
    t = m.transfer(x, 2, lam=3.0)
    torch.testing.assert_close(t, m.decode(mu + 3.0 * m.U[2]))
    per_image = m.transfer(x[:2], [1, 4], lam=1.0)
    torch.testing.assert_close(per_image, m.decode(mu[:2] + m.U[[1, 4]]))
    with pytest.raises(ValueError, match="out of range"):
        m.transfer(x, 5)
    with pytest.raises(ValueError, match="2 domains for 6 images"):
        m.transfer(x, [0, 1])


def test_domain_names():
    m = tiny_model()
    m.attr_names = ["a", "b", "c", "d", "e"]
    assert m.domain_indices(["c", 0]) == [2, 0]
    with pytest.raises(ValueError, match="unknown domain 'z'"):
        m.domain_indices("z")


def test_bad_image_size():
    with pytest.raises(ValueError, match="power of two"):
        DualVAE(image_size=48)


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before, module):
    return {k for k, v in module.state_dict().items() if v.dtype.is_floating_point and not torch.equal(before[k], v)}


def test_algorithm1_steps_touch_only_their_parameters(monkeypatch):
    """g moves encoder + decoder (never U); g_e moves encoder + U (never the decoder)."""
    m = tiny_model().train()
    cfg = TrainConfig(data="", out="", latent_dim=8)
    g, g_e = make_optimizers(m, cfg)
    assert {id(p) for grp in g.param_groups for p in grp["params"]} == \
        {id(p) for p in [*m.encoder.parameters(), *m.decoder.parameters()]}
    assert {id(p) for grp in g_e.param_groups for p in grp["params"]} == \
        {id(p) for p in [*m.encoder.parameters(), m.U]}

    # Record what each optimizer step changes.
    changes = {}
    for name, opt in (("g", g), ("g_e", g_e)):
        orig = opt.step

        def step(*a, _name=name, _orig=orig, **kw):
            before = (_snapshot(m.encoder), _snapshot(m.decoder), m.U.detach().clone())
            out = _orig(*a, **kw)
            changes[_name] = (_changed(before[0], m.encoder), _changed(before[1], m.decoder),
                              not torch.equal(before[2], m.U))
            return out

        monkeypatch.setattr(opt, "step", step)
    x, y, mask, eps = batch()
    stats = train_step(m, g, g_e, x, y, mask, eps, cfg)
    enc_g, dec_g, u_g = changes["g"]
    enc_e, dec_e, u_e = changes["g_e"]
    assert enc_g and dec_g and not u_g  # VAE step: encoder + decoder, U untouched
    assert enc_e and not dec_e and u_e  # label step: encoder + U, decoder untouched
    assert set(stats) >= {"recon", "kl", "label_bce", "label_acc"}


def test_missing_labels_give_no_gradient_to_U_rows():
    m = tiny_model().train()
    cfg = TrainConfig(data="", out="", latent_dim=8, label_optimizer="sgd", label_lr=0.1)
    g, g_e = make_optimizers(m, cfg)
    x, y, mask, eps = batch()
    mask[:, 3] = 0  # domain 3 never observed in this batch
    u3 = m.U[3].detach().clone()
    u0 = m.U[0].detach().clone()
    train_step(m, g, g_e, x, y, mask, eps, cfg)
    assert torch.equal(m.U[3], u3) and not torch.equal(m.U[0], u0)


def test_alpha_scales_the_sgd_label_step_only():
    x, y, mask, eps = batch()
    deltas = {}
    for opt_name in ("sgd", "adam"):
        for alpha in (1.0, 10.0):
            m = tiny_model().train()
            cfg = TrainConfig(data="", out="", latent_dim=8, label_optimizer=opt_name, label_lr=1e-3, alpha=alpha)
            g, g_e = make_optimizers(m, cfg)
            u = m.U.detach().clone()
            train_step(m, g, g_e, x, y, mask, eps, cfg)
            deltas[opt_name, alpha] = (m.U.detach() - u)
    torch.testing.assert_close(deltas["sgd", 10.0], 10 * deltas["sgd", 1.0], rtol=1e-4, atol=1e-8)
    torch.testing.assert_close(deltas["adam", 10.0], deltas["adam", 1.0], rtol=1e-4, atol=1e-7)


def test_label_mask_is_a_function_of_seed_and_ratio():
    a = draw_label_mask((200, 40), 0.9, seed=1)
    assert torch.equal(a, draw_label_mask((200, 40), 0.9, seed=1))
    assert not torch.equal(a, draw_label_mask((200, 40), 0.9, seed=2))
    assert abs(a.float().mean().item() - 0.1) < 0.02
    assert draw_label_mask((10, 4), 0.0, seed=0).all()
    with pytest.raises(ValueError, match="missing_ratio"):
        draw_label_mask((2, 2), 1.0, seed=0)


def test_checkpoint_round_trip(tmp_path):
    from dualvae.checkpoint import save_atomic

    m = tiny_model()
    m.attr_names = list("abcde")
    with torch.no_grad():
        m.U.normal_()
    path = save_atomic(m.checkpoint_state(), str(tmp_path / "run" / "model.pt"))
    loaded = DualVAE.load(path)
    assert loaded.attr_names == list("abcde") and not loaded.training
    for (k, v), (k2, v2) in zip(m.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    x, *_ = batch()
    torch.testing.assert_close(loaded.transfer(x, "c", 2.0), m.eval().transfer(x, "c", 2.0))
    assert list(tmp_path.joinpath("run").iterdir()) == [tmp_path / "run" / "model.pt"]  # no temp file left


def test_checkpoint_errors(tmp_path):
    from dualvae.checkpoint import save_atomic

    with pytest.raises(FileNotFoundError, match="nope.pt"):
        DualVAE.load(str(tmp_path / "nope.pt"))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt could not be read"):
        DualVAE.load(str(bad))
    other = save_atomic({"kind": "classifier"}, str(tmp_path / "clf.pt"))
    with pytest.raises(ValueError, match="expected a 'dualvae' checkpoint"):
        DualVAE.load(other)


def test_failed_save_keeps_previous_file(tmp_path, monkeypatch):
    from dualvae import checkpoint

    path = str(tmp_path / "model.pt")
    checkpoint.save_atomic({"kind": "dualvae", "v": 1}, path)

    def boom(obj, f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        checkpoint.save_atomic({"kind": "dualvae", "v": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["v"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_training_runs_through_auto_and_backends_agree():
    """The losses go through dualvae.kernels with the backend "auto" resolves to, once for the run; the C++ CPU
    kernels, the Triton kernels (interpreter) and the reference give the same parameters after a few Algorithm 1
    steps."""
    import dualvae.kernels as K

    calls = []
    for name in ("reparameterize_kl", "dual_bce"):
        orig = getattr(K, name)

        def spy(*a, _orig=orig, _name=name, **kw):
            calls.append((_name, kw.get("backend")))
            return _orig(*a, **kw)

        setattr(K, name, spy)
    try:
        states, logs = {}, {}
        for backend in ("auto", "reference", "triton", "cpu"):
            m = tiny_model().train()
            cfg = TrainConfig(data="", out="", latent_dim=8, kernel_backend=backend)
            g, g_e = make_optimizers(m, cfg)
            logs[backend] = []
            for step in range(3):
                x, y, mask, eps = batch(seed=step)
                logs[backend].append(train_step(m, g, g_e, x, y, mask, eps, cfg))
            states[backend] = _snapshot(m)
    finally:
        for name in ("reparameterize_kl", "dual_bce"):
            setattr(K, name, getattr(K.ops, name))
    auto = K.resolve_backend("auto", device=torch.device("cpu"))
    assert auto == ("cpu" if K.has_compiled_ops() else "reference")
    assert ("reparameterize_kl", auto) in calls[:3] and ("dual_bce", auto) in calls[:3]  # the "auto" run's step
    # Conv biases feeding BatchNorm have a zero gradient up to rounding, which Adam scales up to lr-sized steps;
    # they (and the running means they shift) differ by rounding noise on any two backends, so they are left out.
    noise = {k for k in states["reference"] if k.endswith("running_mean")}
    for name, seq in tiny_model().named_modules():
        if isinstance(seq, torch.nn.Sequential):
            for i in range(len(seq) - 1):
                if isinstance(seq[i + 1], torch.nn.BatchNorm2d) and getattr(seq[i], "bias", None) is not None:
                    noise.add(f"{name}.{i}.bias")
    assert noise >= {"encoder.conv.0.bias", "decoder.deconv.0.bias"}
    for backend in ("auto", "triton", "cpu"):
        for a, b in zip(logs[backend], logs["reference"]):
            for key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (backend, key)
        for k, v in states["reference"].items():
            if k not in noise:
                torch.testing.assert_close(states[backend][k], v, rtol=1e-4, atol=1e-6, msg=f"{backend}: {k}")
    assert states["triton"]["U"].ne(states["reference"]["U"]).any()  # the triton path really ran its own kernels
    if K.has_compiled_ops():  # auto on CPU tensors is the C++ kernels, which round unlike the reference
        assert states["cpu"]["U"].ne(states["reference"]["U"]).any()
        for k, v in states["cpu"].items():
            assert torch.equal(states["auto"][k], v), k


def test_sample_latent_and_the_two_losses():
    """sample_latent is z = mu + exp(logvar / 2) eps with the KL per row; neg_elbo and label_nll are row sums."""
    from dualvae import losses
    from dualvae.kernels import reference

    m = tiny_model().eval()
    x, y, mask, eps = batch()
    z, kl, mu, logvar = losses.sample_latent(m, x, eps, "reference")
    torch.testing.assert_close(z, mu + torch.exp(0.5 * logvar) * eps)
    torch.testing.assert_close(kl, reference.kl_standard_normal(mu, logvar))
    recon_sum, kl_sum = losses.neg_elbo(m, x, eps, 0.2, "reference")
    torch.testing.assert_close(recon_sum, losses.gaussian_recon_nll(m.decode(z), x, 0.2).sum())
    torch.testing.assert_close(kl_sum, kl.sum())
    nll, correct, observed = losses.label_nll(m, x, y, mask, eps, "reference")
    logits = z @ m.U.t()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
    torch.testing.assert_close(nll, (bce * mask).sum())
    assert observed.item() == mask.sum().item()
    assert correct.item() == (((logits > 0).float() == y).float() * mask).sum().item()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # eps is drawn in fp32, mu is bf16 under autocast
        z16, _, mu16, _ = losses.sample_latent(m, x, eps, "reference")
    assert mu16.dtype == z16.dtype == torch.bfloat16


def test_loss_fns_resolve_the_backend_once(monkeypatch):
    import dualvae.kernels as K
    from dualvae.losses import LossFns

    m = tiny_model().train()
    resolved = []
    resolve = K.resolve_backend
    monkeypatch.setattr(K, "resolve_backend", lambda *a, **kw: resolved.append(a) or resolve(*a, **kw))
    auto = LossFns(m, 0.2)
    cfg = TrainConfig(data="", out="", latent_dim=8)
    g, g_e = make_optimizers(m, cfg)
    for step in range(2):
        train_step(m, g, g_e, *batch(seed=step), cfg, fns=auto)
    assert resolved == [("auto",)]  # at LossFns, not at every step
    monkeypatch.undo()
    assert auto.backend == K.resolve_backend("auto", device=torch.device("cpu"))
    assert auto.fused == K.has_compiled_ops()
    assert not LossFns(m, 0.2, backend="reference").fused
    with pytest.raises(ValueError, match="backend must be one of"):
        LossFns(m, 0.2, backend="fast")


def test_train_config_fields_carry_their_help():
    """`dualvae train`'s options and --help come from these fields: each has a one-line help, and its choices
    (where it has some) are the values the trainer accepts."""
    import dataclasses

    from dualvae import kernels
    from dualvae.precision import PRECISIONS

    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for name, f in fields.items():
        text = f.metadata.get("help")
        assert text and "\n" not in text and text == text.strip(), name
        if "choices" in f.metadata and f.default is not None:
            assert f.default in f.metadata["choices"], name
    assert fields["data"].default is dataclasses.MISSING and fields["out"].default is dataclasses.MISSING
    assert set(fields["kernel_backend"].metadata["choices"]) == set(kernels.BACKENDS)
    assert set(fields["precision"].metadata["choices"]) == set(PRECISIONS)
    assert fields["label_optimizer"].metadata["choices"] == ("adam", "sgd")
    assert fields["data_backend"].metadata["choices"] == ("dali", "pil", "hdf5")


def test_label_nll_takes_sparse_labels_and_the_hashed_mask(monkeypatch):
    """label_nll with SparseLabels and a HashedMask (what the loaders give) equals it with their dense tensors,
    the accuracy counted over column chunks equals the whole-matrix count, and the observed count is the mask's."""
    from dualvae import losses
    from dualvae.kernels import HashedMask, SparseLabels

    m = tiny_model().eval()
    x, y, _, eps = batch()
    hm = HashedMask(7, 0.4, torch.tensor([3, 90, 5, 41, 0, 12]))
    dense_mask = hm.dense(5, torch.float32)
    assert 0 < dense_mask.sum() < dense_mask.numel()
    want = losses.label_nll(m, x, y, dense_mask, eps, "reference")
    monkeypatch.setattr(losses, "ACCURACY_CHUNK_ENTRIES", 12)  # 2 labels a chunk at B = 6
    for labels in (y, SparseLabels.from_dense(y)):
        got = losses.label_nll(m, x, labels, hm, eps, "reference")
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b)
    assert got[2].item() == want[2].item() == dense_mask.sum().item()  # the observed count: the mask's
    assert losses.label_nll(m, x, y, HashedMask(7, 0.0, hm.rows), eps, "reference")[2].item() == 30
    nll, _, observed = losses.label_nll(m, x, y, None, eps, "reference")
    torch.testing.assert_close(nll, losses.label_nll(m, x, y, torch.ones_like(y), eps, "reference")[0])
    assert observed.item() == 30


def test_a_step_without_metrics_takes_the_same_step():
    """metrics=False (the steps that log nothing) leaves out the accuracy and the bce (NaN), not the update."""
    import math

    states, stats = [], []
    for metrics in (True, False):
        m = tiny_model().train()
        cfg = TrainConfig(data="", out="", latent_dim=8)
        g, g_e = make_optimizers(m, cfg)
        stats.append(train_step(m, g, g_e, *batch(), cfg, metrics=metrics))
        states.append(_snapshot(m))
    assert math.isfinite(stats[0]["label_acc"]) and math.isnan(stats[1]["label_acc"])
    assert math.isnan(stats[1]["label_bce"]) and stats[1]["recon"] == stats[0]["recon"]
    for k, v in states[0].items():
        assert torch.equal(v, states[1][k]), k
