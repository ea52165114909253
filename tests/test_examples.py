"""examples/vae_multilabel.py trains end to end on generated data: finite losses that go down."""
import math
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "examples", "vae_multilabel.py")


def test_vae_multilabel_example_trains(tmp_path):
    data = tmp_path / "celeba"
    proc = subprocess.run([sys.executable, SCRIPT, "--data", str(data), "--steps", "20", "--image-size", "16",
                           "--num", "48"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    losses = [float(v) for v in re.findall(r"loss (\S+)", proc.stdout)]
    assert len(losses) >= 3, proc.stdout
    assert all(math.isfinite(v) for v in losses), losses
    assert losses[-1] < losses[0], losses
    assert (data / "list_attr_celeba.txt").exists()  # the data was generated where --data pointed


def test_vae_multilabel_example_is_short_and_uses_only_the_kernels():
    with open(SCRIPT) as f:
        source = f.read()
    assert len(source.splitlines()) < 60
    top = set(re.findall(r"^(?:from|import) (\S+)", source, re.MULTILINE))
    assert {i for i in top if i.startswith("dualvae")} == {"dualvae.kernels"}  # the model's part: kernels only
    anywhere = set(re.findall(r"^\s*(?:from|import) (\S+)", source, re.MULTILINE))
    assert {i for i in anywhere if i.startswith("dualvae")} == {"dualvae.kernels", "dualvae.data", "dualvae.data.synth"}


CLASSIFIER = os.path.join(ROOT, "examples", "multilabel_classifier.py")


def test_multilabel_classifier_trains_with_either_head():
    """The fused head and nn.Linear + nn.BCEWithLogitsLoss give the same first loss (same seed, same init) and
    both train."""
    first = {}
    for head in ("fused", "plain"):
        proc = subprocess.run([sys.executable, CLASSIFIER, "--labels", "300", "--steps", "60", "--head", head],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        losses = [float(v) for v in re.findall(r"loss (\S+)", proc.stdout)]
        assert len(losses) >= 3 and all(math.isfinite(v) for v in losses), proc.stdout
        assert losses[-1] < losses[0], losses
        first[head] = losses[0]
    assert math.isclose(first["fused"], first["plain"], rel_tol=1e-4), first


def test_multilabel_classifier_uses_only_the_kernels():
    with open(CLASSIFIER) as f:
        source = f.read()
    assert len(source.splitlines()) < 80
    assert set(re.findall(r"^\s*from (dualvae\S*)", source, re.MULTILINE)) == {"dualvae.kernels"}
