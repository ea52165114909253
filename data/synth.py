"""Generated CelebA-format data: cartoon faces whose 40 CelebA attributes are visible in the pixels.

CelebA itself cannot be downloaded here, so this module is the project's embedded default dataset. It writes a
folder laid out exactly like an aligned-and-cropped CelebA download (see data/celeba.py and
shared/celeba-format.md): img_align_celeba/000001.jpg ..., list_attr_celeba.txt, list_eval_partition.txt and
list_landmarks_align_celeba.txt.

* Labels (`sample_attributes`) follow CelebA's published frequencies and main dependencies, from a small
  hand-written generative process: Male and Young first, then the attributes that depend on them.
* Images (`render_face`) are drawn with PIL ImageDraw in canonical face coordinates that pass through a random
  pose (rotation +-8 deg, scale +-8%, shift +-6 px) before drawing, then lit by a random darkening ramp and, for
  Blurry, Gaussian-blurred. Every attribute has its own cue, made
  large enough to survive the 64x64 preprocessing (crop rows 20:198, downscale x0.36) and a blurry VAE
  reconstruction. All random numbers of an image are drawn up front in a fixed order, independent of its
  attributes, so rendering the same RNG state with one attribute flipped changes only that attribute's cue.
* Persons (`draw_persons`): the images are grouped by split and by the traits a person keeps from photo to
  photo (PERSON_TRAITS: sex, age group, hair colour or baldness, pale skin, big nose), and each group is cut at
  random into persons of about `images_per_person` images, numbered 1 .. P in a random order
  (identity_CelebA.txt). A person's images share those traits and their split, nothing else: each image is still
  drawn on its own. Persons come from their own RNG stream after the labels and images, so the images and
  attributes are those of a run that writes no identities.
* `write_synth_celeba` is deterministic for a seed whatever the number of workers: labels come from one
  seed-derived RNG, each image from its own np.random.SeedSequence([seed, index]), the persons from a third.
"""
from __future__ import annotations

import array
import functools
import math
import multiprocessing
import os

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from .celeba import (
    CELEBA_ATTRIBUTES,
    CELEBA_HEIGHT,
    CELEBA_WIDTH,
    IMAGE_DIR,
    celeba_partition_of,
    preprocess_image,
    write_celeba_attributes,
    write_celeba_identities,
    write_celeba_landmarks,
    write_celeba_partition,
)

A = {name: i for i, name in enumerate(CELEBA_ATTRIBUTES)}
NUM_ATTRIBUTES = len(CELEBA_ATTRIBUTES)
HAIR_COLOURS = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair")
# The attributes every image of a generated person shares: what stays from one photo of a face to the next
# (expression, makeup, accessories, beard, hair style and pose change).
PERSON_TRAITS = ("Male", "Young", "Bald", *HAIR_COLOURS, "Pale_Skin", "Big_Nose")
IMAGES_PER_PERSON = 10

# CelebA's attribute frequencies (share of +1), from shared/celeba-format.md.
CELEBA_FREQUENCIES = {
    "5_o_Clock_Shadow": 0.11, "Arched_Eyebrows": 0.27, "Attractive": 0.51, "Bags_Under_Eyes": 0.20,
    "Bald": 0.02, "Bangs": 0.15, "Big_Lips": 0.24, "Big_Nose": 0.23, "Black_Hair": 0.24, "Blond_Hair": 0.15,
    "Blurry": 0.05, "Brown_Hair": 0.21, "Bushy_Eyebrows": 0.14, "Chubby": 0.06, "Double_Chin": 0.05,
    "Eyeglasses": 0.07, "Goatee": 0.06, "Gray_Hair": 0.04, "Heavy_Makeup": 0.39, "High_Cheekbones": 0.46,
    "Male": 0.42, "Mouth_Slightly_Open": 0.48, "Mustache": 0.04, "Narrow_Eyes": 0.12, "No_Beard": 0.83,
    "Oval_Face": 0.28, "Pale_Skin": 0.04, "Pointy_Nose": 0.28, "Receding_Hairline": 0.08, "Rosy_Cheeks": 0.07,
    "Sideburns": 0.06, "Smiling": 0.48, "Straight_Hair": 0.21, "Wavy_Hair": 0.32, "Wearing_Earrings": 0.19,
    "Wearing_Hat": 0.05, "Wearing_Lipstick": 0.47, "Wearing_Necklace": 0.12, "Wearing_Necktie": 0.07,
    "Young": 0.78,
}


# ---------------------------------------------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------------------------------------------


