"""CIS (Algorithm 2) on hand-computed examples, and on a real (random) DualVAE; the batched evaluator against
the loop reference; DualVAE.transfer_all; bench/cis.py --quick."""
import json
import os
import subprocess
import sys

from dataclasses import dataclass

import pytest
import torch

from dualvae import batching
from dualvae.cis import conditional_inception_score, scores_from_M, sweep_lam
from dualvae.transfer_model import TransferModel


@dataclass
class ShiftConfig:
    image_size: int = 2
    channels: int = 1
    num_labels: int = 2


class ShiftModel(TransferModel):
    """A transfer model implementing only transfer_domains: transfer to domain i adds lam * c_i to every pixel."""

    c = torch.tensor([0.5, -0.25])

    def __init__(self, num_labels=2):
        super().__init__()
        self.config = ShiftConfig(num_labels=num_labels)
        self.eval()  # CIS refuses modules in training mode

    def transfer_domains(self, x, domain, lam, source_labels=None):
        return x + lam * self.c[domain].view(-1, 1, 1, 1)


def f_square_identity(x):
    """f(x) = [v^2, v] for an image of constant value v."""
    v = x.mean(dim=(1, 2, 3))
    return torch.stack([v**2, v], dim=1)


@pytest.mark.parametrize("batched", [False, True])
def test_cis_two_domains_by_hand(batched):
    images = torch.stack([torch.full((1, 2, 2), 1.0), torch.full((1, 2, 2), 2.0)])
    r = conditional_inception_score(ShiftModel(), f_square_identity, images, lam=1.0, batched=batched)
    # x=1: M = [[2.25-1, 1.5-1], [0.5625-1, 0.75-1]] = [[1.25, 0.5], [-0.4375, -0.25]]
    # x=2: M = [[6.25-4, 2.5-2], [3.0625-4, 1.75-2]] = [[2.25, 0.5], [-0.9375, -0.25]]
    expected_M = torch.tensor([[[1.25, 0.5], [-0.4375, -0.25]], [[2.25, 0.5], [-0.9375, -0.25]]])
    torch.testing.assert_close(r.M, expected_M)
    assert r.ts == pytest.approx((1.25 - 0.25 + 2.25 - 0.25) / 4)  # 0.75
    assert r.rs == pytest.approx(-(0.5 + 0.4375 + 0.5 + 0.9375) / 4)  # -0.59375
    assert r.cis == pytest.approx(0.75 - 0.59375)
    torch.testing.assert_close(r.f_original, torch.tensor([[1.0, 1.0], [4.0, 2.0]]))
    assert r.as_dict(["A", "B"]) == {"ts": r.ts, "rs": r.rs, "cis": r.cis, "lam": 1.0, "num_images": 2,
                                     "domains": ["A", "B"]}


@pytest.mark.parametrize("batched", [False, True])
def test_cis_lam_and_domain_subset(batched):
    images = torch.stack([torch.full((1, 2, 2), 1.0), torch.full((1, 2, 2), 2.0)])
    r = conditional_inception_score(ShiftModel(), f_square_identity, images, lam=2.0, domains=[1], batched=batched)
    # domain 1 only, lam 2: v -> v - 0.5; f_1 = v changes by -0.5; no off-diagonal
    assert r.M.shape == (2, 1, 1) and r.ts == pytest.approx(-0.5) and r.rs == 0.0
    best, results = sweep_lam(ShiftModel(), f_square_identity, images, [0.0, 1.0], domains=[0, 1], batched=batched)
    assert results[0.0].cis == 0.0 and best == 1.0


def test_scores_from_M_definition():
    M = torch.tensor([[[0.9, -0.1, 0.2], [0.0, 0.5, -0.3], [0.1, 0.1, 0.1]]])
    ts, rs = scores_from_M(M)
    assert ts == pytest.approx((0.9 + 0.5 + 0.1) / 3)
    assert rs == pytest.approx(-(0.1 + 0.2 + 0.0 + 0.3 + 0.1 + 0.1) / 6)


