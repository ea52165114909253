"""Drawing in canonical face coordinates for the generated faces (face.py): `Pen`, which records shapes and draws
them through the pose jitter in one numpy operation, the background gradient, the lighting ramp, and `colour`.
The tables and caches here make drawing a face cheap; every value is the one the plain PIL/numpy call gives.
"""
from __future__ import annotations

import array
import functools
import math

import numpy as np
from PIL import Image, ImageDraw

from .celeba import CELEBA_HEIGHT, CELEBA_WIDTH

PIVOT = (89.0, 112.0)  # rotation / scaling centre of the pose jitter
SIZE = (CELEBA_WIDTH, CELEBA_HEIGHT)

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


def background(c1: tuple, c2: tuple, direction: float) -> Image.Image:
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


def lighting(direction: float, amount: float) -> Image.Image:
    """RGB multiplier image: 255 on the lit side falling to 255 * (1 - amount) on the other (amount in
    [0.12, 0.34], quantized; cached)."""
    level = int(round((amount - 0.12) / 0.22 * (_LIGHT_LEVELS - 1)))
    return _lighting_image(int(direction * _N_DIRS) % _N_DIRS, min(max(level, 0), _LIGHT_LEVELS - 1))


def colour(rgb, a: int | None = None) -> tuple:
    """(r, g, b) or (r, g, b, a) as ints clamped to [0, 255], as ImageDraw takes a fill."""
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


class Pen:
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

    def poly_flat(self, f: list, fill) -> None:
        """A polygon of points already flat: [x0, y0, x1, y1, ...]."""
        self.flat += f
        self.ops.append((True, len(f) >> 1, fill, 0))

    def line_flat(self, f: list, fill, width: float) -> None:
        """A polyline of points already flat: [x0, y0, x1, y1, ...]."""
        self.flat += f
        self.ops.append((False, len(f) >> 1, fill, max(1, int(width * self.scale + 0.5))))

    @staticmethod
    def arc_flat(cx, cy, rx, ry, a0=0.0, a1=360.0, n=24) -> list:
        """Points of an elliptic arc, flat: _unit_arc(a0, a1, n) * (rx, ry) + (cx, cy), in plain float arithmetic
        (elementwise the same float64 operations as that numpy expression, hence the same values)."""
        cx, cy, rx, ry = float(cx), float(cy), float(rx), float(ry)
        return [v for ux, uy in _unit_arc_list(float(a0), float(a1), int(n)) for v in (ux * rx + cx, uy * ry + cy)]

    def ellipse(self, cx, cy, rx, ry, fill=None, outline=None, width: float = 0, n: int = 24) -> None:
        pts = self.arc_flat(cx, cy, rx, ry, 0, 360 * (n - 1) / n, n)
        if fill is not None:
            self.poly_flat(pts, fill)
        if outline is not None:
            self.line_flat(pts + pts[:4], outline, width)

    def arc(self, cx, cy, rx, ry, a0, a1, fill, width: float, n: int = 14) -> None:
        self.line_flat(self.arc_flat(cx, cy, rx, ry, a0, a1, n), fill, width)

    def chord(self, cx, cy, rx, ry, a0, a1, fill, n: int = 16) -> None:
        self.poly_flat(self.arc_flat(cx, cy, rx, ry, a0, a1, n), fill)

    def rect(self, x0, y0, x1, y1, fill) -> None:
        self.poly_flat([x0, y0, x1, y0, x1, y1, x0, y1], fill)

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


def zip_flat(xs, ys) -> list:
    """[xs[0], ys[0], xs[1], ys[1], ...]"""
    return [v for p in zip(xs, ys) for v in p]

