"""`dualvae explore`: a trained transfer model in a local web page, one slider per domain.

Two layers: `Explorer` turns a picture and slider values into images (no web code, tested without a browser);
`build_app` lays those out as a Gradio page and `serve` starts it on 127.0.0.1. DualVAE moves a picture by
decoding z + sum_i lam_i u_i (Eq. 3 with several dual vectors at once): the picture is encoded once when it is
picked, so a slider move costs one decode. Any other transfer model (the baselines) applies its transfers one
after another, m^{d_k}(... m^{d_1}(x)), each at its own strength.
"""
from __future__ import annotations

import io
import os
import random
import socket
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from dualvae.data.atomic import write_atomic, write_json_atomic
from dualvae.options import option
from dualvae.transfer_model import is_identity_name

# The slider ranges when --lam-max is not given: DualVAE's lam is in latent units (the demo picks 16-64 on
# val), a baseline's scales a change of target labels in [0, 1] (1: the label set to 1, the CIS protocol).
DUALVAE_LAM_MAX = 64.0
BASELINE_LAM_MAX = 2.0


@dataclass
class ExploreConfig:
    model: str = option(help="transfer model checkpoint: DualVAE (RUN_DIR/model.pt) or a baseline")
    data: str = option(help="CelebA-format root, or a cache written by `dualvae prepare`")
    classifier: str | None = option(None, "attribute classifier f: its probabilities for the original and the "
                                    "transfer", none="none shown")
    split: str = option("test", "split the picker's images come from", choices=("train", "val", "test"))
    num_images: int = option(500, "images offered by the picker (the first of the split)")
    out: str = option("explore-out", "folder the page's save button writes to")
    host: str = option("127.0.0.1", "address to listen on (127.0.0.1: this machine only)")
    port: int = option(7860, "port; a free one is taken when it is busy (0: the system picks one)", min=0)
    lam_max: float | None = option(None, "slider range [-lam_max, lam_max] (DualVAE) or [0, lam_max] (baselines)",
                                   none=f"{DUALVAE_LAM_MAX:g} for DualVAE, {BASELINE_LAM_MAX:g} for a baseline")


@dataclass
class Picture:
    """A picked or uploaded image with what every slider move reuses: its latent mean (DualVAE), its
    reconstruction and f's probabilities for it."""

    name: str
    x: torch.Tensor  # (1, C, S, S) in [-1, 1]
    reconstruction: np.ndarray  # (S, S, C) uint8
    mu: torch.Tensor | None = None
    f_original: torch.Tensor | None = None
    source: dict = field(default_factory=dict)  # {"split", "index", "file"} or {"upload"}


@dataclass
class Transfer:
    image: np.ndarray  # (S, S, C) uint8
    lams: dict[str, float]  # label name -> lam, the nonzero sliders
    f_transfer: torch.Tensor | None
    seconds: float


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """A batch of one, (1, C, H, W) in [-1, 1] -> (H, W, C) uint8."""
    from dualvae.transfer import to_uint8_hwc

    return to_uint8_hwc(x[0])


def check_match(model, data_names: list[str], image_size: int, classifier=None, data: str = "data") -> None:
    """ValueError when the model's attribute labels are not the data's, or the classifier's do not fit."""
    names = [n for n in (model.attr_names or []) if not is_identity_name(n)]
    if names and names != list(data_names):
        missing = [n for n in names if n not in data_names]
        raise ValueError(f"the model's {len(names)} attribute labels are not those of {data} ({len(data_names)}): "
                         + (f"the data lacks {missing[:8]}" if missing else
                            f"model {names[:4]}..., data {list(data_names)[:4]}..."))
    if classifier is None:
        return
    cfg = classifier.config
    if cfg["image_size"] != image_size:
        raise ValueError(f"the classifier takes {cfg['image_size']}x{cfg['image_size']} images, the model "
                         f"{image_size}x{image_size}")
    if list(classifier.attr_names or []) != list(data_names):
        raise ValueError(f"the classifier's labels ({len(classifier.attr_names or [])}) are not those of {data} "
                         f"({len(data_names)})")