def sample_attributes(rng: np.random.Generator, num: int) -> np.ndarray:
    """num rows of the 40 CelebA attributes -> int8 (num, 40) of -1/+1, in CelebA's order and frequencies.

    Male and Young are drawn first; the rest conditionally on them (and on each other where CelebA's labels
    depend): makeup and lipstick almost only without Male; facial hair, sideburns, stubble and neckties mostly
    with Male; No_Beard is -1 whenever Goatee, Mustache or a full beard is present; at most one of
    Black/Blond/Brown/Gray_Hair, none when Bald; Smiling drives Mouth_Slightly_Open and High_Cheekbones; gray
    hair mostly when not Young."""
    n = int(num)
    u = rng.random((n, 48))  # one column per decision, in a fixed order
    col = iter(range(48))

    def draw(p) -> np.ndarray:
        return u[:, next(col)] < p

    male = draw(0.42)
    young = draw(np.where(male, 0.68, 0.85))
    m, f, y, o = male, ~male, young, ~young
    out = np.zeros((n, NUM_ATTRIBUTES), dtype=bool)

    def put(name: str, value: np.ndarray) -> np.ndarray:
        out[:, A[name]] = value
        return value

    put("Male", male)
    put("Young", young)

    # Hair: bald, then gray, then one of black/blond/brown/other.
    bald = put("Bald", draw(np.where(m, np.where(y, 0.02, 0.115), 0.001)))
    gray = put("Gray_Hair", ~bald & draw(np.where(y, 0.008, 0.155)))
    has_colour = ~bald & ~gray
    v = u[:, next(col)]
    p_black = np.where(m, 0.29, 0.23)
    p_blond = np.where(m, 0.045, 0.245)
    p_brown = np.where(m, 0.215, 0.225)
    put("Black_Hair", has_colour & (v < p_black))
    put("Blond_Hair", has_colour & (v >= p_black) & (v < p_black + p_blond))
    put("Brown_Hair", has_colour & (v >= p_black + p_blond) & (v < p_black + p_blond + p_brown))
    wavy = put("Wavy_Hair", ~bald & draw(np.where(m, 0.15, 0.47)))
    put("Straight_Hair", ~bald & ~wavy & draw(np.where(m, 0.30, 0.34)))
    bangs = put("Bangs", ~bald & draw(np.where(m, 0.085, 0.205)))
    # Bangs would hide a receding hairline: the two exclude each other.
    put("Receding_Hairline", ~bald & ~bangs & draw(np.where(m, np.where(y, 0.088, 0.27), np.where(y, 0.045, 0.11))))

    # Facial hair (men): any facial hair, then goatee / mustache; neither of them means a full beard.
    facial = draw(np.where(m, 0.405, 0.003))
    goatee = put("Goatee", facial & draw(0.35))
    mustache = put("Mustache", facial & draw(0.235))
    put("No_Beard", ~facial)
    full_beard = facial & ~goatee & ~mustache
    put("5_o_Clock_Shadow", ~full_beard & draw(np.where(m, np.where(facial, 0.12, 0.41), 0.004)))
    put("Sideburns", draw(np.where(m, np.where(facial, 0.22, 0.075), 0.002)))
    del goatee, mustache

    # Makeup.
    makeup = put("Heavy_Makeup", draw(np.where(m, 0.007, np.where(y, 0.72, 0.34))))
    put("Wearing_Lipstick", draw(np.where(m, 0.008, np.where(makeup, 0.97, 0.47))))

    # Expression.
    smiling = put("Smiling", draw(0.48))
    put("Mouth_Slightly_Open", draw(np.where(smiling, 0.72, 0.25)))
    put("High_Cheekbones", draw(np.where(smiling, np.where(f, 0.84, 0.72), np.where(f, 0.17, 0.10))))

    # Face and features.
    put("Attractive", draw(np.where(f, np.where(y, 0.75, 0.25), np.where(y, 0.40, 0.10))))
    put("Bags_Under_Eyes", draw(np.where(y, 0.14, 0.42)))
    put("Arched_Eyebrows", draw(np.where(f, 0.42, 0.06)))
    put("Bushy_Eyebrows", draw(np.where(m, 0.25, 0.06)))
    put("Big_Lips", draw(np.where(f, 0.27, 0.20)))
    put("Big_Nose", draw(np.where(m, 0.40, np.where(y, 0.08, 0.20))))
    put("Pointy_Nose", draw(np.where(f, 0.35, 0.18)))
    put("Narrow_Eyes", draw(0.12))
    chubby = put("Chubby", draw(np.where(y, 0.04, 0.13)))
    put("Double_Chin", draw(np.where(chubby, 0.5, np.where(y, 0.017, 0.055))))
    put("Oval_Face", ~chubby & draw(np.where(f, 0.35, 0.23)))
    put("Pale_Skin", draw(np.where(f, 0.06, 0.015)))
    put("Rosy_Cheeks", draw(np.where(f, 0.11, 0.01)))
    put("Blurry", draw(0.05))
    put("Eyeglasses", draw(np.where(y, 0.05, 0.14)))

    # Accessories.
    put("Wearing_Earrings", draw(np.where(f, 0.31, 0.03)))
    put("Wearing_Hat", draw(0.05))
    put("Wearing_Necklace", draw(np.where(f, 0.20, 0.01)))
    put("Wearing_Necktie", draw(np.where(m, 0.16, 0.005)))
    return np.where(out, 1, -1).astype(np.int8)


# ---------------------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------------------

CX, FY = 89.0, 110.0  # face centre (output coordinates, before jitter)
EYE_Y, EYE_DX = 106.0, 20.0
NOSE_Y, MOUTH_Y = 127.0, 145.0
PIVOT = (89.0, 112.0)  # rotation / scaling centre of the pose jitter
SIZE = (CELEBA_WIDTH, CELEBA_HEIGHT)

SKIN_LIGHT, SKIN_DARK = np.array([236, 196, 166.0]), np.array([118, 78, 56.0])
PALE = np.array([253, 242, 238.0])
HAIR = {
    "Black_Hair": [(22, 20, 22), (35, 28, 26), (15, 15, 25)],
    "Blond_Hair": [(240, 212, 120), (228, 196, 96), (250, 226, 150)],
    "Brown_Hair": [(110, 66, 34), (92, 56, 30), (128, 80, 44)],
    "Gray_Hair": [(176, 176, 180), (200, 200, 204), (150, 150, 156)],
    "other": [(190, 60, 25), (215, 105, 35), (165, 28, 45), (150, 60, 140), (60, 90, 170)],  # red, ginger, dyed
}
VIVID = [(220, 30, 40), (30, 90, 220), (30, 170, 70), (240, 180, 20), (150, 40, 190), (20, 180, 200),
         (240, 110, 20), (230, 60, 150)]
CLOTHES = [(60, 70, 120), (120, 40, 40), (40, 100, 70), (90, 90, 90), (170, 150, 110), (40, 40, 45),
           (150, 80, 150), (80, 130, 170), (200, 190, 170)]
EYE_COLOURS = [(70, 45, 25), (40, 90, 150), (60, 120, 60), (100, 70, 40), (30, 30, 30)]
LIPSTICK = [(220, 20, 50), (200, 10, 90), (235, 40, 40), (170, 0, 40)]
SHADOW_COLOURS = [(80, 120, 230), (150, 60, 200), (40, 170, 120), (220, 110, 40), (230, 80, 170)]
METALS = [(250, 215, 60), (225, 230, 240), (255, 120, 200)]
SHIRTS = [(245, 245, 245), (200, 220, 245), (240, 235, 215)]

_N_DIRS = 16
_gradients: list[Image.Image] | None = None


def _gradient(direction: float) -> Image.Image:
    """A 178x218 "L" ramp 0..255 along one of _N_DIRS directions (cached: composites and multiplies with them
    are much cheaper than per-pixel numpy)."""
    global _gradients
    if _gradients is None:
        gy, gx = np.mgrid[0 : SIZE[1], 0 : SIZE[0]].astype(np.float32)
        gx, gy = gx - SIZE[0] / 2, gy - SIZE[1] / 2
        grads = []
        for k in range(_N_DIRS):
            t = 2 * math.pi * k / _N_DIRS
            d = math.cos(t) * gx + math.sin(t) * gy
            d = (d - d.min()) / (d.max() - d.min())
            grads.append(Image.fromarray(np.round(d * 255).astype(np.uint8), "L"))
        _gradients = grads
    return _gradients[int(direction * _N_DIRS) % _N_DIRS]


@functools.lru_cache(maxsize=_N_DIRS)
def _gradient_rgb(k: int) -> Image.Image:
    return _gradient(k / _N_DIRS).convert("RGB")


_RAMP = Image.frombytes("L", (256, 1), bytes(range(256)))


def _background(c1: tuple, c2: tuple, direction: float) -> Image.Image:
    """= Image.composite(Image.new("RGB", SIZE, c2), Image.new("RGB", SIZE, c1), _gradient(direction)), pixel for
    pixel, at a fraction of the cost: the blend of c1 and c2 for each of the 256 mask values is taken from the same
    composite on a 256x1 ramp, and applied to the RGB gradient as a per-band lookup table."""
    strip = Image.composite(Image.new("RGB", (256, 1), c2), Image.new("RGB", (256, 1), c1), _RAMP).tobytes()
    grad = _gradient_rgb(int(direction * _N_DIRS) % _N_DIRS)
    # = grad.point(lut) (whose only extra step, rounding the table, leaves integers unchanged)
    return grad._new(grad.im.point(list(strip[0::3] + strip[1::3] + strip[2::3]), None))


_LIGHT_LEVELS = 8


