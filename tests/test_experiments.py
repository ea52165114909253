"""`dualvae experiment` in its tiny form (16x16 networks, a few steps), so the commands cannot rot: every
subcommand writes its files, runs are cached and shared, an interrupted command resumes without retraining what
finished, a dataset with fewer attributes is scored at the domain counts it has, the strength grid brackets its
optimum, and the claims are judged from the numbers."""
import json
import os
import shutil

import pytest

from dualvae.experiments.budgets import BUDGETS, MODELS, PAPER_TABLE1, PROTOCOLS
from dualvae.experiments.claims import claims, claims_markdown
from dualvae.experiments.cli import ExperimentConfig
from dualvae.experiments.evaluate import choose_strength, is_bracketed
from dualvae.experiments.prepare import first_attributes_root
from dualvae.experiments.runs import curve_steps, fig6_runs, table1_runs
from dualvae.cli import main


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synth"))
    assert main(["synth", "--out", root, "--num", "120", "--seed", "3", "--workers", "1"]) == 0
    return root


@pytest.fixture(scope="module")
def tiny_all(synth_root, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("exp"))
    assert main(["experiment", "all", "--data", synth_root, "--out", out, "--budget", "tiny", "--seeds", "1",
                 "--quiet"]) == 0
    return out


def run_names(seeds=1):
    return sorted(r.name for r in set(table1_runs(seeds) + fig6_runs(seeds)))


def model_stamps(out):
    runs = os.path.join(out, "runs", "tiny")
    return {r: os.path.getmtime(os.path.join(runs, r, "model.pt")) for r in os.listdir(runs)}