class Explorer:
    """The page's logic: pictures in, transfers out, for any TransferModel."""

    def __init__(self, model, images: torch.Tensor, filenames: list[str], classifier=None,
                 lam_max: float | None = None, split: str = "test"):
        self.model, self.classifier, self.split = model.eval(), classifier, split
        self.images, self.filenames = images, filenames  # images uint8 (N, C, S, S)
        self.image_size = model.config.image_size
        self.names = list(model.attr_names or [str(i) for i in range(model.num_labels)])
        self.latent = hasattr(model, "U") and hasattr(model, "decode")  # z + sum lam_i u_i applies
        top = lam_max if lam_max is not None else DUALVAE_LAM_MAX if self.latent else BASELINE_LAM_MAX
        if not top > 0:
            raise ValueError(f"lam_max must be positive, got {lam_max}")
        self.lam_range = (-top if self.latent else 0.0, float(top))

    @property
    def attributes(self) -> list[str]:
        return [n for n in self.names if not is_identity_name(n)]

    @property
    def identities(self) -> list[str]:
        return [n for n in self.names if is_identity_name(n)]

    @torch.no_grad()
    def _picture(self, x: torch.Tensor, name: str, source: dict) -> Picture:
        if self.latent:
            mu = self.model.encode(x)[0]
            rec = self.model.decode(mu)
        else:  # a transfer at strength 0 is the model's reconstruction
            mu, rec = None, self.model.transfer_all(x, [0], 0.0)[:, 0]
        f = self.classifier.probs(x)[0] if self.classifier is not None else None
        return Picture(name, x, to_uint8(rec), mu, f, source)

    def pick(self, index: int) -> Picture:
        """Image `index` of the split."""
        from dualvae.data import to_unit_range

        n = len(self.images)
        if not 0 <= index < n:
            raise ValueError(f"image index {index} is out of range: the {self.split} split offers 0 to {n - 1}")
        file = self.filenames[index]
        x = to_unit_range(self.images[index:index + 1])
        return self._picture(x, f"{self.split} #{index} ({file})", {"split": self.split, "index": index, "file": file})

    def random_index(self) -> int:
        return random.randrange(len(self.images))

    def upload(self, path: str) -> Picture:
        """An image file of one's own, cropped and resized as the dataset's images are; ValueError naming the
        file when it is not an image."""
        from PIL import Image, UnidentifiedImageError

        from dualvae.data import preprocess_image, to_unit_range

        name = os.path.basename(path)
        try:
            with Image.open(path) as img:
                pixels = preprocess_image(img, self.image_size)
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise ValueError(f"{name} is not an image that can be read (PNG, JPEG, ...): {exc}") from None
        x = to_unit_range(torch.from_numpy(np.array(pixels)).permute(2, 0, 1)[None].contiguous())
        return self._picture(x, f"upload {name}", {"upload": name})

    def lams_of(self, values: dict[str, float]) -> dict[int, float]:
        """Slider values by label name -> {label index: lam} for the nonzero ones in label order (the order a
        baseline applies them in), checked against the range."""
        position = {n: i for i, n in enumerate(self.names)}
        lo, hi = self.lam_range
        out = {}
        for name, lam in values.items():
            if name not in position:
                raise ValueError(f"unknown domain {name!r}")
            lam = float(lam)
            if not lo <= lam <= hi:
                raise ValueError(f"{name}: lam {lam:g} is outside [{lo:g}, {hi:g}]")
            if lam != 0.0:
                out[position[name]] = lam
        return dict(sorted(out.items()))

    @torch.no_grad()
    def transfer(self, pic: Picture, values: dict[str, float]) -> Transfer:
        """The picture moved by every nonzero slider at once."""
        lams = self.lams_of(values)
        t0 = time.perf_counter()
        if not lams:
            image = pic.reconstruction
            x_t = None
        else:
            if self.latent:
                idx = torch.tensor(list(lams))
                lam = torch.tensor(list(lams.values()), dtype=pic.mu.dtype)
                x_t = self.model.decode(pic.mu + lam @ self.model.U[idx])
            else:
                x_t = pic.x
                for i, lam in lams.items():
                    x_t = self.model.transfer(x_t, i, lam)
            image = to_uint8(x_t)
        seconds = time.perf_counter() - t0
        f = None
        if self.classifier is not None:
            f = pic.f_original if x_t is None else self.classifier.probs(x_t)[0]
        return Transfer(image, {self.names[i]: lam for i, lam in lams.items()}, f, seconds)

    def probability_rows(self, pic: Picture, t: Transfer, top: int = 8) -> list[list]:
        """[attribute, f(original), f(transfer), change] for the `top` attributes that moved most."""
        if pic.f_original is None or t.f_transfer is None:
            return []
        a, b = pic.f_original.tolist(), t.f_transfer.tolist()
        names = list(self.classifier.attr_names or self.attributes)
        rows = [[n, round(p, 3), round(q, 3), round(q - p, 3)] for n, p, q in zip(names, a, b)]
        return sorted(rows, key=lambda r: -abs(r[3]))[:top]

    def save(self, folder: str, pic: Picture, t: Transfer, model_path: str = "") -> tuple[str, str]:
        """Write the transfer (PNG: original, reconstruction, transfer side by side) and its settings (JSON);
        returns both paths."""
        from PIL import Image

        stem = os.path.join(folder, time.strftime("explore-%Y%m%d-%H%M%S") + f"-{time.time_ns() % 10**6:06d}")
        strip = np.concatenate([to_uint8(pic.x), pic.reconstruction, t.image], axis=1)
        buf = io.BytesIO()
        Image.fromarray(strip).save(buf, format="PNG")
        png = write_atomic(stem + ".png", lambda f: f.write(buf.getvalue()))
        settings = {"model": model_path, "picture": pic.source, "lams": t.lams, "lam_range": list(self.lam_range),
                    "lam_rule": "z + sum lam_i u_i" if self.latent else "transfers applied in turn",
                    "image": os.path.basename(png), "columns": ["original", "reconstruction", "transfer"]}
        if t.f_transfer is not None:
            names = list(self.classifier.attr_names or self.attributes)
            settings["f_original"] = dict(zip(names, [round(p, 4) for p in pic.f_original.tolist()]))
            settings["f_transfer"] = dict(zip(names, [round(p, 4) for p in t.f_transfer.tolist()]))
        return png, write_json_atomic(stem + ".json", settings)


