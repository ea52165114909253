"""`dualvae explore`'s logic without a browser: pictures in, transfers out, for DualVAE and a baseline; the
errors at start; saving. The page itself is driven in tests/test_explore_browser.py."""
import json
import os
import socket

import numpy as np
import pytest
import torch
from PIL import Image

from dualvae import baselines
from dualvae.checkpoint import save_atomic
from dualvae.classifier import AttributeClassifier
from dualvae.cli import main
from dualvae.data import CELEBA_ATTRIBUTES, preprocess_image, to_unit_range
from dualvae.explore import Explorer, ExploreConfig, check_match, free_port, load_explorer, to_uint8
from dualvae.model import DualVAE

SIZE = 32


def tiny_dualvae(names=CELEBA_ATTRIBUTES) -> DualVAE:
    torch.manual_seed(0)
    model = DualVAE(SIZE, 3, 16, len(names), 8).eval()
    with torch.no_grad():
        model.U.mul_(100)  # untrained U is tiny; moved pictures must differ visibly
    model.attr_names = list(names)
    return model


def images(n=4) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)


def explorer(model=None, classifier=None, **kw) -> Explorer:
    return Explorer(model or tiny_dualvae(), images(), [f"{i:06d}.jpg" for i in range(4)], classifier, **kw)


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synth"))
    assert main(["synth", "--out", root, "--num", "120", "--seed", "3", "--workers", "1"]) == 0
    return root


def test_sliders_add_dual_vectors_in_latent_space():
    ex = explorer()
    pic = ex.pick(2)
    assert pic.source == {"split": "test", "index": 2, "file": "000002.jpg"}
    assert ex.lam_range == (-64.0, 64.0) and ex.attributes == list(CELEBA_ATTRIBUTES) and ex.identities == []
    with torch.no_grad():
        mu = ex.model.encode(to_unit_range(images()[2:3]))[0]
        U = ex.model.U
        expected = to_uint8(ex.model.decode(mu + 3 * U[31] - 2 * U[20]))
        np.testing.assert_array_equal(pic.reconstruction, to_uint8(ex.model.decode(mu)))
    t = ex.transfer(pic, {"Smiling": 3, "Male": -2, "Bald": 0})
    assert t.lams == {"Smiling": 3.0, "Male": -2.0}
    np.testing.assert_array_equal(t.image, expected)
    assert not np.array_equal(t.image, pic.reconstruction)
    # one slider is Eq. 3 as the model's own transfer computes it
    one = ex.transfer(pic, {"Smiling": 5})
    np.testing.assert_array_equal(one.image, to_uint8(ex.model.transfer(pic.x, "Smiling", 5)))
    # all sliders at zero: the reconstruction, no decode
    assert ex.transfer(pic, {n: 0 for n in ex.attributes}).image is pic.reconstruction


def test_slider_values_are_checked():
    ex = explorer(lam_max=10)
    pic = ex.pick(0)
    with pytest.raises(ValueError, match=r"Smiling: lam 11 is outside \[-10, 10\]"):
        ex.transfer(pic, {"Smiling": 11})
    with pytest.raises(ValueError, match="unknown domain 'Smile'"):
        ex.transfer(pic, {"Smile": 1})
    with pytest.raises(ValueError, match=r"image index 4 is out of range: the test split offers 0 to 3"):
        ex.pick(4)
    with pytest.raises(ValueError, match="lam_max must be positive"):
        explorer(lam_max=0)


def test_identity_domains_get_a_slider():
    names = [*CELEBA_ATTRIBUTES, "identity_7", "identity_9"]
    ex = explorer(tiny_dualvae(names))
    assert ex.identities == ["identity_7", "identity_9"] and len(ex.attributes) == 40
    pic = ex.pick(0)
    t = ex.transfer(pic, {"Smiling": 2, "identity_9": 4})
    with torch.no_grad():
        want = ex.model.decode(pic.mu + 2 * ex.model.U[31] + 4 * ex.model.U[41])
    np.testing.assert_array_equal(t.image, to_uint8(want))


def test_baseline_applies_its_transfers_in_turn():
    model = baselines.build("fader", image_size=SIZE, num_labels=40, width=8, max_channels=32).eval()
    model.attr_names = list(CELEBA_ATTRIBUTES)
    ex = explorer(model)
    assert not ex.latent and ex.lam_range == (0.0, 2.0)  # its own strength knob: the target label's shift
    pic = ex.pick(1)
    np.testing.assert_array_equal(pic.reconstruction, to_uint8(model.transfer_all(pic.x, [0], 0.0)[:, 0]))
    t = ex.transfer(pic, {"Smiling": 1.0, "Eyeglasses": 0.5})
    want = model.transfer(model.transfer(pic.x, "Eyeglasses", 0.5), "Smiling", 1.0)  # in label order
    np.testing.assert_array_equal(t.image, to_uint8(want))
    with pytest.raises(ValueError, match=r"outside \[0, 2\]"):
        ex.transfer(pic, {"Smiling": -1})