def test_experiment_all_tiny_writes_both_protocols(tiny_all):
    out = tiny_all
    for name in ("table1.md", "table1.json", "fig4.png", "fig5.png", "fig6.png", "fig6.json", "fig6_images.png",
                 "curves.png", "claims.json", "claims.md", "timing-all.json", "classifier-tiny.json",
                 "fader_adversary.png", "runs.md"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    assert sorted(os.listdir(os.path.join(out, "runs", "tiny"))) == run_names()
    control = json.load(open(os.path.join(out, "runs", "tiny-controls", "fader-no-adversary-seed0", "log.json")))
    assert all(r["lambda_dis"] == 0 for r in control)
    table = json.load(open(os.path.join(out, "table1.json")))
    assert table["columns"] == ["20", "20_trained", "40"]
    assert table["test_images"] == 4 and table["subset_images"] == 2
    for proto in PROTOCOLS:
        assert set(table[proto]) == set(MODELS)
        for m in MODELS:
            cell = table[proto][m]["40"]
            assert cell["paper"]["mean"] == PAPER_TABLE1[m][40][0]
            assert {"mean", "std_seeds", "std_subsets", "lam", "failed"} <= set(cell)
    for m in ("cvae", "fader", "stargan"):  # the baselines at unit strength
        assert table["unit_strength"][m]["40"]["lam"] == [1.0]
    assert table["unit_strength"]["dualvae"]["40"]["lam"] == table["tuned"]["dualvae"]["40"]["lam"]
    for m in MODELS:
        cell = table["tuned"][m]["40"]
        assert 0 <= cell["transfer_accuracy"][0] <= 1 and cell["realism_fd"][0] >= 0
        assert set(cell["plateau"]) <= {"plateaued", "still rising", "falling"}
    md = open(os.path.join(out, "table1.md")).read()
    assert "**unit_strength**" in md and "**tuned**" in md and "+0.140 ± 0.020" in md
    assert "transfer accuracy" in md and "FD noise (bar)" in md
    claims = json.load(open(os.path.join(out, "claims.json")))
    assert len(claims) == 2 * (3 * 3 + 2)
    assert {c["protocol"] for c in claims} == set(PROTOCOLS)
    ev = json.load(open(os.path.join(out, "runs", "tiny", "stargan-s0-seed0", "eval.json")))
    assert ev["lam"]["unit_strength"] == 1.0 and ev["domain_counts"] == [20, 40]
    assert len(ev["test"]["tuned"]["40"]["subsets"]) == 2
    assert [c["step"] for c in ev["curve"]] == curve_steps(BUDGETS["tiny"].steps["stargan"], 2)
    assert isinstance(ev["failed"], bool) and ev["reconstruction_ratio"] > 0
    assert ev["failed"] == any(ev["failed_by_protocol"].values())
    assert set(ev["realism"]["fd"]) == set(PROTOCOLS) and ev["realism"]["fd_noise"] > 0
    acc = ev["test"]["tuned"]["40"]["transfer_accuracy"]
    assert len(acc["per_domain"]) == 40 and 0 <= acc["all"] <= 1
    assert all({"tuned", "lam", "unit_strength"} <= set(c) for c in ev["curve"])
    ev20 = json.load(open(os.path.join(out, "runs", "tiny", "cvae-n20-s0-seed0", "eval.json")))
    assert ev20["labels"] == 20 and ev20["domain_counts"] == [20]


def test_every_subcommand_reuses_the_cached_runs(tiny_all, synth_root, capsys):
    stamps = model_stamps(tiny_all)
    files = {"table1": "table1.md", "fig4": "fig4.png", "fig5": "fig5.png", "fig6": "fig6.png",
             "curves": "curves.png"}
    for which, name in files.items():
        os.remove(os.path.join(tiny_all, name))
        capsys.readouterr()
        assert main(["experiment", which, "--data", synth_root, "--out", tiny_all, "--budget", "tiny",
                     "--seeds", "1", "--quiet"]) == 0
        printed = capsys.readouterr().out
        assert "runs cached" in printed and "to run:" not in printed, which
        assert os.path.getsize(os.path.join(tiny_all, name)) > 0, which
    assert model_stamps(tiny_all) == stamps


def test_stargan_at_s09_is_run_only_when_it_works_at_s0(tiny_all, synth_root, tmp_path, capsys):
    runs = os.path.join(tiny_all, "runs", "tiny")
    assert json.load(open(os.path.join(runs, "stargan-s0-seed0", "eval.json")))["failed"]  # a 5-step GAN
    assert not os.path.exists(os.path.join(runs, "stargan-s0.9-seed0"))
    claim = [c for c in json.load(open(os.path.join(tiny_all, "claims.json"))) if c["claim"].startswith("StarGAN")]
    assert {c["holds"] for c in claim} == {"untestable"}
    assert "StarGAN already fails at s = 0" in open(os.path.join(tiny_all, "claims.md")).read()
    out = str(tmp_path / "exp")
    shutil.copytree(tiny_all, out, symlinks=True)
    path = os.path.join(out, "runs", "tiny", "stargan-s0-seed0", "eval.json")
    ev = json.load(open(path))
    ev["failed"] = False  # as if it worked
    json.dump(ev, open(path, "w"))
    capsys.readouterr()
    assert main(["experiment", "fig6", "--data", synth_root, "--out", out, "--budget", "tiny", "--seeds", "1",
                 "--quiet"]) == 0
    assert "to run: stargan-s0.9-seed0" in capsys.readouterr().out
    fig6 = json.load(open(os.path.join(out, "fig6.json")))["summary"]
    assert set(fig6["stargan"]) == {"0", "0.9"}


def test_dataset_source_labels_are_an_option(tiny_all, synth_root):
    assert main(["experiment", "table1", "--data", synth_root, "--out", tiny_all, "--budget", "tiny", "--seeds",
                 "1", "--source-labels", "dataset", "--quiet"]) == 0
    table = json.load(open(os.path.join(tiny_all, "table1.json")))
    assert table["source_labels"] == "dataset"
    assert os.path.exists(os.path.join(tiny_all, "runs", "tiny", "cvae-s0-seed0", "eval-dataset-labels.json"))


def test_an_interrupted_experiment_resumes_without_retraining(synth_root, tiny_all, tmp_path, capsys):
    out = str(tmp_path / "exp")
    shutil.copytree(tiny_all, out, symlinks=True)
    runs = os.path.join(out, "runs", "tiny")
    # As if killed while these two were training: no train.json, no eval.json; DualVAE keeps its first checkpoint.
    cut = ["dualvae-s0.5-seed0", "fader-s0-seed0"]
    for name in cut:
        for f in ("train.json", "eval.json"):
            os.remove(os.path.join(runs, name, f))
    ckpts = sorted(os.listdir(os.path.join(runs, cut[0], "ckpt")))
    os.remove(os.path.join(runs, cut[0], "ckpt", ckpts[-1]))
    stamps = model_stamps(out)
    capsys.readouterr()
    assert main(["experiment", "all", "--data", synth_root, "--out", out, "--budget", "tiny", "--seeds", "1",
                 "--quiet"]) == 0
    printed = capsys.readouterr().out
    total = len(run_names())
    assert f"{total - 2} of {total} runs cached; to run: " in printed
    assert sorted(printed.split("to run: ")[1].splitlines()[0].split(", ")) == sorted(cut)
    after = model_stamps(out)
    assert {r: t for r, t in after.items() if r not in cut} == {r: t for r, t in stamps.items() if r not in cut}
    assert "resumed from" in open(os.path.join(runs, cut[0], "events.log")).read()
    for name in cut:
        assert os.path.exists(os.path.join(runs, name, "eval.json"))

    # A cache trained to other steps than the budget's is refused, not reused.
    done = os.path.join(runs, "cvae-s0-seed0", "train.json")
    json.dump({**json.load(open(done)), "steps": 99}, open(done, "w"))
    capsys.readouterr()
    assert main(["experiment", "table1", "--data", synth_root, "--out", out, "--budget", "tiny", "--seeds", "1",
                 "--quiet"]) == 2
    assert "was trained for 99 steps" in capsys.readouterr().err


def test_a_ten_attribute_dataset_is_scored_at_ten_domains(synth_root, tmp_path, capsys):
    root = first_attributes_root(synth_root, str(tmp_path), 10)
    out = str(tmp_path / "exp")
    capsys.readouterr()
    assert main(["experiment", "table1", "--data", root, "--out", out, "--budget", "tiny", "--seeds", "1",
                 "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "has 10 attributes; scoring [10] domains, skipping 20, 40 domains" in printed
    table = json.load(open(os.path.join(out, "table1.json")))
    assert table["columns"] == ["10"]
    blocks = [[line for line in block.splitlines() if line.startswith("|")]
              for block in open(os.path.join(out, "table1.md")).read().split("\n\n")]
    blocks = [b for b in blocks if b]
    assert len(blocks) == 4  # per protocol: Table 1 and the field's metrics
    for rows in blocks:  # header, separator and rows have the same cells
        assert len({line.count("|") for line in rows}) == 1, rows
    assert "20" not in table["tuned"]["dualvae"] and "40" not in table["tuned"]["dualvae"]
    assert not any("-n20" in r for r in os.listdir(os.path.join(out, "runs", "tiny")))


def test_strength_grid_is_extended_until_the_optimum_is_interior():
    def score(peak):
        return lambda lams: {lam: -abs(lam - peak) for lam in lams}

    best, values, added = choose_strength(score(100.0), [1.0, 2.0, 4.0, 8.0, 16.0])
    assert best == 128.0 and added == [32.0, 64.0, 128.0, 256.0] and is_bracketed(best, values)
    best, values, added = choose_strength(score(0.1), [1.0, 2.0, 4.0])
    assert best == 0.125 and added == [0.5, 0.25, 0.125, 0.0625]
    best, values, added = choose_strength(score(3.5), [2.0, 4.0, 8.0])
    assert best == 4.0 and added == []  # already interior: nothing added
    best, values, added = choose_strength(score(3.0), [3.0])  # one point: extended both ways
    assert best == 3.0 and added == [6.0, 1.5]
    best, values, added = choose_strength(score(1e9), [1.0], max_extensions=3)
    assert len(added) == 3 and not is_bracketed(best, values)  # gave up: the record says so
    with pytest.raises(ValueError, match="positive strengths"):
        choose_strength(score(1.0), [0.0, 1.0])


def test_experiment_errors_are_clear(tmp_path, capsys):
    assert main(["experiment", "table1", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "o"),
                 "--budget", "tiny"]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["experiment", "fig4", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--seeds", "0"]) == 2
    assert "--seeds must be >= 1" in capsys.readouterr().err
    assert main(["experiment", "fig4", "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "no list_attr_celeba.txt" in capsys.readouterr().err


def test_claims_verdicts_follow_the_numbers():
    def row(mean, std=0.01):
        return {"mean": mean, "std_seeds": std}

    t = {"dualvae": {"20": row(0.2), "40": row(0.1)}, "cvae": {"20": row(0.1), "40": row(0.2)},
         "fader": {"20": row(0.19), "40": row(0.0)}, "stargan": {"20": row(0.3), "40": row(0.05)}}
    table = {"columns": ["20", "40"], "unit_strength": t, "tuned": t}

    def s(mean, std=0.01):
        return {"unit_strength": {"cis": (mean, std)}, "tuned": {"cis": (mean, std)}}

    fig6 = {"dualvae": {"0": s(0.1), "0.5": s(0.1), "0.9": s(0.09), "0.99": s(0.0)},
            "stargan": {"0": {**s(0.05), "failed": [False]}, "0.9": {**s(0.049), "failed": [False]}}}
    got = {(c["protocol"], c["claim"]): (c["holds"], c.get("clearly")) for c in claims(table, fig6)}
    p = "tuned"
    assert got[p, "DualVAE > CVAE at 20 domains (block)"] == (True, True)
    assert got[p, "DualVAE > FaderNetworks at 20 domains (block)"] == (True, False)  # within the noise
    assert got[p, "DualVAE > StarGAN at 20 domains (block)"] == (False, False)
    assert got[p, "DualVAE > CVAE at 40 domains"] == (False, False)
    assert "**does not hold**, the other clearly ahead: +0.100 ± 0.010 vs +0.200 ± 0.010" in claims_markdown(
        claims(table, fig6))
    assert got[p, "DualVAE CIS stable up to s = 0.9"][0] is True
    sg = "StarGAN fails at s = 0.9 (CIS drops, or the model fails)"
    assert got[p, sg][0] is False
    fig6["stargan"]["0.9"]["failed"] = [True]  # noise at s = 0.9
    assert {(c["protocol"], c["claim"]): c["holds"] for c in claims(table, fig6)}[p, sg] is True
    fig6["stargan"]["0"]["failed"] = [True]  # already noise at s = 0: nothing to compare
    assert {(c["protocol"], c["claim"]): c["holds"] for c in claims(table, fig6)}[p, sg] == "untestable"
    del fig6["stargan"]["0.9"]  # not run: nothing to compare either
    fig6["stargan"]["0"]["failed"] = [False]
    assert {(c["protocol"], c["claim"]): c["holds"] for c in claims(table, fig6)}[p, sg] == "untestable"
    # A failed model is never beaten, clearly or not; a model still rising leaves the verdict unsettled.
    t["stargan"]["40"]["failed"] = [False, True]
    t["cvae"]["40"]["plateau"] = ["plateaued", "still rising"]
    by_claim = {(c["protocol"], c["claim"]): c for c in claims(table, fig6)}
    beaten = by_claim[p, "DualVAE > StarGAN at 40 domains"]
    assert (beaten["holds"], beaten["clearly"]) == ("untestable", False)
    assert beaten["failures"] == ["StarGAN failed in 1 of 2 seeds"]
    assert by_claim[p, "DualVAE > CVAE at 40 domains"]["not_settled"] == ["CVAE still rising in 1 of 2 seeds"]
    md = claims_markdown(claims(table, fig6))
    assert "**untestable**: +0.100 ± 0.010 vs +0.050 ± 0.010 (StarGAN failed in 1 of 2 seeds)" in md
    assert "not settled: CVAE still rising in 1 of 2 seeds" in md


def test_plateau_status_reads_the_last_two_points():
    from dualvae.experiments.figures import plateau_status

    def run(*vals):
        return {"curve": [{"tuned": v} for v in vals]}

    assert plateau_status([run(0.1, 0.3, 0.305), run(0.1, 0.2, 0.3), run(0.3, 0.2)]) == \
        ["plateaued", "still rising", "falling"]
    # The tolerance is the seed std of the last point when that is larger than 0.01.
    assert plateau_status([run(0.2, 0.25), run(0.5, 0.55)]) == ["plateaued", "plateaued"]


@pytest.mark.slow
def test_experiment_all_tiny_two_seeds_in_two_processes(synth_root, tmp_path):
    out = str(tmp_path / "exp")
    assert main(["experiment", "all", "--data", synth_root, "--out", out, "--budget", "tiny", "--seeds", "2",
                 "--jobs", "2", "--quiet"]) == 0
    table = json.load(open(os.path.join(out, "table1.json")))
    assert all(len(table["tuned"][m]["40"]["per_seed"]) == 2 for m in MODELS)


def test_the_options_come_from_experiment_config(capsys):
    import argparse
    import dataclasses

    from dualvae.options import add_options, config_from

    parser = add_options(argparse.ArgumentParser(), ExperimentConfig)
    a = parser.parse_args(["fig4", "--data", "D", "--out", "O", "--source-labels", "dataset", "--quiet"])
    cfg = config_from(ExperimentConfig, a)
    assert cfg == ExperimentConfig(which="fig4", data="D", out="O", source_labels="dataset", quiet=True)
    assert (cfg.seeds, cfg.budget, cfg.jobs) == (3, "long", 1)
    with pytest.raises(SystemExit):
        parser.parse_args(["fig4", "--data", "D", "--out", "O", "--budget", "huge"])  # not one of the choices
    with pytest.raises(SystemExit):
        main(["experiment", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for f in dataclasses.fields(ExperimentConfig):
        if f.default is not dataclasses.MISSING:
            shown = "off" if f.default is False else f.default
            assert f"(default: {shown})" in text, f.name


def test_frechet_distance_matches_the_closed_form():
    import torch

    from dualvae.experiments.realism import feature_moments, frechet_distance

    g = torch.Generator().manual_seed(0)
    d = 7
    mu1, mu2 = torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
    a, b = torch.rand(d, generator=g, dtype=torch.float64) + 0.1, torch.rand(d, generator=g, dtype=torch.float64)
    expected = float((mu1 - mu2).pow(2).sum() + (a.sqrt() - b.sqrt()).pow(2).sum())
    assert abs(frechet_distance((mu1, torch.diag(a)), (mu2, torch.diag(b))) - expected) < 1e-9
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))  # a rotation changes nothing
    rot = frechet_distance((q @ mu1, q @ torch.diag(a) @ q.T), (q @ mu2, q @ torch.diag(b) @ q.T))
    assert abs(rot - expected) < 1e-9
    x = torch.randn(500, d, generator=g)
    assert abs(frechet_distance(feature_moments(x), feature_moments(x))) < 1e-6
    assert frechet_distance(feature_moments(x), feature_moments(x + 1)) == pytest.approx(d, rel=1e-6)
    with pytest.raises(ValueError, match="N >= 2"):
        feature_moments(x[:1])


def test_transfer_accuracy_counts_what_f_reads():
    import torch

    from dualvae.experiments.realism import transfer_accuracy

    f0 = torch.tensor([[0.1, 0.9], [0.2, 0.3], [0.7, 0.1]])
    M = torch.zeros(3, 2, 2)
    M[:, 0, 0] = torch.tensor([0.6, 0.1, 0.0])  # domain 0: image 0 flips, image 1 does not, image 2 had it
    M[:, 1, 1] = torch.tensor([0.0, 0.0, 0.0])  # domain 1: nothing moves
    acc = transfer_accuracy(M, f0)
    assert acc["per_domain"] == [round(2 / 3, 4), round(1 / 3, 4)]
    assert acc["flip_per_domain"] == [0.5, 0.0]
    assert acc["all"] == pytest.approx(0.5) and acc["flip"] == pytest.approx(0.25)