def load_explorer(c: ExploreConfig) -> Explorer:
    """The model, the classifier and the split's images, checked against each other (ValueError naming what
    does not fit)."""
    from dualvae.checkpoint import load_model, kinds_of
    from dualvae.data import read_split
    from dualvae.transfer_model import TransferModel

    model = load_model(c.model, kinds_of(TransferModel))
    clf = load_model(c.classifier, "classifier") if c.classifier else None
    if c.num_images < 1:
        raise ValueError(f"--num-images must be at least 1, got {c.num_images}")
    s = read_split(c.data, c.split, image_size=model.config.image_size, limit=c.num_images)
    if len(s.images) == 0:
        raise ValueError(f"the {c.split} split of {c.data} has no images")
    check_match(model, s.attr_names, model.config.image_size, clf, c.data)
    return Explorer(model, s.images, s.filenames, clf, c.lam_max, c.split)


def free_port(host: str, port: int) -> int:
    """`port` when it can be bound on `host`, else one the system picks."""
    for p in (port, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, p))
            except OSError:
                continue
            return s.getsockname()[1]
    raise OSError(f"no free port on {host}")


# -- the page ---------------------------------------------------------------------------------------------------
# Set before gradio is imported: it reads them at import. No usage statistics or version check leave the machine.
_OFFLINE_ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
# System fonts only: the default theme's fonts would be fetched from a font CDN by the page.
_FONTS = (["ui-sans-serif", "system-ui", "sans-serif"], ["ui-monospace", "monospace"])
SLIDER_COLUMNS = 4
DISPLAY_SIZE = 256  # pixels a picture is shown at; a 64x64 image is scaled up by whole pixels