def test_classifier_probabilities_of_original_and_transfer(tmp_path):
    torch.manual_seed(0)
    clf = AttributeClassifier(40, SIZE, 3, 8).eval()
    clf.attr_names = list(CELEBA_ATTRIBUTES)
    ex = explorer(classifier=clf)
    pic = ex.pick(0)
    torch.testing.assert_close(pic.f_original, clf.probs(pic.x)[0])
    t = ex.transfer(pic, {"Smiling": 40})
    rows = ex.probability_rows(pic, t, top=5)
    assert len(rows) == 5 and [r[0] for r in rows][0] in CELEBA_ATTRIBUTES
    assert [abs(r[3]) for r in rows] == sorted((abs(r[3]) for r in rows), reverse=True)
    png, js = ex.save(str(tmp_path), pic, t, "run/model.pt")
    saved = json.loads(open(js).read())
    assert saved["lams"] == {"Smiling": 40.0} and saved["picture"]["index"] == 0 and saved["model"] == "run/model.pt"
    assert set(saved["f_transfer"]) == set(CELEBA_ATTRIBUTES) and saved["image"] == os.path.basename(png)
    assert Image.open(png).size == (3 * SIZE, SIZE)  # original, reconstruction, transfer


def test_upload_is_cropped_like_the_dataset_and_a_non_image_is_refused(tmp_path):
    ex = explorer()
    rgb = np.random.default_rng(0).integers(0, 256, (218, 178, 3), dtype=np.uint8)  # CelebA's aligned size
    Image.fromarray(rgb).save(tmp_path / "me.png")
    pic = ex.upload(str(tmp_path / "me.png"))
    np.testing.assert_array_equal(to_uint8(pic.x), preprocess_image(Image.fromarray(rgb), SIZE))
    assert pic.source == {"upload": "me.png"}
    (tmp_path / "notes.txt").write_text("not a picture")
    with pytest.raises(ValueError, match="notes.txt is not an image"):
        ex.upload(str(tmp_path / "notes.txt"))


def test_mismatches_are_refused_at_start(synth_root, tmp_path, capsys):
    model = tiny_dualvae(["a", "b"])
    with pytest.raises(ValueError, match="the model's 2 attribute labels are not those of d"):
        check_match(model, list(CELEBA_ATTRIBUTES), SIZE, data="d")
    check_match(tiny_dualvae([*CELEBA_ATTRIBUTES, "identity_3"]), list(CELEBA_ATTRIBUTES), SIZE)
    clf = AttributeClassifier(40, 64, 3, 8)
    clf.attr_names = list(CELEBA_ATTRIBUTES)
    with pytest.raises(ValueError, match="the classifier takes 64x64 images, the model 32x32"):
        check_match(tiny_dualvae(), list(CELEBA_ATTRIBUTES), SIZE, clf)

    path = str(tmp_path / "two.pt")
    save_atomic(model.checkpoint_state(), path)
    assert main(["explore", "--model", path, "--data", synth_root]) == 2
    assert "attribute labels are not those of" in capsys.readouterr().err
    assert main(["explore", "--model", str(tmp_path / "missing.pt"), "--data", synth_root]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    save_atomic(clf.checkpoint_state(), str(tmp_path / "clf.pt"))
    assert main(["explore", "--model", str(tmp_path / "clf.pt"), "--data", synth_root]) == 2
    assert "holds 'classifier', expected a 'dualvae'" in capsys.readouterr().err

    good = str(tmp_path / "good.pt")
    save_atomic(tiny_dualvae().checkpoint_state(), good)
    ex = load_explorer(ExploreConfig(model=good, data=synth_root, num_images=5))
    assert len(ex.images) == 5 and ex.images.shape[-1] == SIZE and ex.filenames[0].endswith(".jpg")


def test_a_busy_port_is_replaced_by_a_free_one():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        port = free_port("127.0.0.1", busy)
    assert port != busy and port > 0


def test_page_builds_with_a_slider_per_domain(tmp_path):
    gr = pytest.importorskip("gradio", reason="the ui extra (gradio) is not installed")
    from dualvae.explore import build_app

    ex = explorer(tiny_dualvae([*CELEBA_ATTRIBUTES, "identity_7"]))
    app = build_app(ex, str(tmp_path))
    sliders = [b for b in app.blocks.values() if isinstance(b, gr.Slider)]
    assert sorted(s.label for s in sliders) == sorted([*CELEBA_ATTRIBUTES, "identity lam"])
    assert {(s.minimum, s.maximum) for s in sliders} == {(-64.0, 64.0)}
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