def test_cis_on_dualvae_matches_explicit_loop():
    from dualvae.classifier import AttributeClassifier
    from dualvae.model import DualVAE

    torch.manual_seed(0)
    model = DualVAE(image_size=16, latent_dim=6, num_labels=4, width=8).eval()
    with torch.no_grad():
        model.U.normal_()
    clf = AttributeClassifier(num_labels=4, image_size=16, width=8).eval()
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    r = conditional_inception_score(model, clf, images, lam=1.5, domains=3, batched=False)
    assert r.domains == [0, 1, 2]
    for j in range(3):
        x = images[j:j + 1]
        f_x = clf.probs(x)[0, :3]
        for i in range(3):
            expected = clf.probs(model.transfer(x, i, 1.5))[0, :3] - f_x
            torch.testing.assert_close(r.M[j, i], expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="domains=5"):
        conditional_inception_score(model, clf, images, domains=5)


def tiny_pair(seed=0, num_labels=5):
    """A random DualVAE and classifier (16x16 images, eval mode), with dual vectors large enough to matter."""
    from dualvae.classifier import AttributeClassifier
    from dualvae.model import DualVAE

    torch.manual_seed(seed)
    model = DualVAE(image_size=16, latent_dim=6, num_labels=num_labels, width=8).eval()
    with torch.no_grad():
        model.U.normal_()
    model.attr_names = [f"a{i}" for i in range(num_labels)]
    clf = AttributeClassifier(num_labels=num_labels, image_size=16, width=8).eval()
    return model, clf


def assert_same_result(a, b, tol=1e-5):
    assert a.lam == b.lam and a.domains == b.domains
    assert a.ts == pytest.approx(b.ts, abs=tol) and a.rs == pytest.approx(b.rs, abs=tol)
    assert a.cis == pytest.approx(b.cis, abs=tol)
    torch.testing.assert_close(a.M, b.M, rtol=0, atol=tol)
    torch.testing.assert_close(a.f_original, b.f_original, rtol=0, atol=tol)


# max_batch: 2 < n_dom (domain slices of one image), 3 (one image per item), 8 (two images per item, items of
# several lam packed into one classifier call), None (the default); N = 7 is a multiple of none of them.
@pytest.mark.parametrize("max_batch,domains", [(2, ["a4", "a0", "a2"]), (3, 3), (8, None), (None, [1, 3])])
def test_batched_equals_loop(max_batch, domains):
    model, clf = tiny_pair()
    images = torch.rand(7, 3, 16, 16) * 2 - 1
    lams = [0.5, 2.0, -1.0]
    loop = conditional_inception_score(model, clf, images, domains=domains, lam=lams, batched=False)
    fast = conditional_inception_score(model, clf, images, domains=domains, lam=lams, max_batch=max_batch)
    assert list(fast) == lams == list(loop)
    for lam in lams:
        assert_same_result(fast[lam], loop[lam])
        assert fast[lam].M.abs().max() > 1e-3  # the transfers change f: the comparison is not of zeros
    # a single lam gives a CISResult, the same as that lam in the sweep
    one = conditional_inception_score(model, clf, images, domains=domains, lam=2.0, max_batch=max_batch)
    assert_same_result(one, fast[2.0], tol=1e-6)
    # on-the-fly ts/rs equal the reference formula applied to the M it returns
    ts, rs = scores_from_M(one.M)
    assert one.ts == pytest.approx(ts, abs=1e-6) and one.rs == pytest.approx(rs, abs=1e-6)


def test_batched_keep_M_false_and_bf16():
    model, clf = tiny_pair(seed=1)
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    ref = conditional_inception_score(model, clf, images, lam=1.0, max_batch=4)
    lean = conditional_inception_score(model, clf, images, lam=1.0, max_batch=4, keep_M=False)
    assert lean.M is None and lean.ts == pytest.approx(ref.ts, abs=1e-7) and lean.rs == pytest.approx(ref.rs, abs=1e-7)
    assert lean.as_dict()["num_images"] == 3
    bf16 = conditional_inception_score(model, clf, images, lam=1.0, max_batch=4, precision="bf16")
    assert bf16.cis == pytest.approx(ref.cis, abs=2e-2) and bf16.M.dtype == torch.float32


class CountingClassifier:
    """f that records the batch sizes it sees."""

    def __init__(self, clf):
        self.clf, self.sizes = clf, []

    def __call__(self, x):
        self.sizes.append(len(x))
        return self.clf.probs(x)