@functools.lru_cache(maxsize=_N_DIRS * _LIGHT_LEVELS)
def _lighting_image(direction: int, level: int) -> Image.Image:
    dark = int(255 * (0.12 + 0.22 * level / (_LIGHT_LEVELS - 1)))
    light = _gradient(direction / _N_DIRS).point([255 - dark + (v * dark) // 255 for v in range(256)])
    return Image.merge("RGB", (light, light, light))


def _lighting(direction: float, amount: float) -> Image.Image:
    """RGB multiplier image: 255 on the lit side falling to 255 * (1 - amount) on the other (amount in
    [0.12, 0.34], quantized; cached)."""
    level = int(round((amount - 0.12) / 0.22 * (_LIGHT_LEVELS - 1)))
    return _lighting_image(int(direction * _N_DIRS) % _N_DIRS, min(max(level, 0), _LIGHT_LEVELS - 1))


def _c(rgb, a: int | None = None) -> tuple:
    r, g, b = rgb
    r = float(r)
    g = float(g)
    b = float(b)
    r = int(255.0 if r > 255.0 else (r if r > 0.0 else 0.0))
    g = int(255.0 if g > 255.0 else (g if g > 0.0 else 0.0))
    b = int(255.0 if b > 255.0 else (b if b > 0.0 else 0.0))
    return (r, g, b) if a is None else (r, g, b, a)


@functools.lru_cache(maxsize=256)
def _unit_arc(a0: float, a1: float, n: int) -> np.ndarray:
    t = np.radians(np.linspace(a0, a1, n))
    return np.stack([np.cos(t), np.sin(t)], axis=1)


@functools.lru_cache(maxsize=256)
def _unit_arc_list(a0: float, a1: float, n: int) -> tuple:
    """_unit_arc as a tuple of (cos, sin) Python floats (the same float64 values)."""
    return tuple(map(tuple, _unit_arc(a0, a1, n).tolist()))


def _flat(pts) -> list:
    """Points (an (n, 2) array or a sequence of (x, y)) -> [x0, y0, x1, y1, ...] (the same values)."""
    if isinstance(pts, np.ndarray):
        return pts.ravel().tolist()
    return [v for p in pts for v in p]


class _Pen:
    """ImageDraw in canonical face coordinates: every point goes through the pose jitter (rotation about PIVOT,
    scale, shift), so the picture is drawn once, straight into the 178x218 frame. Ellipses, arcs and chords are
    polygons (they rotate). Shapes are recorded (their points as one flat list of floats) and drawn in order by
    `flush`, which transforms all their points in one numpy operation (per-shape numpy calls would cost more than
    the drawing)."""

    def __init__(self, img: Image.Image, angle_deg: float, scale: float, shift: tuple[float, float]):
        self.img = img
        th = math.radians(angle_deg)
        self.m = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]]) * scale
        self.o = np.array(PIVOT) + np.array(shift)
        self.scale = scale
        self.ops: list[tuple[bool, int, tuple, int]] = []
        self.flat: list = []

    def tr(self, pts) -> np.ndarray:
        p = np.asarray(pts, dtype=np.float64).reshape(-1, 2) - PIVOT
        return p @ self.m.T + self.o

    def poly(self, pts, fill) -> None:
        f = _flat(pts)
        self.flat += f
        self.ops.append((True, len(f) >> 1, fill, 0))

    def line(self, pts, fill, width: float) -> None:
        f = _flat(pts)
        self.flat += f
        self.ops.append((False, len(f) >> 1, fill, max(1, int(width * self.scale + 0.5))))

    def _poly_flat(self, f: list, fill) -> None:
        self.flat += f
        self.ops.append((True, len(f) >> 1, fill, 0))

    def _line_flat(self, f: list, fill, width: float) -> None:
        self.flat += f
        self.ops.append((False, len(f) >> 1, fill, max(1, int(width * self.scale + 0.5))))

    @staticmethod
    def _arc_flat(cx, cy, rx, ry, a0=0.0, a1=360.0, n=24) -> list:
        """Points of an elliptic arc, flat: _unit_arc(a0, a1, n) * (rx, ry) + (cx, cy), in plain float arithmetic
        (elementwise the same float64 operations as that numpy expression, hence the same values)."""
        cx, cy, rx, ry = float(cx), float(cy), float(rx), float(ry)
        return [v for ux, uy in _unit_arc_list(float(a0), float(a1), int(n)) for v in (ux * rx + cx, uy * ry + cy)]

    def ellipse(self, cx, cy, rx, ry, fill=None, outline=None, width: float = 0, n: int = 24) -> None:
        pts = self._arc_flat(cx, cy, rx, ry, 0, 360 * (n - 1) / n, n)
        if fill is not None:
            self._poly_flat(pts, fill)
        if outline is not None:
            self._line_flat(pts + pts[:4], outline, width)

    def arc(self, cx, cy, rx, ry, a0, a1, fill, width: float, n: int = 14) -> None:
        self._line_flat(self._arc_flat(cx, cy, rx, ry, a0, a1, n), fill, width)

    def chord(self, cx, cy, rx, ry, a0, a1, fill, n: int = 16) -> None:
        self._poly_flat(self._arc_flat(cx, cy, rx, ry, a0, a1, n), fill)

    def rect(self, x0, y0, x1, y1, fill) -> None:
        self._poly_flat([x0, y0, x1, y0, x1, y1, x0, y1], fill)

    def flush(self) -> None:
        if not self.ops:
            return
        flat = self.tr(np.frombuffer(array.array("d", self.flat), dtype=np.float64)).ravel().tolist()
        dr = ImageDraw.Draw(self.img, "RGBA")
        core = dr.draw
        draw_polygon, draw_lines, draw_ink = core.draw_polygon, core.draw_lines, core.draw_ink
        inks: dict = {}
        i = 0
        for is_poly, n, fill, width in self.ops:
            j = i + 2 * n
            xy = flat[i:j]
            i = j
            ink = inks.get(fill)
            if ink is None:
                ink = inks[fill] = draw_ink(fill)
            if is_poly:
                draw_polygon(xy, ink, 1)  # = ImageDraw.polygon(xy, fill=fill)
            elif width > 4 and n > 2:
                dr.line(xy, fill=fill, width=width, joint="curve")  # round joints: ImageDraw's own code
            else:
                draw_lines(xy, ink, width)  # = ImageDraw.line(xy, fill, width) (no joints to round)
        self.ops, self.flat = [], []


def _zip_flat(xs, ys) -> list:
    """[xs[0], ys[0], xs[1], ys[1], ...]"""
    return [v for p in zip(xs, ys) for v in p]


# Trigonometric tables of render_face: the same numpy calls on the same constant arrays, done once.
_HM_T = np.radians(np.linspace(180, 360, 28))  # hair mass behind the face
_HM_COS, _HM_SIN, _HM_9T = np.cos(_HM_T), np.sin(_HM_T), 9 * _HM_T
_FH_T = np.radians(np.linspace(184, 356, 24))  # front hair cap
_FH_COS, _FH_SIN = np.cos(_FH_T), np.sin(_FH_T)
_YY01 = np.linspace(0, 1, 8)
_YY01_LIST = _YY01.tolist()
_NECKLACE_T = np.linspace(0.2, np.pi - 0.2, 7).tolist()