def shown(image: np.ndarray) -> np.ndarray:
    """An (S, S, C) picture scaled up by a whole factor (nearest) to about DISPLAY_SIZE, so the browser shows the
    model's pixels, not its smoothing of them."""
    k = max(1, DISPLAY_SIZE // image.shape[0])
    return image.repeat(k, 0).repeat(k, 1)


def _import_gradio():
    os.environ.update(_OFFLINE_ENV)
    try:
        import gradio as gr
    except ImportError:
        raise ImportError("dualvae explore needs Gradio: pip install 'dualvae[ui]'") from None
    return gr


def theme():
    gr = _import_gradio()
    return gr.themes.Default(font=_FONTS[0], font_mono=_FONTS[1])


def build_app(ex: Explorer, out: str, model_path: str = ""):
    """The Gradio page of `ex`: picker and upload, the three images, one slider per attribute (and an identity
    chooser with its own slider), f's probabilities, reset and save."""
    gr = _import_gradio()
    lo, hi = ex.lam_range
    attrs, ids = ex.attributes, ex.identities
    step = (hi - lo) / 256

    def values(args) -> dict[str, float]:
        v = dict(zip(attrs, args[:len(attrs)]))
        if ids and args[len(attrs)]:
            v[args[len(attrs)]] = args[len(attrs) + 1]
        return v

    def show(pic: Picture, args):
        try:
            t = ex.transfer(pic, values(args))
        except ValueError as exc:  # a value typed past the slider's range
            raise gr.Error(str(exc)) from None
        moved = ", ".join(f"{n} {lam:+g}" for n, lam in t.lams.items()) or "none (the reconstruction)"
        status = f"{pic.name}; sliders: {moved}; transfer computed in {t.seconds * 1e3:.0f} ms"
        return shown(t.image), ex.probability_rows(pic, t), status

    def new_picture(pic: Picture, *args):
        image, rows, status = show(pic, args)
        return pic, shown(to_uint8(pic.x)), shown(pic.reconstruction), image, rows, status

    def on_index(index, *args):
        try:
            pic = ex.pick(int(index))
        except (TypeError, ValueError) as exc:  # an empty box, or an index past the split
            raise gr.Error(str(exc)) from None
        return new_picture(pic, *args)

    def on_random(*args):
        i = ex.random_index()
        return (i, *new_picture(ex.pick(i), *args))

    def on_upload(path, pic, *args):
        # The file box is emptied each time, so its drop zone is ready for the next file.
        if not path:
            return (gr.skip(),) * 6 + (None,)
        try:
            pic = ex.upload(path)
        except ValueError as exc:
            return (pic, gr.skip(), gr.skip(), gr.skip(), gr.skip(), f"**Upload refused:** {exc}", None)
        return (*new_picture(pic, *args), None)

    def on_slider(pic, *args):
        image, rows, status = show(pic, args)
        return image, rows, status

    def on_save(pic, *args):
        t = ex.transfer(pic, values(args))
        png, js = ex.save(out, pic, t, os.path.abspath(model_path) if model_path else "")
        return f"saved {png} and {js}"

    first = ex.pick(0)
    with gr.Blocks(title="DualVAE explore", analytics_enabled=False) as app:
        gr.Markdown(f"### DualVAE explore: `{model_path or type(ex.model).__name__}`, "
                    f"{len(ex.images)} {ex.split} images")
        state = gr.State(first)
        with gr.Row():
            kw = {"height": DISPLAY_SIZE, "interactive": False, "format": "png", "buttons": ["download"]}
            original = gr.Image(shown(to_uint8(first.x)), label="original", elem_id="original", **kw)
            recon = gr.Image(shown(first.reconstruction), label="reconstruction", elem_id="reconstruction", **kw)
            transfer = gr.Image(shown(first.reconstruction), label="transfer", elem_id="transfer", **kw)
        status = gr.Markdown(first.name, elem_id="status")
        with gr.Row():
            with gr.Column(scale=1):
                index = gr.Number(0, label=f"{ex.split} image (0 to {len(ex.images) - 1}; Enter)", precision=0,
                                  minimum=0, maximum=len(ex.images) - 1, elem_id="index")
                upload = gr.File(label="or your own image", type="filepath", height=110, elem_id="upload")
            with gr.Column(scale=1):
                rand = gr.Button("random image", elem_id="random")
                reset = gr.Button("reset sliders", elem_id="reset")
                save = gr.Button("save", variant="primary", elem_id="save")
            probs = gr.Dataframe(ex.probability_rows(first, ex.transfer(first, {})),
                                 headers=["attribute", "original", "transfer", "change"],
                                 label="f(x) probabilities: the attributes that moved most", max_height=260,
                                 visible=ex.classifier is not None, interactive=False, scale=2, elem_id="probs")
        saved = gr.Markdown("", elem_id="saved")
        rule = "z + sum of lam_i u_i" if ex.latent else "the transfers applied in turn"
        gr.Markdown(f"Strength lam per domain, in [{lo:g}, {hi:g}]; several at once: {rule}.")
        sliders = []
        with gr.Row():
            per = -(-len(attrs) // SLIDER_COLUMNS)
            for c in range(SLIDER_COLUMNS):
                with gr.Column(min_width=160):
                    for name in attrs[c * per:(c + 1) * per]:
                        sliders.append(gr.Slider(lo, hi, 0.0, step=step, label=name, buttons=[],
                                                 elem_id=f"lam-{name}"))
        if ids:
            with gr.Row():
                ident = gr.Dropdown(ids, value=None, label=f"identity ({len(ids)})", filterable=True,
                                    elem_id="identity")
                sliders += [ident, gr.Slider(lo, hi, 0.0, step=step, label="identity lam", buttons=[],
                                             elem_id="lam-identity")]

        picture_out = [state, original, recon, transfer, probs, status]
        index.submit(on_index, [index, *sliders], picture_out)
        rand.click(on_random, sliders, [index, *picture_out])
        upload.upload(on_upload, [upload, state, *sliders], [*picture_out, upload])
        for s in sliders:
            s.input(on_slider, [state, *sliders], [transfer, probs, status], trigger_mode="always_last")
        zeros = [gr.update(value=0.0) if isinstance(s, gr.Slider) else gr.update() for s in sliders]
        reset.click(lambda: zeros, None, sliders).then(on_slider, [state, *sliders], [transfer, probs, status])
        save.click(on_save, [state, *sliders], saved)
    return app


def serve(c: ExploreConfig, block: bool = True):
    """Load, build and start the page on c.host (a free port when c.port is busy); prints the URL. With
    block=False returns (app, url) with the server running in a thread."""
    gr = _import_gradio()
    ex = load_explorer(c)
    app = build_app(ex, os.path.abspath(c.out), c.model)
    port = free_port(c.host, c.port)
    app.queue(default_concurrency_limit=1)  # one decode at a time: the CPU threads are shared
    _, url, _ = app.launch(server_name=c.host, server_port=port, share=False, inbrowser=False, quiet=True,
                           prevent_thread_lock=True, theme=theme(), footer_links=[], ssr_mode=False)
    url = f"http://{c.host}:{port}/"
    print(f"dualvae explore: {url}  ({len(ex.images)} {c.split} images, {len(ex.names)} domains, "
          f"saves to {os.path.abspath(c.out)}; Ctrl+C stops it)", flush=True)
    if block:
        try:
            app.block_thread()
        finally:
            app.close()
    return app, url
