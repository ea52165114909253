"""Model shapes, Algorithm 1's parameter ownership, checkpoint round trip."""
import copy

import pytest
import torch

from dualvae.model import DualVAE
from dualvae.training.loop import TrainConfig, draw_label_mask, make_optimizers, train_step


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
    """The model's losses go through dualvae.kernels with backend "auto"; the C++ CPU kernels, the Triton kernels
    (interpreter) and the reference give the same parameters after a few Algorithm 1 steps."""
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
            m = tiny_model(kernel_backend=backend).train()
            cfg = TrainConfig(data="", out="", latent_dim=8)
            g, g_e = make_optimizers(m, cfg)
            logs[backend] = []
            for step in range(3):
                x, y, mask, eps = batch(seed=step)
                logs[backend].append(train_step(m, g, g_e, x, y, mask, eps, cfg))
            states[backend] = _snapshot(m)
    finally:
        for name in ("reparameterize_kl", "dual_bce"):
            setattr(K, name, getattr(K.ops, name))
    assert ("reparameterize_kl", "auto") in calls and ("dual_bce", "auto") in calls
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