@functools.lru_cache(maxsize=16)
def _jaw_unit(jaw_n: float) -> tuple:
    """Pieces of the face outline (a superellipse below, an ellipse above) for one jaw exponent."""
    t = np.linspace(0, 2 * np.pi, 60, endpoint=False)
    c, sn = np.cos(t), np.sin(t)
    e = np.where(sn > 0, 2.0 / jaw_n, 1.0)
    return np.sign(c), np.abs(c) ** e, np.sign(sn), np.abs(sn) ** e


class _Style:
    """Every random number of one image, drawn in a fixed order whatever its attributes (so that flipping one
    attribute of the same RNG state changes only that attribute's cue)."""

    def __init__(self, rng: np.random.Generator):
        u = rng.random(48)
        self.angle = (u[0] * 2 - 1) * 8.0
        self.scale = 1.0 + (u[1] * 2 - 1) * 0.08
        self.shift = ((u[2] * 2 - 1) * 6.0, (u[3] * 2 - 1) * 6.0)
        self.skin_t = u[4]
        self.hair_pick = u[5]
        self.eye_colour = EYE_COLOURS[int(u[6] * len(EYE_COLOURS))]
        self.bg1 = (40 + u[28:31] * 200).tolist()
        self.bg2 = (40 + u[31:34] * 200).tolist()
        self.bg_dir = u[7]
        self.clothes = CLOTHES[int(u[8] * len(CLOTHES))]
        self.collar_style = int(u[9] * 3)
        self.light_dir = u[10]
        self.light_amp = 0.12 + 0.22 * u[11]
        self.width = 1.0 + (u[12] * 2 - 1) * 0.04
        self.height = 1.0 + (u[13] * 2 - 1) * 0.03
        self.vivid = [VIVID[int(x * len(VIVID))] for x in u[34:38]]  # hat, tie, earring, necklace
        self.lip_colour = LIPSTICK[int(u[14] * len(LIPSTICK))]
        self.shadow_colour = SHADOW_COLOURS[int(u[15] * len(SHADOW_COLOURS))]
        self.hat_type = int(u[16] * 3)
        self.earring_type = int(u[17] * 2)
        self.necklace_type = int(u[18] * 2)
        self.glasses_type = int(u[19] * 2)
        self.wave_phase = u[20] * 2 * math.pi
        self.hair_volume = u[21]
        self.blur = float(3.2 + 1.2 * u[22])
        self.tie_shirt = SHIRTS[int(u[23] * len(SHIRTS))]
        self.eye_dx = EYE_DX + (u[24] * 2 - 1) * 1.5
        self.mouth_w = 1.0 + (u[25] * 2 - 1) * 0.08
        self.metal = METALS[int(u[26] * len(METALS))]
        self.blotch = u[38:44].reshape(3, 2)
        self.brow_lift = (u[27] * 2 - 1) * 1.5


