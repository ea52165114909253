"""`dualvae explore` in a real browser: the command serves a small trained model, Playwright drives Debian's
Chromium over the page (sliders, upload, reset, save), and no request leaves 127.0.0.1.

Needs /usr/bin/chromium (`apt-get install chromium`; .ci/run installs it) and the playwright package (the test
extra); without either the test skips and says which. Set DUALVAE_EXPLORE_SCREENSHOT=PATH to keep the
screenshot (docs/explore.png is one)."""
import glob
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from dualvae.cli import main

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def _browser_or_skip():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no browser: {CHROMIUM} is missing (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed (pip install playwright; the test extra has it)")
    pytest.importorskip("gradio", reason="the ui extra (gradio) is not installed")
    return sync_playwright


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(url, save folder, process) of `dualvae explore` on a model trained for a few steps."""
    sync_playwright = _browser_or_skip()
    tmp = tmp_path_factory.mktemp("explore")
    data, run, out = str(tmp / "synth"), str(tmp / "run"), str(tmp / "saved")
    assert main(["synth", "--out", data, "--num", "120", "--seed", "3", "--workers", "1"]) == 0
    assert main(["train", "--data", data, "--out", run, "--steps", "20", "--batch-size", "16", "--image-size",
                 "32", "--latent-dim", "16", "--width", "8", "--workers", "1"]) == 0
    env = {**os.environ, "GRADIO_TEMP_DIR": str(tmp / "gradio")}
    proc = subprocess.Popen([sys.executable, "-m", "dualvae", "explore", "--model", os.path.join(run, "model.pt"),
                             "--data", data, "--out", out, "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines, url, deadline = [], None, time.time() + 120
    while url is None and time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("dualvae explore: http://"):
            url = line.split()[2]
    if url is None:
        proc.kill()
        pytest.fail("dualvae explore printed no URL:\n" + "".join(lines))
    try:
        yield sync_playwright, url, out
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _pixels(page, selector: str) -> np.ndarray:
    src = page.locator(f"{selector} img").get_attribute("src")
    return np.asarray(Image.open(io.BytesIO(page.request.get(src).body())))


def _wait_status(page, text: str, timeout_ms: int = 30000) -> None:
    page.wait_for_function("t => document.querySelector('#status').innerText.includes(t)", arg=text,
                           timeout=timeout_ms)


def test_sliders_move_the_face_and_save_their_values(served, tmp_path):
    sync_playwright, url, out = served
    assert url.startswith("http://127.0.0.1:")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        requests = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(url, wait_until="load")
        page.wait_for_selector("#lam-Smiling input[type=range]", timeout=60000)
        before = _pixels(page, "#transfer")
        np.testing.assert_array_equal(before, _pixels(page, "#reconstruction"))

        # a slider moved by the keyboard, as a person does: Smiling to its maximum
        page.locator("#lam-Smiling input[type=range]").focus()
        page.keyboard.press("End")
        _wait_status(page, "Smiling +64")
        moved = _pixels(page, "#transfer")
        assert moved.shape == before.shape and np.abs(moved.astype(int) - before.astype(int)).max() > 0

        # a second one typed into its box: both act at once
        box = page.locator("#lam-Male input[type=number]")
        box.fill("-20")
        box.press("Enter")
        _wait_status(page, "Male -20, Smiling +64")
        assert not np.array_equal(_pixels(page, "#transfer"), moved)

        # one slider move's latency as the page shows it (request, decode, PNG, reply, display)
        rng, waits = page.locator("#lam-Young input[type=range]"), []
        for k in range(1, 6):
            rng.focus()
            t0 = time.perf_counter()
            page.keyboard.press("ArrowRight")
            _wait_status(page, f"Young +{k * 0.5:g}")
            waits.append(time.perf_counter() - t0)
        print(f"slider move in the browser: median {statistics.median(waits) * 1e3:.0f} ms "
              f"(min {min(waits) * 1e3:.0f}, max {max(waits) * 1e3:.0f})")

        page.locator("#save").click()
        page.wait_for_function("() => document.querySelector('#saved').innerText.includes('.json')", timeout=30000)
        [saved] = glob.glob(os.path.join(out, "*.json"))
        settings = json.loads(open(saved).read())
        assert settings["lams"] == {"Male": -20.0, "Smiling": 64.0, "Young": 2.5}
        assert settings["picture"] == {"split": "test", "index": 0, "file": settings["picture"]["file"]}
        shot = tmp_path / "explore.png"
        page.screenshot(path=str(shot), full_page=True)
        if os.environ.get("DUALVAE_EXPLORE_SCREENSHOT"):
            shutil.copyfile(shot, os.environ["DUALVAE_EXPLORE_SCREENSHOT"])

        # a file that is not an image: a message in the page, the picture kept
        (tmp_path / "notes.txt").write_text("not a picture")
        page.locator("#upload input[type=file]").set_input_files(str(tmp_path / "notes.txt"))
        page.wait_for_function("() => document.querySelector('#status').innerText.includes('Upload refused')",
                               timeout=30000)
        assert "notes.txt is not an image" in page.locator("#status").inner_text()

        # one's own picture, then the reset: all sliders back to 0, the transfer is the reconstruction
        rgb = np.random.default_rng(0).integers(0, 256, (218, 178, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(tmp_path / "me.png")
        page.locator("#upload input[type=file]").set_input_files(str(tmp_path / "me.png"))
        _wait_status(page, "upload me.png")
        page.locator("#reset").click()
        _wait_status(page, "sliders: none")
        np.testing.assert_array_equal(_pixels(page, "#transfer"), _pixels(page, "#reconstruction"))
        browser.close()
    outside = sorted({u for u in requests if not u.startswith(("http://127.0.0.1", "data:", "blob:"))})
    assert not outside, f"the page requested {outside}"
