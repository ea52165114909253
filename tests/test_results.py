"""The committed results are what the code computes from the committed runs: results/table1.{json,md},
claims.{json,md} and fig6.json's summary are recomputed from results/runs/<budget>/*/eval.json and must match
exactly, so no number in results/README.md's tables can drift from the runs behind it."""
import json
from pathlib import Path

import pytest

from dualvae.experiments.claims import claims, claims_markdown
from dualvae.experiments.figures import fig6_summary, make_run_list, make_table1
from dualvae.experiments.runs import read_evaluated

RESULTS = Path(__file__).resolve().parents[1] / "results"


def roundtrip(obj):
    return json.loads(json.dumps(obj))


@pytest.fixture(scope="module")
def committed():
    table = json.loads((RESULTS / "table1.json").read_text())
    runs = read_evaluated(str(RESULTS / "runs" / table["budget"]))
    return table, runs


def test_table1_recomputes_from_the_committed_runs(committed, tmp_path):
    table, runs = committed
    assert len(runs) > 0
    got = make_table1(str(tmp_path), runs, table["seeds"], table["budget"])
    assert roundtrip(got) == table
    assert (tmp_path / "table1.md").read_text() == (RESULTS / "table1.md").read_text()


def test_fig6_and_claims_recompute_from_the_committed_runs(committed, tmp_path):
    table, runs = committed
    fig6 = fig6_summary(runs, table["seeds"])
    assert roundtrip(fig6) == json.loads((RESULTS / "fig6.json").read_text())["summary"]
    verdicts = claims(make_table1(str(tmp_path), runs, table["seeds"], table["budget"]), fig6)
    assert roundtrip(verdicts) == json.loads((RESULTS / "claims.json").read_text())
    assert claims_markdown(verdicts) == (RESULTS / "claims.md").read_text()


def test_the_run_list_recomputes_from_the_committed_runs(committed, tmp_path):
    table, runs = committed
    make_run_list(str(tmp_path), runs, table["budget"])
    assert (tmp_path / "runs.md").read_text() == (RESULTS / "runs.md").read_text()


def test_every_committed_run_is_evaluated_with_the_checks(committed):
    _, runs = committed
    for run, ev in runs.items():
        assert {"realism", "failed_by_protocol", "curve"} <= set(ev), run.name
        assert len(ev["curve"]) >= 5, run.name
        assert "transfer_accuracy" in ev["test"]["tuned"][str(ev["domain_counts"][-1])], run.name


def test_the_readme_quotes_the_recomputed_tables_verbatim():
    readme = (RESULTS / "README.md").read_text()
    for name in ("claims.md", "table1.md"):
        rows = [line for line in (RESULTS / name).read_text().splitlines() if line.startswith("| ")]
        assert rows, name
        missing = [line for line in rows if line not in readme]
        assert not missing, f"results/README.md lacks these rows of {name}: {missing}"