def render_face(attrs, rng: np.random.Generator) -> tuple[Image.Image, np.ndarray]:
    """One cartoon face with the given attributes (40 values of -1/+1 in CelebA's order) ->
    (RGB image 178 wide x 218 high, landmarks (10,) float: eyes, nose tip, mouth corners as x, y pairs).

    Inconsistent combinations are drawn as well as they can be (the first set hair colour in the order
    Gray, Blond, Black, Brown wins; Bald wins over them; a Goatee or Mustache is drawn whatever No_Beard says;
    No_Beard = -1 with neither draws a full beard)."""
    a = np.asarray(attrs).reshape(-1)
    if a.shape != (NUM_ATTRIBUTES,):
        raise ValueError(f"render_face expects {NUM_ATTRIBUTES} attribute values, got shape {np.shape(attrs)}")
    al = a.tolist()
    on = {name: al[i] > 0 for name, i in A.items()}
    s = _Style(rng)
    male, young, bald = on["Male"], on["Young"], on["Bald"]

    # ---- colours ----
    if on["Pale_Skin"]:
        skin = PALE - np.array([6, 8, 10.0]) * s.skin_t
    else:
        skin = SKIN_LIGHT + (SKIN_DARK - SKIN_LIGHT) * (0.05 + 0.95 * s.skin_t)
    if not young:  # older skin: a little duller and grayer
        skin = skin * 0.88 + skin.mean() * 0.12 - 6
    shade = skin * 0.78
    for name in ("Gray_Hair", "Blond_Hair", "Black_Hair", "Brown_Hair"):
        if on[name]:
            choices = HAIR[name]
            break
    else:
        choices = HAIR["other"]
    hair = np.array(choices[int(s.hair_pick * len(choices))], dtype=float)
    hair_mean = hair.mean()
    strand = hair * 1.3 + 70 if hair_mean < 80 else hair * 0.55
    brow = np.minimum(hair * 0.6 if hair_mean > 120 else hair * 0.9, skin * 0.42)
    if on["Gray_Hair"]:
        beard_col = hair * 0.85
    else:
        beard_col = np.minimum(hair * (0.85 if hair_mean > 150 else 1.0), skin * 0.6)
    hair_c, strand_c, skin_c, shade_c = _c(hair), _c(strand), _c(skin), _c(shade)

    # ---- face geometry ----
    rx, ry = 42.0 * s.width, 54.0 * s.height
    jaw_n = 3.2 if male else 2.2  # superellipse exponent of the lower half (higher = squarer jaw)
    if male:
        rx *= 1.05
    if on["Chubby"]:
        rx *= 1.24
        ry *= 1.03
        jaw_n = max(jaw_n, 2.8)
    if on["Oval_Face"]:
        rx *= 0.86
        ry *= 1.12
        jaw_n = 1.6
    face_top, chin_y = FY - ry, FY + ry

    # ---- canvas: background gradient, then everything through the pose jitter ----
    img = _background(_c(s.bg1), _c(s.bg2), s.bg_dir)
    pen = _Pen(img, s.angle, s.scale, s.shift)

    long_hair = not male and not bald
    hair_rx = rx + (14 + 8 * s.hair_volume if long_hair else 6 + 3 * s.hair_volume)
    hair_cy = FY - 6
    hair_ry = hair_cy - (face_top - (14 + 6 * s.hair_volume if long_hair else 9 + 3 * s.hair_volume))
    wavy, straight = on["Wavy_Hair"], on["Straight_Hair"]

    # ---- long hair behind the head ----
    if long_hair:
        bottom = 190.0
        ys = np.linspace(hair_cy, bottom, 14)
        ysl = ys.tolist()
        if wavy:
            wl = (6.0 * np.sin((ys - hair_cy) / 9.0 + s.wave_phase)).tolist()
        else:
            wl = [0.0] * len(ysl)
        xr0, xl0 = CX + hair_rx + 4, CX - hair_rx - 4
        f = pen._arc_flat(CX, hair_cy, hair_rx + 4, hair_ry, 180, 360, 20)
        for w, y in zip(wl, ysl):
            f += (xr0 + w, y)
        f += (CX + rx * 0.5, bottom, CX - rx * 0.5, bottom)
        for w, y in zip(wl[::-1], ysl[::-1]):
            f += (xl0 - w, y)
        pen._poly_flat(f, hair_c)
        if straight or wavy:
            yy = np.linspace(hair_cy - 10, bottom - 4, 12)
            yl = yy.tolist()
            if wavy:
                waves = [(4.0 * np.sin(yy / 7.0 + s.wave_phase + k)).tolist() for k in range(4)]
            for side in (-1, 1):
                for k in range(4):
                    x0 = CX + side * (rx + 3 + k * (hair_rx - rx) / 3.5)
                    if wavy:
                        f = _zip_flat([x0 + w for w in waves[k]], yl)
                    else:
                        f = [v for y in yl for v in (x0, y)]
                    pen._line_flat(f, strand_c, 3)

    # ---- clothes, neck, tie ----
    neck_w = (20.0 if male else 14.0) + (5 if on["Chubby"] else 0)
    sh_y = 180.0
    neck_c = _c(shade * 1.08)
    cloth = s.tie_shirt if on["Wearing_Necktie"] else s.clothes
    pen.poly([(CX - neck_w - 8, sh_y - 6), (CX - 70, sh_y + 6), (CX - 100, sh_y + 20), (-40, 240), (220, 240),
              (CX + 100, sh_y + 20), (CX + 70, sh_y + 6), (CX + neck_w + 8, sh_y - 6)], _c(cloth))
    pen.rect(CX - neck_w, FY + 20, CX + neck_w, sh_y - 2, neck_c)
    if on["Wearing_Necktie"]:
        tie = _c(s.vivid[1])
        pen.poly([(CX - 6, sh_y - 8), (CX + 6, sh_y - 8), (CX + 5, sh_y + 2), (CX - 5, sh_y + 2)], tie)
        pen.poly([(CX - 5, sh_y + 2), (CX + 5, sh_y + 2), (CX + 12, sh_y + 26), (CX, sh_y + 34), (CX - 12, sh_y + 26)], tie)
        collar = _c(np.array(s.tie_shirt) * 0.9)
        pen.poly([(CX - neck_w - 6, sh_y - 12), (CX - 4, sh_y - 6), (CX - 15, sh_y + 9)], collar)
        pen.poly([(CX + neck_w + 6, sh_y - 12), (CX + 4, sh_y - 6), (CX + 15, sh_y + 9)], collar)
    elif s.collar_style == 0:  # crew neck
        pen.chord(CX, sh_y - 5, neck_w + 6, 11, 0, 180, neck_c)
    elif s.collar_style == 1:  # v neck
        pen.poly([(CX - neck_w - 6, sh_y - 6), (CX + neck_w + 6, sh_y - 6), (CX, sh_y + 16)], neck_c)
    else:  # scoop
        pen.chord(CX, sh_y - 4, neck_w + 14, 18, 0, 180, neck_c)

    # ---- hair mass behind the face ----
    if not bald:
        cut = FY + (4 if long_hair else -8)
        r = 1 + (0.09 * (1 + np.sin(_HM_9T + s.wave_phase)) if wavy else 0)
        px = (CX + hair_rx * r * _HM_COS).tolist()
        py = (hair_cy + hair_ry * r * _HM_SIN).tolist()
        pen._poly_flat([px[0], cut] + _zip_flat(px, py) + [px[-1], cut], hair_c)

    # ---- ears, face ----
    for side in (-1, 1):
        pen.ellipse(CX + side * (rx - 1), EYE_Y + 5, 7, 13, fill=_c(shade * 1.05), n=16)
    sign_c, pow_c, sign_s, pow_s = _jaw_unit(jaw_n)
    pen._poly_flat(_zip_flat((CX + rx * sign_c * pow_c).tolist(), (FY + ry * sign_s * pow_s).tolist()), skin_c)
    if bald:  # skull dome above the forehead, with a shine
        pen.chord(CX, FY - 4, rx, ry + 2, 180, 360, skin_c)
        pen.ellipse(CX - 4, face_top + 4, 14, 7, fill=_c(np.minimum(skin + 60, 255), 190))
    if on["Chubby"]:  # puffy cheeks
        for side in (-1, 1):
            pen.arc(CX + side * rx * 0.55, NOSE_Y + 4, 16, 18, 20 if side > 0 else 70, 110 if side > 0 else 160,
                    _c(shade * 0.9), 3)
    if on["Double_Chin"]:
        pen.chord(CX, chin_y - 2, rx * 0.6, 16, 0, 180, skin_c)
        pen.arc(CX, chin_y - 2, rx * 0.6, 16, 12, 168, _c(shade * 0.6), 5)
        pen.arc(CX, chin_y - 10, rx * 0.45, 9, 20, 160, _c(shade * 0.65), 4)

    # ---- skin marks: age, cheekbones, rosy, attractiveness, stubble, beard ----
    if not young:  # wrinkles: forehead, crow's feet, nasolabial folds, jowls
        wr = _c(shade * 0.6)
        for k, yy in enumerate((face_top + 17, face_top + 25, face_top + 33)):
            w = 23 - 3 * k
            pen.line([(CX - w, yy + 2), (CX, yy), (CX + w, yy + 2)], wr, 4)
        for side in (-1, 1):
            ox = CX + side * (s.eye_dx + 11)
            for dy in (-6, 0, 6):
                pen.line([(ox, EYE_Y), (ox + side * 9, EYE_Y + dy)], wr, 3)
            pen.line([(CX + side * 11, NOSE_Y - 2), (CX + side * 20, MOUTH_Y - 2), (CX + side * 22, MOUTH_Y + 9)], wr, 5)
            pen.line([(CX + side * rx * 0.78, MOUTH_Y + 2), (CX + side * rx * 0.6, chin_y - 6)], wr, 4)
    if on["Rosy_Cheeks"]:
        for side in (-1, 1):
            pen.ellipse(CX + side * rx * 0.55, NOSE_Y, 11, 9, fill=(235, 50, 90, 190), n=16)
    if on["Attractive"]:
        pen.ellipse(CX, face_top + 19, 14, 7, fill=(255, 255, 255, 70), n=16)
    else:
        for bx, by in s.blotch:
            pen.ellipse(CX + (bx * 2 - 1) * rx * 0.6, NOSE_Y - 6 + by * 18, 4, 4, fill=_c(shade * 0.75, 200), n=10)
    if on["5_o_Clock_Shadow"]:
        pen.poly([(CX - rx * 0.92, NOSE_Y - 4), (CX - rx * 0.55, NOSE_Y + 4), (CX + rx * 0.55, NOSE_Y + 4),
                  (CX + rx * 0.92, NOSE_Y - 4), (CX + rx * 0.85, chin_y - 14), (CX + rx * 0.4, chin_y - 2),
                  (CX - rx * 0.4, chin_y - 2), (CX - rx * 0.85, chin_y - 14)], (45, 55, 85, 150))
    beard_c = _c(beard_col)
    if not on["No_Beard"] and not on["Goatee"] and not on["Mustache"]:
        pen.poly([(CX - rx * 0.98, EYE_Y + 8), (CX - rx * 0.7, MOUTH_Y - 10), (CX + rx * 0.7, MOUTH_Y - 10),
                  (CX + rx * 0.98, EYE_Y + 8), (CX + rx * 0.95, chin_y - 12), (CX + rx * 0.45, chin_y + 5),
                  (CX - rx * 0.45, chin_y + 5), (CX - rx * 0.95, chin_y - 12)], beard_c)
    if on["Goatee"]:
        pen.poly([(CX - 14, MOUTH_Y + 5), (CX + 14, MOUTH_Y + 5), (CX + 12, chin_y - 2), (CX, chin_y + 5),
                  (CX - 12, chin_y - 2)], beard_c)
    if on["Sideburns"]:
        for side in (-1, 1):
            x0 = CX + side * (rx - 1)
            pen.poly([(x0, EYE_Y - 16), (x0 - side * 12, EYE_Y - 16), (x0 - side * 10, MOUTH_Y - 4),
                      (x0 + side * 1, MOUTH_Y - 4)], beard_c)

    if on["High_Cheekbones"]:
        hi = _c(np.minimum(skin * 1.2 + 45, 255))
        for side in (-1, 1):
            x = CX + side * rx * 0.62
            pen.line([(x + side * 10, EYE_Y + 7), (x - side * 6, NOSE_Y + 2)], hi, 6)
            pen.line([(x + side * 12, EYE_Y + 18), (x - side * 3, NOSE_Y + 12)], _c(shade * 0.8), 5)

    # ---- front hair: cap down to the hairline, bangs, strands ----
    if not bald:
        top = np.stack([CX + (rx + 2) * _FH_COS, FY - 2 + (ry + 4) * _FH_SIN], 1)
        xs = np.linspace(CX + rx + 2, CX - rx - 2, 19)
        rel = (xs - CX) / rx
        if on["Receding_Hairline"]:
            hl = face_top + 10 + 26 * np.abs(rel) ** 4 - 10 * np.exp(-((np.abs(rel) - 0.55) ** 2) / 0.02)
            hl = np.maximum(hl, face_top + 1)
        else:
            hl = face_top + 24 + 10 * rel**2
        hl[0] = hl[-1] = EYE_Y - 16
        pen.poly(np.vstack([top, np.stack([xs, hl], 1)]), hair_c)
        if on["Bangs"]:
            bx = np.linspace(CX - rx + 2, CX + rx - 2, 15)
            by = np.full_like(bx, EYE_Y - 16)
            by[1::2] -= 6
            pen.poly(np.vstack([[(CX - rx - 2, FY - 20)], np.stack([bx, by], 1), [(CX + rx + 2, FY - 20)], top[::-1][2:-2]]),
                     hair_c)
        if straight or wavy:
            kxs = [CX + k * rx / 6.0 for k in range(-5, 6)]
            if not on["Bangs"]:
                bots = np.interp(np.array(kxs), xs[::-1], hl[::-1]).tolist()  # elementwise as scalar calls
            for k, x in zip(range(-5, 6), kxs):
                y_top = FY - (ry + 2) * math.sqrt(max(0.0, 1 - ((x - CX) / (rx + 2)) ** 2)) + 4
                y_bot = (EYE_Y - 19) if on["Bangs"] else bots[k + 5] - 3
                if y_bot - y_top < 4:
                    continue
                if wavy:
                    yy = y_top + (y_bot - y_top) * _YY01
                    pen._line_flat(_zip_flat((x + 2.8 * np.sin(yy / 3.5 + s.wave_phase + k)).tolist(), yy.tolist()),
                                   strand_c, 4)
                else:
                    d = y_bot - y_top
                    pen._line_flat([v for t01 in _YY01_LIST for v in (x, y_top + d * t01)], strand_c, 4)

    # ---- eyebrows ----
    brow_c = _c(brow)
    for side in (-1, 1):
        ex = CX + side * s.eye_dx
        inner, outer = ex - side * 11, ex + side * 12
        by = EYE_Y - 13 + s.brow_lift
        if on["Arched_Eyebrows"]:
            pts = [(inner, by + 1), (ex - side * 2, by - 11), (outer, by + 4)]
        else:
            pts = [(inner, by), (ex, by - 2), (outer, by)]
        pen.line(pts, brow_c, 11 if on["Bushy_Eyebrows"] else 4)
        if on["Bushy_Eyebrows"]:
            for k in range(5):
                px = inner + (outer - inner) * (k + 0.5) / 5
                py = float(np.interp(px * side, [p[0] * side for p in pts], [p[1] for p in pts]))
                pen.line([(px, py - 7), (px + side * 3, py + 7)], brow_c, 3)

    # ---- eyes ----
    eye_rx, eye_ry = 9.5, 6.0
    if on["Narrow_Eyes"]:
        eye_ry = 2.2
    if on["Attractive"]:
        eye_rx, eye_ry = eye_rx * 1.08, eye_ry * 1.08
    eye_y = {-1: EYE_Y, 1: EYE_Y if on["Attractive"] else EYE_Y + 2.5}
    for side in (-1, 1):
        ex, ey = CX + side * s.eye_dx, eye_y[side]
        if on["Heavy_Makeup"]:
            pen.ellipse(ex, ey - 5, 13, 7, fill=_c(s.shadow_colour, 210), n=16)
        if on["Bags_Under_Eyes"]:
            pen.chord(ex, ey + 5, 12, 8.5, 0, 180, _c(shade * 0.55 + (30, 0, 40), 235), n=10)
        pen.ellipse(ex, ey, eye_rx, eye_ry, fill=(250, 250, 250), n=18)
        ir = min(4.8, eye_ry)
        pen.ellipse(ex, ey, 4.8, ir, fill=_c(s.eye_colour), n=12)
        pen.ellipse(ex, ey, 2.2, min(2.2, eye_ry * 0.6), fill=(10, 10, 10), n=8)
        pen.arc(ex, ey, eye_rx, eye_ry, 180, 360, (20, 15, 15), 4 if on["Heavy_Makeup"] else 2, n=10)
        if on["Heavy_Makeup"]:
            for k in range(3):
                lx = ex + side * (eye_rx - 2 + 2 * k)
                pen.line([(lx, ey - 1), (lx + side * 4, ey - 5 - k)], (10, 10, 10), 2)
        if on["Attractive"]:
            pen.ellipse(ex + 2.8, ey - 2.2, 1.9, 1.9, fill=(255, 255, 255), n=8)

    # ---- nose ----
    nose_c = _c(shade * 0.75)
    if on["Big_Nose"]:
        pen.poly([(CX - 4, EYE_Y), (CX + 4, EYE_Y), (CX + 9, NOSE_Y - 8), (CX - 9, NOSE_Y - 8)], _c(shade * 1.05))
        pen.ellipse(CX, NOSE_Y - 2, 16, 10, fill=_c(shade * 1.05), n=16)
        pen.arc(CX, NOSE_Y - 2, 16, 10, 10, 170, _c(shade * 0.55), 4, n=12)
        pen.ellipse(CX - 8, NOSE_Y + 2, 5, 4, fill=_c(shade * 0.45), n=8)
        pen.ellipse(CX + 8, NOSE_Y + 2, 5, 4, fill=_c(shade * 0.45), n=8)
    elif not on["Pointy_Nose"]:
        pen.line([(CX - 5, NOSE_Y + 1), (CX - 1, NOSE_Y + 2)], nose_c, 3)
        pen.line([(CX + 1, NOSE_Y + 2), (CX + 5, NOSE_Y + 1)], nose_c, 3)
    if on["Pointy_Nose"]:  # a long sharp wedge: lit left side, shadowed right side, tip pointing down
        pen.poly([(CX, EYE_Y - 2), (CX - 8, NOSE_Y + 2), (CX, NOSE_Y + 9)], _c(np.minimum(skin * 1.12 + 20, 255)))
        pen.poly([(CX, EYE_Y - 2), (CX + 7, NOSE_Y + 1), (CX, NOSE_Y + 9)], _c(shade * 0.7))

    # ---- mouth ----
    half = 14.0 * s.mouth_w
    lip_h = 3.0
    if on["Big_Lips"]:  # ~1 px per lip at 64x64 without, ~4 px with: thickness alone tells them apart
        half *= 1.2
        lip_h = 11.0
    if on["Smiling"]:
        half *= 1.15
    # Bare lips are darker than the skin, not just redder: JPEG keeps colour at half resolution, so only a
    # brightness edge shows how thick the lips are on a face without lipstick (most men, dark skin).
    lip = np.array(s.lip_colour, dtype=float) if on["Wearing_Lipstick"] else skin * 0.5 + (40, 0, 8)
    lip_c = _c(lip)
    curve = 7.0 if on["Smiling"] else 0.0
    gap = 8.0 if on["Mouth_Slightly_Open"] else (3.5 if on["Smiling"] else 0.0)
    xs = np.linspace(-half, half, 11)
    q = (xs / half) ** 2
    mid = MOUTH_Y + curve * (0.5 - q)  # corners up when smiling
    bulge = np.sqrt(1 - q)
    upper_top = mid - gap / 2 - lip_h * bulge - 0.5
    lower_bot = mid + gap / 2 + (lip_h + 1.5) * bulge + 0.5
    X = (CX + xs).tolist()
    Xr = X[::-1]
    ut, lb = upper_top.tolist(), lower_bot.tolist()
    mu, ml = (mid - gap / 2).tolist(), (mid + gap / 2).tolist()
    if gap > 0:
        pen._poly_flat(_zip_flat(X, mu) + _zip_flat(Xr, ml[::-1]), (30, 5, 10))
        if on["Smiling"]:
            pen._poly_flat(_zip_flat(X[2:-2], mu[2:-2]) + _zip_flat([x + 0 for x in Xr[2:-2]], [y + 3.5 for y in mu[-3:1:-1]]),
                           (250, 250, 245))
    pen._poly_flat(_zip_flat(X, ut) + _zip_flat(Xr, mu[::-1]), lip_c)
    pen._poly_flat(_zip_flat(X, ml) + _zip_flat(Xr, lb[::-1]), lip_c)
    if gap == 0:
        pen._line_flat(_zip_flat(X, mid.tolist()), _c(lip * 0.55), 2)
    pen._line_flat(_zip_flat(X, ut) + _zip_flat(Xr, lb[::-1]) + [X[0], ut[0]], _c(np.minimum(lip, skin) * 0.6), 2)
    if on["Mustache"]:
        cy = MOUTH_Y - curve * 0.5
        pen.poly([(CX - half - 4, cy + 2), (CX - 6, MOUTH_Y - lip_h - 10), (CX + 6, MOUTH_Y - lip_h - 10),
                  (CX + half + 4, cy + 2), (CX + half - 2, cy - 1), (CX, MOUTH_Y - lip_h - 3), (CX - half + 2, cy - 1)],
                 beard_c)

    # ---- glasses, earrings, necklace, hat ----
    if on["Eyeglasses"]:
        fr = (25, 20, 25) if s.glasses_type == 0 else (90, 20, 20)
        for side in (-1, 1):
            ex = CX + side * s.eye_dx
            if s.glasses_type == 0:
                box = [(ex - 14, EYE_Y - 11), (ex + 14, EYE_Y - 11), (ex + 14, EYE_Y + 11), (ex - 14, EYE_Y + 11)]
                pen.poly(box, (200, 220, 240, 50))
                pen.line(box + box[:2], fr, 4)
            else:
                pen.ellipse(ex, EYE_Y, 14, 11, fill=(200, 220, 240, 50), outline=fr, width=4, n=20)
            pen.line([(ex + side * 14, EYE_Y - 4), (CX + side * (rx + 1), EYE_Y - 2)], fr, 4)
        pen.line([(CX - s.eye_dx + 14, EYE_Y - 3), (CX + s.eye_dx - 14, EYE_Y - 3)], fr, 4)
    if on["Wearing_Earrings"]:
        col = _c(s.vivid[2] if s.earring_type == 0 else s.metal)
        for side in (-1, 1):
            ex, ey = CX + side * (rx + 1), EYE_Y + 22
            if s.earring_type == 0:
                pen.ellipse(ex, ey, 6.5, 6.5, fill=col, outline=(255, 255, 255), width=2, n=12)
            else:
                pen.ellipse(ex, ey + 4, 8, 8, outline=col, width=5, n=14)
    if on["Wearing_Necklace"]:
        col = _c(s.metal if s.necklace_type == 0 else s.vivid[3])
        ny = sh_y - 10
        pen.arc(CX, ny - 5, neck_w + 6, 15, 10, 170, col, 4)
        for tt in _NECKLACE_T:
            pen.ellipse(CX + (neck_w + 6) * math.cos(tt), ny - 5 + 15 * math.sin(tt), 4.5, 4.5, fill=col,
                        outline=(255, 255, 255), width=1, n=10)
    if on["Wearing_Hat"]:
        hc = _c(s.vivid[0])
        band = _c(np.array(s.vivid[0]) * 0.55)
        brim_y = face_top + 20
        if s.hat_type == 0:  # beanie
            pen.chord(CX, brim_y + 4, rx + 8, brim_y + 4 - (face_top - 22), 180, 360, hc)
            pen.rect(CX - rx - 9, brim_y - 8, CX + rx + 9, brim_y + 6, band)
        elif s.hat_type == 1:  # fedora
            pen.poly([(CX - rx + 2, brim_y), (CX - rx + 8, face_top - 24), (CX + rx - 8, face_top - 24), (CX + rx - 2, brim_y)], hc)
            pen.rect(CX - rx + 1, brim_y - 10, CX + rx - 1, brim_y - 3, band)
            pen.ellipse(CX, brim_y, rx + 24, 6, fill=hc)
        else:  # cap with a visor
            pen.chord(CX, brim_y + 3, rx + 6, brim_y + 3 - (face_top - 20), 180, 360, hc)
            pen.chord(CX + 8, brim_y + 2, rx + 10, 10, 0, 180, band)

    # ---- lighting (a darkening ramp), blur ----
    pen.flush()
    img = ImageChops.multiply(img, _lighting(s.light_dir, s.light_amp))
    if on["Blurry"]:
        img = img.filter(ImageFilter.GaussianBlur(s.blur))

    # ---- landmarks: eyes, nose tip, mouth corners through the pose jitter ----
    corner_y = MOUTH_Y - curve * 0.5
    canon = [(CX - s.eye_dx, eye_y[-1]), (CX + s.eye_dx, eye_y[1]), (CX, NOSE_Y), (CX - half, corner_y), (CX + half, corner_y)]
    return img, pen.tr(canon).reshape(-1)