def test_batched_holds_one_chunk_at_a_time():
    model, clf = tiny_pair()
    seen = []
    transfer_all = model.transfer_all

    def spy(x, domains, lam=1.0, max_batch=None):
        out = transfer_all(x, domains, lam, max_batch)
        seen.append(out.shape[0] * out.shape[1])
        return out

    model.transfer_all = spy
    f = CountingClassifier(clf)
    r = conditional_inception_score(model, f, torch.rand(9, 3, 16, 16), lam=[1.0, 2.0], max_batch=6)
    assert max(f.sizes) <= 6 and max(seen) <= 6  # never more than one chunk of transferred images
    assert sum(seen) == 9 * 5 * 2 and sum(f.sizes) == 9 * 5 * 2 + 9  # every triple once, plus the originals
    assert r[1.0].M.shape == (9, 5, 5)


class TransferAllOnly(ShiftModel):
    """A model whose own transfer_all replaces the inherited one (as DualVAE's does): shift by lam * c_i."""

    c = torch.tensor([0.5, -0.25, 1.0])

    def __init__(self):
        super().__init__(num_labels=3)

    def transfer_domains(self, x, domain, lam, source_labels=None):
        raise AssertionError("the batched evaluator calls transfer_all only")

    def transfer_all(self, x, domains=None, lam=1.0, max_batch=None, source_labels=None):
        return x[:, None] + lam * self.c[self.domain_indices(domains)].view(1, -1, 1, 1, 1)


def test_batched_uses_the_models_transfer_all():
    images = torch.stack([torch.full((1, 2, 2), 1.0), torch.full((1, 2, 2), 2.0)])
    shift = ShiftModel()
    shift.c = TransferAllOnly.c[:2]
    want = conditional_inception_score(shift, f_square_identity, images, lam=[1.0, 3.0], domains=[0, 1],
                                       batched=False)
    got = conditional_inception_score(TransferAllOnly(), f_square_identity, images, lam=[1.0, 3.0], domains=[0, 1],
                                      max_batch=3)
    for lam in (1.0, 3.0):
        assert_same_result(got[lam], want[lam])


def test_transfer_all_equals_transfer():
    model, _ = tiny_pair()
    x = torch.rand(5, 3, 16, 16) * 2 - 1
    out = model.transfer_all(x, [3, "a1"], lam=1.5, max_batch=3)
    assert out.shape == (5, 2, 3, 16, 16)
    torch.testing.assert_close(out[:, 0], model.transfer(x, 3, 1.5), rtol=0, atol=1e-5)
    torch.testing.assert_close(out[:, 1], model.transfer(x, 1, 1.5), rtol=0, atol=1e-5)
    assert model.transfer_all(x[:2]).shape == (2, 5, 3, 16, 16)  # default: all domains, lam 1
    with pytest.raises(ValueError, match="transfer_all: x has shape"):
        model.transfer_all(x[:, :1])
    with pytest.raises(ValueError, match="lam"):
        model.transfer_all(x, lam="2")
    with pytest.raises(ValueError, match="max_batch"):
        model.transfer_all(x, max_batch=0)
    with pytest.raises(ValueError, match="unknown domain"):
        model.transfer_all(x, ["nope"])


def test_batched_bad_input_is_named():
    model, clf = tiny_pair()
    images = torch.rand(2, 3, 16, 16)
    for kwargs, name in [({"lam": []}, "lam"), ({"lam": [1.0, 1.0]}, "lam"), ({"lam": "1"}, "lam"),
                         ({"precision": "fp16"}, "precision"), ({"max_batch": 0}, "max_batch"),
                         ({"domains": 9}, "domains=9")]:
        with pytest.raises(ValueError, match=name):
            conditional_inception_score(model, clf, images, **kwargs)
    with pytest.raises(ValueError, match="images"):
        conditional_inception_score(model, clf, images[:0])
    with pytest.raises(ValueError, match="model is in training mode"):
        conditional_inception_score(model.train(), clf, images)


def test_max_batch_from_memory_budget():
    assert batching.max_batch_for("cpu", 10**9) == batching.CPU_MAX_BATCH
    # on a GPU: a share of the free memory over the bytes one row needs
    assert batching.max_batch_for("cuda", 1000, free_bytes=10**6) == int(batching.GPU_MEMORY_FRACTION * 1000)
    lin = torch.nn.Linear(4, 10)
    # input 4 floats + the Linear's output 10 floats + the returned output 10 floats
    assert batching.activation_bytes_per_row(lin, torch.zeros(1, 4), [lin]) == (4 + 10 + 10) * 4


