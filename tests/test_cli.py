"""The command line end to end on a tiny generated CelebA-format root (a few steps each)."""
import json
import os

import pytest
import torch
from PIL import Image

from dualvae.cli import main
from dualvae.kernels import HashedMask


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synth"))
    assert main(["synth", "--out", root, "--num", "120", "--seed", "3", "--workers", "1"]) == 0
    return root


def test_cli_pipeline(synth_root, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", synth_root, "--out", str(run), "--steps", "3", "--batch-size", "8",
                 "--latent-dim", "16", "--missing-ratio", "0.5", "--workers", "1"]) == 0
    assert (run / "model.pt").exists() and (run / "log.csv").exists() and (run / "loss.png").exists()
    ckpt = torch.load(run / "model.pt", weights_only=True)
    mask = ckpt["label_mask"]  # saved with the run as its definition, not as a dense (N, 40) tensor
    assert ckpt["step"] == 3 and set(mask) == {"seed", "missing_ratio", "rows"} and mask["missing_ratio"] == 0.5
    dense = HashedMask(**mask).dense(40)
    assert dense.shape == (len(mask["rows"]), 40) and 0.3 < dense.float().mean() < 0.7

    clf = tmp_path / "clf.pt"
    assert main(["train-classifier", "--data", synth_root, "--out", str(clf), "--steps", "2", "--batch-size", "8",
                 "--workers", "1"]) == 0
    report = json.loads((tmp_path / "clf.json").read_text())
    assert set(report["attributes"]) == set(ckpt["attr_names"]) and report["split"] == "test"

    grid = tmp_path / "grid.png"
    assert main(["transfer", "--model", str(run / "model.pt"), "--data", synth_root, "--num-images", "2",
                 "--lam", "2", "--domains", "Smiling,Male,Bald", "--out", str(grid)]) == 0
    w, h = Image.open(grid).size
    assert w >= 4 * 64 and h >= 2 * 64  # 2 rows; original + 3 domains

    out = tmp_path / "cis.json"
    assert main(["cis", "--model", str(run / "model.pt"), "--classifier", str(clf), "--data", synth_root,
                 "--num-images", "3", "--domains", "5", "--lam", "1.5", "--out", str(out)]) == 0
    cis = json.loads(out.read_text())
    assert set(cis) == {"ts", "rs", "cis", "lam", "num_images", "domains"}
    assert cis["num_images"] == 3 and cis["lam"] == 1.5 and len(cis["domains"]) == 5
    assert cis["cis"] == pytest.approx(cis["ts"] + cis["rs"])
    printed = capsys.readouterr().out
    assert "CIS" in printed and str(out) in printed

    # a lam sweep in one pass: one entry per lam with the same keys, a table, and the rs/ts scatter
    sweep, png = tmp_path / "sweep.json", tmp_path / "sweep.png"
    assert main(["cis", "--model", str(run / "model.pt"), "--classifier", str(clf), "--data", synth_root,
                 "--num-images", "3", "--domains", "Smiling,Male", "--lam", "0.5,1,2", "--max-batch", "5",
                 "--out", str(sweep), "--plot", str(png)]) == 0
    entries = json.loads(sweep.read_text())
    assert [e["lam"] for e in entries] == [0.5, 1.0, 2.0]
    assert all(set(e) == set(cis) and e["domains"] == ["Smiling", "Male"] for e in entries)
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.split()[0] in ("0.5", "1", "2") for line in lines if line.strip()) == 3
    assert Image.open(png).size[0] > 100
    assert main(["cis", "--model", str(run / "model.pt"), "--classifier", str(clf), "--data", synth_root,
                 "--lam", "1,1", "--out", str(sweep)]) == 2
    assert "lam has repeated values" in capsys.readouterr().err


def test_cli_errors_are_clear(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--steps", "1"]) == 2
    assert "list_attr_celeba.txt" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["cis", "--model", "m.pt"])  # missing required flags


def test_demo_tiny(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--num", "150", "--steps", "2", "--classifier-steps", "2",
                 "--batch-size", "8", "--num-images", "4", "--val-images", "3", "--lams", "1,2",
                 "--domains", "40"]) == 0
    cis = json.loads((out / "cis.json").read_text())
    assert cis["lam"] in (1.0, 2.0) and cis["lam_chosen_on"] == "val" and len(cis["domains"]) == 40
    assert os.path.exists(out / "transfer_grid.png") and os.path.exists(out / "transfer_best.png")
    printed = capsys.readouterr().out
    assert "transfer grid" in printed and str(out / "cis.json") in printed