# ---------------------------------------------------------------------------------------------------------------
# Writing a dataset
# ---------------------------------------------------------------------------------------------------------------


def _image_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(index)])))  # = default_rng


def _label_rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(7,)))


def _person_rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(11,)))


def _check_images_per_person(images_per_person) -> None:
    if isinstance(images_per_person, bool) or not isinstance(images_per_person, (int, np.integer)) or \
            images_per_person < 1:
        raise ValueError(f"images_per_person must be a positive integer, got {images_per_person!r}")


def draw_persons(labels: np.ndarray, partition, rng: np.random.Generator,
                 images_per_person: int = IMAGES_PER_PERSON) -> np.ndarray:
    """The person (an identity in 1 .. P) of each image, int64 (num,): the images are grouped by split and by
    their PERSON_TRAITS; each group, shuffled, is cut into round(size / images_per_person) persons (at least
    one) of near-equal sizes; the persons are numbered in a random order."""
    _check_images_per_person(images_per_person)
    labels = np.asarray(labels)
    traits = labels[:, [A[name] for name in PERSON_TRAITS]] > 0
    keys = np.concatenate([np.asarray(partition, dtype=np.int64)[:, None], traits.astype(np.int64)], 1)
    _, group = np.unique(keys, axis=0, return_inverse=True)
    group = group.reshape(-1)
    person = np.empty(len(labels), dtype=np.int64)
    count = 0
    for g in range(int(group.max()) + 1 if len(group) else 0):
        members = rng.permutation(np.flatnonzero(group == g))
        parts = max(1, int(round(len(members) / images_per_person)))
        for part in np.array_split(members, parts):
            person[part] = count
            count += 1
    return (rng.permutation(count) + 1)[person].astype(np.int64)


