"""Transfer toward an identity: a model trained with identity labels has a dual vector per training identity
("identity_<id>", after the attributes); transfer / transfer_all / domain_indices / `dualvae transfer` take the
name, and CIS refuses identity domains (its classifier f predicts attributes), naming the domain."""
import os
import sys

import pytest
import torch
from PIL import Image

from dualvae.checkpoint import save_atomic
from dualvae.classifier import AttributeClassifier
from dualvae.cis import conditional_inception_score
from dualvae.model import DualVAE

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "data"))
from test_loader import write_root  # noqa: E402  (the 24-image CelebA-format fixture root)

ATTRS = ["Marked", "b0", "b1", "b2", "b3", "b4"]
IDS = ["identity_2", "identity_7", "identity_2880"]
NAMES = ATTRS + IDS


def tiny_model(names=NAMES) -> DualVAE:
    torch.manual_seed(0)
    model = DualVAE(image_size=16, latent_dim=6, num_labels=len(names), width=8).eval()
    model.attr_names = list(names)
    with torch.no_grad():
        model.U.normal_()  # dual vectors far apart, so each domain's transfer differs visibly
    return model


def images(n=3):
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_transfer_toward_an_identity_is_its_dual_vector():
    model, x = tiny_model(), images()
    assert model.domain_indices("identity_2880") == [8]
    assert model.domain_indices(["identity_7", "b1", 0]) == [7, 2, 0]
    with torch.no_grad():
        mu, _ = model.encode(x)
        want = model.decode(mu + 2.5 * model.U[8])
        other = model.decode(mu + 2.5 * model.U[6])
    out = model.transfer(x, "identity_2880", lam=2.5)
    torch.testing.assert_close(out, want)
    assert torch.equal(out, model.transfer(x, 8, lam=2.5))
    assert (out - other).abs().max() > 1e-3  # another identity's vector moves the faces elsewhere
    per_image = model.transfer(x, ["identity_2880", "identity_2", "identity_2880"], lam=2.5)
    torch.testing.assert_close(per_image[1], other[1])
    torch.testing.assert_close(per_image[[0, 2]], want[[0, 2]])

    grid = model.transfer_all(x, ["Marked", "identity_2880", "identity_2"], lam=2.5, max_batch=4)
    assert grid.shape == (3, 3, 3, 16, 16)
    torch.testing.assert_close(grid[:, 1], want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grid[:, 2], other, rtol=1e-4, atol=1e-5)


def test_unknown_identities_are_named():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"'identity_5'.*dual vectors for the 3 identities of its training split "
                                         r"\(identity_2 \.\.\. identity_2880\).*val/test"):
        model.transfer(images(), "identity_5")
    with pytest.raises(ValueError, match=r"'Smiling'; known: \['Marked'.*'b4'\] and 3 identities"):
        model.domain_indices("Smiling")
    plain = tiny_model(ATTRS)
    with pytest.raises(ValueError, match=r"'identity_2'.*trained without identity labels.*attributes,identity"):
        plain.domain_indices(["b0", "identity_2"])


def _classifier(names=ATTRS):
    clf = AttributeClassifier(num_labels=len(names), image_size=16, width=8).eval()
    clf.attr_names = list(names)
    return clf


def test_cis_refuses_identity_domains_naming_them():
    model, clf, x = tiny_model(), _classifier(), images(2)
    for domains in (["identity_2880"], ["b0", "identity_7"], 9, None):
        with pytest.raises(ValueError, match=r"CIS: domain identity_\d+ \(label \d\) is an identity: the "
                                             r"classifier f predicts the 6 attributes"):
            conditional_inception_score(model, clf, x, domains=domains, lam=1.0, max_batch=8)
    with pytest.raises(ValueError, match=r"domain identity_7 \(label 7\) is an identity"):
        conditional_inception_score(model, lambda im: torch.zeros(len(im), 6), x, domains=["identity_7"])
    r = conditional_inception_score(model, clf, x, domains=6, lam=1.0, max_batch=8)  # the attributes score
    assert r.domains == list(range(6)) and r.M.shape == (2, 6, 6)
    with pytest.raises(ValueError, match=r"domain b1 \(label 2 of the model\) is not the classifier's label 2: "
                                         r"f predicts 'b0'"):
        conditional_inception_score(model, _classifier(["Marked", "b1", "b0", "b2", "b3", "b4"]), x, domains=["b1"])


def test_transfer_cli_toward_an_identity(tmp_path, capsys):
    from dualvae.cli import main

    root = write_root(tmp_path / "celeba")
    model = tiny_model()
    ckpt = save_atomic(model.checkpoint_state(), str(tmp_path / "model.pt"))
    out = tmp_path / "grid.png"
    assert main(["transfer", "--model", ckpt, "--data", str(root), "--out", str(out), "--split", "val",
                 "--num-images", "2", "--lam", "2", "--domains", "identity_2880,Marked"]) == 0
    assert "domains: identity_2880,Marked" in capsys.readouterr().out
    with Image.open(out) as im:
        assert im.size[0] == 3 * (16 + 2) + 2  # original + 2 domains
    assert main(["transfer", "--model", ckpt, "--data", str(root), "--out", str(out), "--split", "val",
                 "--num-images", "2", "--domains", "identity_5"]) == 2
    assert "identity_5" in capsys.readouterr().err