COUNT_OPTIONS = [
    ("synth", ["--out", "OUT"], ["--num", "--images-per-person", "--workers"]),
    ("synth", ["--out", "OUT"], ["--seed"]),
    ("prepare", ["--celeba", "DATA", "--out", "OUT/c.h5"], ["--image-size", "--workers"]),
    ("train", ["--data", "DATA", "--out", "OUT"], ["--steps", "--batch-size", "--latent-dim", "--width",
                                                   "--image-size", "--limit", "--ckpt-every", "--keep-ckpts",
                                                   "--log-every"]),
    ("train", ["--data", "DATA", "--out", "OUT"], ["--seed", "--workers"]),
    ("train-classifier", ["--data", "DATA", "--out", "OUT/f.pt"], ["--steps", "--batch-size", "--width",
                                                                   "--image-size", "--limit"]),
    ("train-classifier", ["--data", "DATA", "--out", "OUT/f.pt"], ["--seed", "--workers"]),
    ("transfer", ["--model", "M", "--data", "DATA", "--out", "OUT/g.png"], ["--num-images"]),
    ("cis", ["--model", "M", "--classifier", "F", "--data", "DATA", "--out", "OUT/c.json"],
     ["--num-images", "--max-batch"]),
    ("demo", ["--out", "OUT"], ["--num", "--steps", "--classifier-steps", "--batch-size", "--width", "--num-images",
                                "--val-images", "--domains"]),
    ("demo", ["--out", "OUT"], ["--seed"]),
    ("experiment", ["all", "--data", "DATA", "--out", "OUT"], ["--seeds", "--jobs"]),
    ("explore", ["--model", "M", "--data", "DATA", "--out", "OUT"], ["--num-images", "--port"]),
]


@pytest.mark.parametrize("command, required, options", COUNT_OPTIONS)
def test_every_count_option_refuses_out_of_range_values(command, required, options, tmp_path, capsys):
    """`dualvae train --steps -3` and its kind: refused before anything runs or is written, naming the option
    and the least value (1 for counts; 0 for seeds, worker counts, where 0 means "in this process", and explore's
    port, where 0 means "the system picks one")."""
    args = [str(tmp_path / "out") if a == "OUT" else a.replace("OUT", str(tmp_path / "out")) for a in required]
    args = [str(tmp_path) if a == "DATA" else a for a in args]
    for option in options:
        zero_ok = option in ("--seed", "--port") or (option == "--workers" and command in ("train", "train-classifier"))
        least = 0 if zero_ok else 1
        for bad in (least - 1, -3):
            assert main([command, *args, option, str(bad)]) == 2
            err = capsys.readouterr().err
            assert f"dualvae {command}: error: {option} must be >= {least}, got {bad}" in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bad", ["0", "-2"])
def test_a_domain_count_below_one_is_refused(tmp_path, capsys, bad):
    assert main(["transfer", "--model", "m.pt", "--data", str(tmp_path), "--out", str(tmp_path / "g.png"),
                 "--domains", bad]) == 2
    assert f"--domains must be a count >= 1 or label names, got {bad}" in capsys.readouterr().err


def test_counts_are_checked_for_configs_built_in_python(tmp_path):
    from dualvae.training import TrainConfig, train

    with pytest.raises(ValueError, match=r"train: steps must be >= 1, got -3"):
        train(TrainConfig(data=str(tmp_path), out=str(tmp_path / "run"), steps=-3))
    assert not (tmp_path / "run").exists()


def test_the_demo_picture_shows_transfers_that_change_the_target_and_keep_the_rest():
    import torch

    from dualvae.cis import CISResult
    from dualvae.demo import best_domains

    M = torch.zeros(2, 4, 4)
    M[:, 0, 0], M[:, 1, 1], M[:, 2, 2], M[:, 3, 3] = 0.9, 0.6, 0.2, 0.7  # ts per domain
    M[:, 0, 1:] = 0.3  # domain 0 moves the others most; domain 2's target barely rises
    M[:, 1, 0] = 0.1
    M[:, 3, 0] = 0.05
    r = CISResult(ts=0.0, rs=0.0, cis=0.0, lam=32.0, domains=[5, 6, 7, 8], M=M, f_original=torch.zeros(2, 4))
    assert best_domains(r, 4) == [8, 6, 5, 7]  # rs order among ts >= 0.5, then the rest by ts
    assert best_domains(r, 2) == [8, 6]