def _filename(index: int) -> str:
    return f"{index + 1:06d}.jpg"


def _render_chunk(task) -> tuple[int, np.ndarray]:
    """Pool worker: render and save images start.. of the chunk -> (start, landmarks (k, 10))."""
    image_dir, seed, start, labels = task
    marks = np.empty((len(labels), 10), dtype=np.float64)
    for j, row in enumerate(labels):
        index = start + j
        img, marks[j] = render_face(row, _image_rng(seed, index))
        img.save(os.path.join(image_dir, _filename(index)), format="JPEG", quality=90)
    return start, marks


def write_synth_celeba(out: str, num: int = 6000, seed: int = 0, workers: int | None = None,
                       progress: bool = True, images_per_person: int = IMAGES_PER_PERSON) -> None:
    """Write `num` generated faces as a CelebA-format folder at `out` (created if needed; files overwritten).

    out/img_align_celeba/000001.jpg ... (178x218 RGB JPEG), then list_attr_celeba.txt, list_eval_partition.txt
    (CelebA's train/val/test proportions, in order), identity_CelebA.txt (`draw_persons`: persons of about
    `images_per_person` images) and list_landmarks_align_celeba.txt, written last so that a half-written folder
    has no annotation files. Byte-identical output for a seed, whatever `workers` (None: os.cpu_count(); 1: no
    pool)."""
    from tqdm import tqdm

    num = int(num)
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num!r}")
    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers!r}")
    _check_images_per_person(images_per_person)  # before any file is written
    image_dir = os.path.join(out, IMAGE_DIR)
    os.makedirs(image_dir, exist_ok=True)

    labels = sample_attributes(_label_rng(seed), num)
    filenames = [_filename(i) for i in range(num)]
    chunk = max(1, min(200, math.ceil(num / (workers * 4))))
    tasks = [(image_dir, seed, i, labels[i : i + chunk]) for i in range(0, num, chunk)]
    workers = min(workers, len(tasks))
    landmarks = np.empty((num, 10), dtype=np.float64)
    with tqdm(total=num, unit="img", desc="synth CelebA", disable=not progress) as bar:
        if workers <= 1:
            results = map(_render_chunk, tasks)
            for start, marks in results:
                landmarks[start : start + len(marks)] = marks
                bar.update(len(marks))
        else:
            with multiprocessing.get_context().Pool(workers) as pool:
                for start, marks in pool.imap_unordered(_render_chunk, tasks):
                    landmarks[start : start + len(marks)] = marks
                    bar.update(len(marks))

    partition = [celeba_partition_of(i, num) for i in range(num)]
    write_celeba_attributes(out, filenames, CELEBA_ATTRIBUTES, labels)
    write_celeba_partition(out, filenames, partition)
    write_celeba_identities(out, filenames, draw_persons(labels, partition, _person_rng(seed), images_per_person))
    write_celeba_landmarks(out, filenames, landmarks)


