"""Checkpoints hold tensors and plain values only and load with weights_only=True: a file carrying a pickled
object is refused, naming the file and what it carries, and nothing in it runs."""
import os
import random
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from dualvae import baselines
from dualvae.checkpoint import UnsafeCheckpointError, check_plain, load_checkpoint, save_atomic
from dualvae.model import DualVAE
from dualvae.training.distributed import Dist

MARKER = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"dualvae-test-checkpoint-ran-{os.getpid()}")


class Payload:
    """What a malicious checkpoint carries: unpickling it would create MARKER."""

    def __reduce__(self):
        return (open, (MARKER, "w"))


class Custom:
    pass


@dataclass
class OldConfig:
    image_size: int = 16


def _dualvae_state():
    m = DualVAE(image_size=16, latent_dim=8, num_labels=3, width=8)
    m.attr_names = ["a", "b", "c"]
    return m.checkpoint_state()


@pytest.mark.parametrize("carried, name", [(Payload(), r"io\.open"), (Custom(), "Custom"),
                                           (OldConfig(), "OldConfig")])
def test_checkpoint_with_a_pickled_object_is_refused(tmp_path, carried, name):
    path = str(tmp_path / "model.pt")
    torch.save({**_dualvae_state(), "extra": carried}, path)  # torch.save, not save_atomic: that refuses it
    for load in (DualVAE.load, load_checkpoint, baselines.load):
        with pytest.raises(UnsafeCheckpointError, match=rf"checkpoint {path} holds pickled Python objects "
                                                        rf"\([^)]*{name}[^)]*\).*refused.*re-saved"):
            load(path)
    assert not os.path.exists(MARKER)  # nothing in the file ran


def test_old_checkpoint_with_numpy_rng_state_says_to_resave(tmp_path):
    path = str(tmp_path / "step-000000002.pt")
    torch.save({**_dualvae_state(), "rng": [{"numpy": np.random.get_state()}]}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"numpy.*older DualVAE.*re-saved"):
        load_checkpoint(path, kind="dualvae")


def test_auto_resume_stops_at_an_unsafe_checkpoint_instead_of_falling_back(tmp_path):
    from dualvae.training import TrainConfig
    from dualvae.training.state import find_resume

    ckpt = tmp_path / "run" / "ckpt"
    save_atomic({"kind": "dualvae", "v": 1}, str(ckpt / "step-000000002.pt"))
    torch.save({"kind": "dualvae", "extra": Custom()}, str(ckpt / "step-000000004.pt"))
    cfg = TrainConfig(data=str(tmp_path), out=str(tmp_path / "run"), resume="auto")
    with pytest.raises(UnsafeCheckpointError, match="step-000000004.pt"):
        find_resume(cfg, Dist(), lambda msg: None)


def test_truncated_file_is_unreadable_not_unsafe(tmp_path):
    path = save_atomic(_dualvae_state(), str(tmp_path / "m.pt"))
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"m\.pt could not be read") as e:
        load_checkpoint(path)
    assert not isinstance(e.value, UnsafeCheckpointError)


@pytest.mark.parametrize("value, where", [
    (OldConfig(), r"checkpoint\['config'\] is a test_checkpoint.OldConfig"),
    (np.zeros(3), r"checkpoint\['config'\] is a numpy.ndarray"),
    ({"lr": np.float64(0.1)}, r"checkpoint\['config'\]\['lr'\] is a numpy.float64"),
    ([1, Custom()], r"checkpoint\['config'\]\[1\] is a test_checkpoint.Custom"),
])
def test_save_refuses_what_load_would_refuse(tmp_path, value, where):
    path = tmp_path / "m.pt"
    with pytest.raises(TypeError, match=where):
        save_atomic({"kind": "dualvae", "config": value}, str(path))
    assert not os.listdir(tmp_path)  # nothing written, no temporary file left


def test_plain_values_round_trip(tmp_path):
    obj = {"kind": "dualvae", "t": torch.arange(3), "s": "x", "i": 1, "f": float("nan"), "b": True, "n": None,
           "l": [1, (2.0, "3")], "dtype": torch.bfloat16, "size": torch.Size([2, 3])}
    check_plain(obj)
    back = load_checkpoint(save_atomic(obj, str(tmp_path / "m.pt")), kind="dualvae")
    assert back["l"] == [1, (2.0, "3")] and back["dtype"] is torch.bfloat16 and back["size"] == (2, 3)
    assert torch.equal(back["t"], obj["t"]) and back["f"] != back["f"]


def test_every_model_kind_goes_through_one_loader(tmp_path):
    path = save_atomic(_dualvae_state(), str(tmp_path / "dualvae.pt"))
    with pytest.raises(ValueError, match=r"holds 'dualvae', expected a 'cvae' or 'fader' or 'stargan' checkpoint"):
        baselines.load(path)
    model = baselines.build("cvae", image_size=16, num_labels=3)
    model.attr_names = ["a", "b", "c"]
    state = model.checkpoint_state()
    loaded = baselines.load(save_atomic(state, str(tmp_path / "cvae.pt")))
    assert loaded.kind == "cvae" and loaded.attr_names == ["a", "b", "c"] and not loaded.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])
    bad = save_atomic({**state, "config": {**state["config"], "no_such_option": 1}}, str(tmp_path / "bad.pt"))
    with pytest.raises(ValueError, match=r"bad\.pt: its config .* does not build the model"):
        baselines.load(bad)


def test_rng_states_round_trip_through_a_checkpoint(tmp_path):
    from dualvae.training.state import rng_state, set_rng_state

    gen, d = torch.Generator().manual_seed(3), Dist()
    np.random.seed(5)
    np.random.randn(3)  # an odd count: numpy holds a cached Gaussian
    random.seed(9)
    random.gauss(0, 1)
    path = save_atomic({"rng": [rng_state(gen, d)]}, str(tmp_path / "rng.pt"))

    def draw():
        return [np.random.rand(4), np.random.randn(1), random.random(), random.gauss(0, 1), torch.rand(2),
                torch.rand(2, generator=gen)]

    first = draw()
    set_rng_state(load_checkpoint(path)["rng"][0], gen, d)
    for a, b in zip(first, draw()):
        assert np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("content", [b"", b"hello, this is a text file\n", bytes(random.Random(3).randrange(256)
                                                                               for _ in range(300))])
def test_a_file_that_is_not_a_checkpoint_gets_our_message(tmp_path, content):
    """Random bytes, a text file, an empty file: the message names the file, its size and what was expected,
    and never advises loading with weights_only=False."""
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError) as e:
        load_checkpoint(str(path))
    msg = str(e.value)
    assert not isinstance(e.value, UnsafeCheckpointError)
    assert msg.startswith(f"checkpoint {path} could not be read: the file ({len(content)} bytes) is not a readable "
                          f"checkpoint; expected a file written by torch.save"), msg
    assert "weights_only" not in msg and "trusted source" not in msg


def test_the_cli_names_a_file_that_is_not_a_checkpoint(tmp_path, capsys):
    from dualvae.cli import main

    path = tmp_path / "model.pt"
    path.write_text("not a model\n")
    assert main(["transfer", "--model", str(path), "--data", str(tmp_path), "--out", str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err
    assert f"checkpoint {path} could not be read: the file (12 bytes) is not a readable checkpoint" in err
    assert "weights_only" not in err