def test_default_chunk_from_memory_budget(monkeypatch):
    """The GPU default: bytes per row measured on one row, then a share of 1 MB of 'free memory' (here on CPU)."""
    model, clf = tiny_pair()
    asked, real = [], batching.max_batch_for

    def fake_budget(device, bytes_per_row, cpu=batching.CPU_MAX_BATCH):
        per_row = bytes_per_row() if callable(bytes_per_row) else bytes_per_row
        asked.append(per_row)
        return real("cuda", per_row, free_bytes=10**6)

    monkeypatch.setattr(batching, "max_batch_for", fake_budget)
    f = CountingClassifier(clf)
    conditional_inception_score(model, f, torch.rand(40, 3, 16, 16), lam=1.0)
    # the evaluator: one row of transfer + classifier (each more than a 16x16 image)
    assert len(asked) == 1 and asked[0] > 2 * 3 * 16 * 16 * 4
    assert max(f.sizes) == int(batching.GPU_MEMORY_FRACTION * 10**6 // asked[0]) < 40 * 5
    # transfer_all on its own: one decoded row
    assert model.transfer_all(torch.rand(2, 3, 16, 16)).shape == (2, 5, 3, 16, 16)
    assert len(asked) == 2 and 3 * 16 * 16 * 4 < asked[1] < asked[0]


def test_bench_quick_runs(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, os.path.join(root, "bench", "cis.py"), "--quick", "--out-dir",
                           str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    (path,) = tmp_path.glob("cis-*-quick.json")
    res = json.loads(path.read_text())
    assert set(res["seconds"]) == {"literal_loop", "per_domain_loop", "loop_reference", "batched"}
    assert res["agreement"]["max_abs_M_diff"] <= 1e-5
    assert res["memory"]["rows"] and (tmp_path / path.name.replace(".json", ".png")).exists()


def test_a_model_on_the_transfer_interface_needs_only_transfer_domains():
    """ShiftModel implements one method and gets domain names, input checks, transfer, transfer_all and both CIS
    evaluators, which agree."""
    model = ShiftModel().eval()
    model.attr_names = ["A", "B"]
    images = torch.stack([torch.full((1, 2, 2), 1.0), torch.full((1, 2, 2), 2.0)])
    want = conditional_inception_score(ShiftModel(), f_square_identity, images, lam=[1.0, 2.0], batched=False)
    for batched in (True, False):
        got = conditional_inception_score(model, f_square_identity, images, lam=[1.0, 2.0], batched=batched)
        for lam in (1.0, 2.0):
            assert_same_result(got[lam], want[lam])
    by_name = conditional_inception_score(model, f_square_identity, images, domains=["B", "A"], lam=1.0)
    assert by_name.domains == [1, 0]
    torch.testing.assert_close(model.transfer_all(images, ["B", 0], 2.0, max_batch=3)[:, 0], images - 0.5)
    torch.testing.assert_close(model.transfer(images, "A"), images + 0.5)
    with pytest.raises(ValueError, match=r"ShiftModel\.transfer_all: x has shape \(2, 1, 2, 3\)"):
        model.transfer_all(torch.zeros(2, 1, 2, 3))
    with pytest.raises(ValueError, match=r"ShiftModel\.transfer_all: source_labels have shape \(2, 3\)"):
        model.transfer_all(images, source_labels=torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"ShiftModel: domains \[2\] out of range \[0, 2\)"):
        model.transfer(images, 2)
    with pytest.raises(ValueError, match="CIS: domains=3 must be in"):
        conditional_inception_score(model, f_square_identity, images, domains=3)


def test_cis_refuses_a_model_that_is_not_a_transfer_model():
    class Plain:
        def transfer(self, x, domains, lam):
            return x

    images = torch.zeros(2, 1, 2, 2)
    for batched in (True, False):
        with pytest.raises(TypeError, match="CIS: model must be a dualvae.transfer_model.TransferModel.*Plain"):
            conditional_inception_score(Plain(), f_square_identity, images, domains=[0], batched=batched)