# ---------------------------------------------------------------------------------------------------------------
# Preview
# ---------------------------------------------------------------------------------------------------------------


def write_preview(root: str, path: str, per_attribute: int = 6, negatives: int = 2) -> str:
    """A PNG contact sheet of a CelebA-format root (generated or real): one row per attribute with its name,
    `per_attribute` images that have it and, after a gap, `negatives` that do not, each shown as the model sees
    it (preprocess_image: 64x64 face square) scaled x2. Returns path."""
    from .celeba import read_celeba_attributes

    filenames, attr_names, labels = read_celeba_attributes(root, check_images=False)
    labels = labels.numpy()
    image_dir = os.path.join(root, IMAGE_DIR)
    cell, label_w, gap = 128, 150, 16
    ncols = per_attribute + negatives
    width = label_w + ncols * (cell + 2) + gap
    sheet = Image.new("RGB", (width, len(attr_names) * (cell + 4) + 4), (255, 255, 255))
    dr = ImageDraw.Draw(sheet)
    cache: dict[int, Image.Image] = {}

    def thumb(i: int) -> Image.Image:
        if i not in cache:
            with Image.open(os.path.join(image_dir, filenames[i])) as im:
                cache[i] = Image.fromarray(preprocess_image(im)).resize((cell, cell), Image.NEAREST)
        return cache[i]

    for r, name in enumerate(attr_names):
        y = 4 + r * (cell + 4)
        dr.text((4, y + cell // 2 - 6), name, fill=(0, 0, 0))
        pos = np.flatnonzero(labels[:, r] > 0)[:per_attribute]
        neg = np.flatnonzero(labels[:, r] < 0)[:negatives]
        for j, i in enumerate(pos):
            sheet.paste(thumb(int(i)), (label_w + j * (cell + 2), y))
        x0 = label_w + per_attribute * (cell + 2) + gap
        dr.rectangle([x0 - gap + 4, y, x0 - 6, y + cell], fill=(200, 0, 0))
        for j, i in enumerate(neg):
            sheet.paste(thumb(int(i)), (x0 + j * (cell + 2), y))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    sheet.save(path)
    return path
