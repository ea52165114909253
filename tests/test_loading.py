"""dualvae.checkpoint.load_model, the one loader of every checkpoint kind: each kind round-trips through it and
through its class's entry point; a wrong kind, a config that does not build, weights that do not fit and a
pickled object each raise naming the file."""
import pytest
import torch

from dualvae import baselines
from dualvae.checkpoint import (MODEL_KINDS, UnsafeCheckpointError, build, config_class, kinds_of, load_model,
                                model_class, save_atomic)
from dualvae.classifier import AttributeClassifier
from dualvae.model import DualVAE
from dualvae.transfer_model import TransferModel

NAMES = ["a", "b", "c"]


def tiny(kind: str):
    torch.manual_seed(0)
    if kind == "dualvae":
        return DualVAE(image_size=16, latent_dim=8, num_labels=3, width=8)
    if kind == "classifier":
        return AttributeClassifier(num_labels=3, image_size=16, width=8)
    extra = {"cvae": dict(width=8, latent_dim=8), "fader": dict(width=8, max_channels=32),
             "stargan": dict(g_width=8, d_width=8, res_blocks=1)}[kind]
    return baselines.build(kind, image_size=16, num_labels=3, **extra)


def saved(kind: str, tmp_path, override=None) -> tuple[torch.nn.Module, str]:
    """A tiny model of `kind` and its checkpoint file, with entries of the checkpoint dict replaced by `override`."""
    model = tiny(kind).eval()
    model.attr_names = NAMES
    state = {**model.checkpoint_state(), **(override or {})}
    return model, save_atomic(state, str(tmp_path / f"{kind}.pt"))


def entry_point(kind: str):
    return {"dualvae": DualVAE.load, "classifier": AttributeClassifier.load}.get(kind, baselines.load)


@pytest.mark.parametrize("kind", sorted(MODEL_KINDS))
def test_every_kind_round_trips(kind, tmp_path):
    model, path = saved(kind, tmp_path)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    for load in (load_model, lambda p: load_model(p, kind), entry_point(kind)):
        back = load(path)
        assert type(back) is model_class(kind) and not back.training and back.attr_names == NAMES
        for k, v in model.state_dict().items():
            assert torch.equal(back.state_dict()[k], v), k
        if isinstance(back, TransferModel):
            assert torch.equal(back.transfer_all(x, [0, 2], 1.5), model.transfer_all(x, [0, 2], 1.5))
        else:
            assert torch.equal(back.probs(x), model.probs(x))
    if kind != "classifier":
        assert type(TransferModel.load(path)) is model_class(kind)  # any transfer kind


@pytest.mark.parametrize("kind, load, expected", [
    ("classifier", DualVAE.load, r"'dualvae' checkpoint"),
    ("dualvae", AttributeClassifier.load, r"'classifier' checkpoint"),
    ("dualvae", baselines.load, r"'cvae' or 'fader' or 'stargan' checkpoint"),
    ("cvae", DualVAE.load, r"'dualvae' checkpoint"),
    ("classifier", TransferModel.load, r"'dualvae' or 'cvae'"),
])
def test_a_wrong_kind_names_the_file_and_both_kinds(kind, load, expected, tmp_path):
    _, path = saved(kind, tmp_path)
    with pytest.raises(ValueError, match=rf"checkpoint {path} holds '{kind}', expected a {expected}"):
        load(path)


def test_an_unknown_kind_in_the_file_or_asked_for(tmp_path):
    _, path = saved("dualvae", tmp_path, {"kind": "vae"})
    with pytest.raises(ValueError, match=rf"checkpoint {path} holds 'vae'"):
        load_model(path)
    with pytest.raises(ValueError, match="unknown model kind 'vae'"):
        load_model(path, "vae")


@pytest.mark.parametrize("kind", ["dualvae", "stargan", "classifier"])
def test_a_config_that_does_not_build_names_the_file(kind, tmp_path):
    model = tiny(kind)
    config = dict(model.config if isinstance(model.config, dict) else model.checkpoint_state()["config"])
    _, path = saved(kind, tmp_path, {"config": {**config, "no_such_option": 1}})
    with pytest.raises(ValueError, match=rf"checkpoint {path}: its config .* does not build the model"):
        load_model(path, kind)
    _, path = saved(kind, tmp_path, {"config": "not a dict"})
    with pytest.raises(ValueError, match=rf"checkpoint {path} has no config dict"):
        load_model(path, kind)


def test_a_config_value_the_model_refuses_names_the_file(tmp_path):
    config = tiny("dualvae").checkpoint_state()["config"]
    _, path = saved("dualvae", tmp_path, {"config": {**config, "image_size": 12}})
    with pytest.raises(ValueError, match=rf"checkpoint {path}: its config .* power of two"):
        DualVAE.load(path)


@pytest.mark.parametrize("kind", sorted(MODEL_KINDS))
def test_weights_that_do_not_fit_name_the_file(kind, tmp_path):
    weights = tiny(kind).state_dict()
    first = next(iter(weights))
    bad = {**weights, first: torch.zeros(1)}
    _, path = saved(kind, tmp_path, {"model": bad})
    with pytest.raises(ValueError, match=rf"checkpoint {path}: its weights do not fit {model_class(kind).__name__}"):
        load_model(path)
    missing = dict(weights)
    missing.pop(first)
    _, path = saved(kind, tmp_path, {"model": missing})
    with pytest.raises(ValueError, match=rf"checkpoint {path}: its weights do not fit"):
        entry_point(kind)(path)


class Payload:
    def __reduce__(self):
        return (print, ("this ran",))


@pytest.mark.parametrize("kind", sorted(MODEL_KINDS))
def test_a_pickled_object_is_refused_naming_the_file(kind, tmp_path, capsys):
    model = tiny(kind)
    path = str(tmp_path / "m.pt")
    torch.save({**model.checkpoint_state(), "extra": Payload()}, path)  # torch.save: save_atomic refuses it
    with pytest.raises(UnsafeCheckpointError, match=rf"checkpoint {path} holds pickled Python objects"):
        load_model(path, kind)
    assert "this ran" not in capsys.readouterr().out


def test_a_missing_or_unreadable_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*nope.pt"):
        load_model(str(tmp_path / "nope.pt"))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=rf"checkpoint {junk} could not be read"):
        load_model(str(junk))


def test_one_registry_builds_every_kind_and_names_the_groups():
    from dualvae.baselines.common import LabelConditioned

    assert kinds_of(TransferModel) == ("dualvae", "cvae", "fader", "stargan")
    assert kinds_of(LabelConditioned) == baselines.KINDS == ("cvae", "fader", "stargan")
    assert set(baselines.MODELS) == set(baselines.KINDS)
    for kind in MODEL_KINDS:
        model = tiny(kind)
        assert type(model) is model_class(kind)
        cfg = config_class(kind)
        if cfg is None:
            assert kind == "classifier" and isinstance(model.config, dict)
        else:
            assert type(model.config) is cfg and model_class(kind).kind == kind
            assert baselines.MODELS.get(kind, (model_class(kind), cfg)) == (model_class(kind), cfg)
        config = model.checkpoint_state()["config"]
        assert type(build(kind, **config)) is model_class(kind)
    with pytest.raises(ValueError, match="unknown model kind 'vae'"):
        build("vae")
