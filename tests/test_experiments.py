"""`dualvae experiment` in its tiny form (16x16 networks, a few steps), so the commands cannot rot: every
command writes its files, runs are cached and shared, and the claims are judged from the numbers."""
import json
import os

import pytest

from dualvae import experiments as E
from dualvae.cli import main


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synth"))
    assert main(["synth", "--out", root, "--num", "120", "--seed", "3", "--workers", "1"]) == 0
    return root


def test_experiment_all_tiny_then_cached(synth_root, tmp_path, capsys):
    out = str(tmp_path / "exp")
    assert main(["experiment", "all", "--data", synth_root, "--out", out, "--budget", "tiny", "--seeds", "1",
                 "--quiet"]) == 0
    for name in ("table1.md", "table1.json", "fig4.png", "fig5.png", "fig6.png", "fig6.json", "fig6_images.png",
                 "claims.json", "timing-all.json"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    runs = sorted(os.listdir(os.path.join(out, "runs")))
    assert runs == sorted(r.name for r in set(E.table1_runs(1) + E.fig6_runs(1)))
    table = json.load(open(os.path.join(out, "table1.json")))
    assert set(table["table"]) == set(E.MODELS) and table["test_images"] == 4
    for m in E.MODELS:
        assert table["table"][m]["40"]["paper"]["mean"] == E.PAPER_TABLE1[m][40][0]
    md = open(os.path.join(out, "table1.md")).read()
    assert "| DualVAE |" in md and "+0.140 ± 0.020" in md
    claims = json.load(open(os.path.join(out, "claims.json")))
    assert len(claims) == 8 and all(isinstance(c["holds"], bool) for c in claims)
    ev = json.load(open(os.path.join(out, "runs", "stargan-s0.9-seed0", "eval.json")))
    assert ev["lam"] == 1.0 and set(ev["chosen"]) == {"20", "40"}

    # A second command reuses the cached runs: nothing is trained or scored again.
    stamps = {r: os.path.getmtime(os.path.join(out, "runs", r, "model.pt")) for r in runs}
    capsys.readouterr()
    assert main(["experiment", "table1", "--data", synth_root, "--out", out, "--budget", "tiny", "--seeds", "1",
                 "--quiet"]) == 0
    assert "| CVAE |" in capsys.readouterr().out
    assert stamps == {r: os.path.getmtime(os.path.join(out, "runs", r, "model.pt")) for r in runs}


def test_experiment_errors_are_clear(tmp_path, capsys):
    assert main(["experiment", "table1", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "o"),
                 "--budget", "tiny"]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["experiment", "fig4", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--seeds", "0"]) == 2
    assert "--seeds must be >= 1" in capsys.readouterr().err


def test_claims_verdicts_follow_the_numbers():
    def row(mean, std=0.01):
        return {"mean": mean, "std": std}

    table = {"table": {"dualvae": {"20": row(0.2), "40": row(0.1)}, "cvae": {"20": row(0.1), "40": row(0.2)},
                       "fader": {"20": row(0.19), "40": row(0.0)}, "stargan": {"20": row(0.3), "40": row(0.05)}}}
    fig6 = {"dualvae": {"0": {"cis40": (0.1, 0.01)}, "0.5": {"cis40": (0.1, 0.01)},
                        "0.9": {"cis40": (0.09, 0.01)}, "0.99": {"cis40": (0.0, 0.01)}},
            "stargan": {"0": {"cis40": (0.05, 0.01), "output_spread": (1.0, 0.0)},
                        "0.9": {"cis40": (0.049, 0.01), "output_spread": (0.9, 0.0)}}}
    got = {c["claim"]: (c["holds"], c.get("clearly")) for c in E.claims(table, fig6)}
    assert got["DualVAE > CVAE at 20 domains"] == (True, True)
    assert got["DualVAE > FaderNetworks at 20 domains"] == (True, False)  # within the noise
    assert got["DualVAE > StarGAN at 20 domains"] == (False, False)
    assert got["DualVAE > CVAE at 40 domains"] == (False, False)
    assert got["DualVAE CIS stable up to s = 0.9 (40 domains)"][0] is True
    assert got["StarGAN fails at s = 0.9 (CIS drops, or identical images)"][0] is False
    fig6["stargan"]["0.9"]["output_spread"] = (0.01, 0.0)  # identical images whatever the input
    got = {c["claim"]: c["holds"] for c in E.claims(table, fig6)}
    assert got["StarGAN fails at s = 0.9 (CIS drops, or identical images)"] is True


@pytest.mark.slow
def test_experiment_all_tiny_two_seeds_in_two_processes(synth_root, tmp_path):
    out = str(tmp_path / "exp")
    assert main(["experiment", "all", "--data", synth_root, "--out", out, "--budget", "tiny", "--seeds", "2",
                 "--jobs", "2", "--quiet"]) == 0
    table = json.load(open(os.path.join(out, "table1.json")))
    assert all(len(table["table"][m]["40"]["per_seed"]) == 2 for m in E.MODELS)
