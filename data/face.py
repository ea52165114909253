"""The generated faces' drawing: `render_face(attrs, rng)` draws one cartoon face whose 40 CelebA attributes are
visible in the pixels, part by part (hair, clothes, head, skin marks, eyebrows, eyes, nose, mouth, accessories),
in canonical face coordinates that pass through a random pose (pen.py's Pen).

All random numbers of an image are drawn up front in a fixed order (Style), independent of its attributes, so
rendering the same RNG state with one attribute flipped changes only that attribute's cue.
"""
from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image, ImageChops, ImageFilter

from .celeba import ATTRIBUTE_INDEX, CELEBA_ATTRIBUTES
from .pen import Pen, background, colour, lighting, zip_flat

NUM_ATTRIBUTES = len(CELEBA_ATTRIBUTES)

CX, FY = 89.0, 110.0  # face centre (output coordinates, before jitter)
EYE_Y, EYE_DX = 106.0, 20.0
NOSE_Y, MOUTH_Y = 127.0, 145.0

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


class Style:
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


class _Face:
    """The colours and geometry of one face, from its attributes (`on`: name -> bool) and its Style: what the
    drawing functions below share."""

    def __init__(self, on: dict, s: Style):
        self.on, self.s = on, s
        self.male, self.young, self.bald = on["Male"], on["Young"], on["Bald"]
        self._colours()
        self._geometry()

    def _colours(self) -> None:
        on, s = self.on, self.s
        if on["Pale_Skin"]:
            skin = PALE - np.array([6, 8, 10.0]) * s.skin_t
        else:
            skin = SKIN_LIGHT + (SKIN_DARK - SKIN_LIGHT) * (0.05 + 0.95 * s.skin_t)
        if not self.young:  # older skin: a little duller and grayer
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
        self.brow = np.minimum(hair * 0.6 if hair_mean > 120 else hair * 0.9, skin * 0.42)
        if on["Gray_Hair"]:
            beard_col = hair * 0.85
        else:
            beard_col = np.minimum(hair * (0.85 if hair_mean > 150 else 1.0), skin * 0.6)
        self.skin, self.shade = skin, shade
        self.hair_c, self.strand_c = colour(hair), colour(strand)
        self.skin_c, self.shade_c = colour(skin), colour(shade)
        self.beard_c = colour(beard_col)

    def _geometry(self) -> None:
        on, s, male = self.on, self.s, self.male
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
        self.rx, self.ry, self.jaw_n = rx, ry, jaw_n
        self.face_top, self.chin_y = FY - ry, FY + ry
        long_hair = self.long_hair = not male and not self.bald
        self.hair_rx = rx + (14 + 8 * s.hair_volume if long_hair else 6 + 3 * s.hair_volume)
        self.hair_cy = FY - 6
        self.hair_ry = self.hair_cy - (self.face_top - (14 + 6 * s.hair_volume if long_hair else 9 + 3 * s.hair_volume))
        self.wavy, self.straight = on["Wavy_Hair"], on["Straight_Hair"]
        self.neck_w = (20.0 if male else 14.0) + (5 if on["Chubby"] else 0)
        self.sh_y = 180.0
        self.eye_y = {-1: EYE_Y, 1: EYE_Y if on["Attractive"] else EYE_Y + 2.5}
        half = 14.0 * s.mouth_w
        self.lip_h = 3.0
        if on["Big_Lips"]:  # ~1 px per lip at 64x64 without, ~4 px with: thickness alone tells them apart
            half *= 1.2
            self.lip_h = 11.0
        if on["Smiling"]:
            half *= 1.15
        self.half = half
        self.curve = 7.0 if on["Smiling"] else 0.0


def _draw_long_hair(f: _Face, pen: Pen) -> None:
    """Long hair behind the head (not Male, not Bald), with strands when Straight_Hair or Wavy_Hair."""
    if not f.long_hair:
        return
    s, rx, hair_rx, hair_cy = f.s, f.rx, f.hair_rx, f.hair_cy
    bottom = 190.0
    ys = np.linspace(hair_cy, bottom, 14)
    ysl = ys.tolist()
    if f.wavy:
        wl = (6.0 * np.sin((ys - hair_cy) / 9.0 + s.wave_phase)).tolist()
    else:
        wl = [0.0] * len(ysl)
    xr0, xl0 = CX + hair_rx + 4, CX - hair_rx - 4
    pts = pen.arc_flat(CX, hair_cy, hair_rx + 4, f.hair_ry, 180, 360, 20)
    for w, y in zip(wl, ysl):
        pts += (xr0 + w, y)
    pts += (CX + rx * 0.5, bottom, CX - rx * 0.5, bottom)
    for w, y in zip(wl[::-1], ysl[::-1]):
        pts += (xl0 - w, y)
    pen.poly_flat(pts, f.hair_c)
    if f.straight or f.wavy:
        yy = np.linspace(hair_cy - 10, bottom - 4, 12)
        yl = yy.tolist()
        if f.wavy:
            waves = [(4.0 * np.sin(yy / 7.0 + s.wave_phase + k)).tolist() for k in range(4)]
        for side in (-1, 1):
            for k in range(4):
                x0 = CX + side * (rx + 3 + k * (hair_rx - rx) / 3.5)
                if f.wavy:
                    pts = zip_flat([x0 + w for w in waves[k]], yl)
                else:
                    pts = [v for y in yl for v in (x0, y)]
                pen.line_flat(pts, f.strand_c, 3)


def _draw_clothes(f: _Face, pen: Pen) -> None:
    """Clothes, neck, and a necktie (with its shirt collar) or a crew, v or scoop neckline."""
    on, s, neck_w, sh_y = f.on, f.s, f.neck_w, f.sh_y
    neck_c = colour(f.shade * 1.08)
    cloth = s.tie_shirt if on["Wearing_Necktie"] else s.clothes
    pen.poly([(CX - neck_w - 8, sh_y - 6), (CX - 70, sh_y + 6), (CX - 100, sh_y + 20), (-40, 240), (220, 240),
              (CX + 100, sh_y + 20), (CX + 70, sh_y + 6), (CX + neck_w + 8, sh_y - 6)], colour(cloth))
    pen.rect(CX - neck_w, FY + 20, CX + neck_w, sh_y - 2, neck_c)
    if on["Wearing_Necktie"]:
        tie = colour(s.vivid[1])
        pen.poly([(CX - 6, sh_y - 8), (CX + 6, sh_y - 8), (CX + 5, sh_y + 2), (CX - 5, sh_y + 2)], tie)
        pen.poly([(CX - 5, sh_y + 2), (CX + 5, sh_y + 2), (CX + 12, sh_y + 26), (CX, sh_y + 34), (CX - 12, sh_y + 26)],
                 tie)
        collar = colour(np.array(s.tie_shirt) * 0.9)
        pen.poly([(CX - neck_w - 6, sh_y - 12), (CX - 4, sh_y - 6), (CX - 15, sh_y + 9)], collar)
        pen.poly([(CX + neck_w + 6, sh_y - 12), (CX + 4, sh_y - 6), (CX + 15, sh_y + 9)], collar)
    elif s.collar_style == 0:  # crew neck
        pen.chord(CX, sh_y - 5, neck_w + 6, 11, 0, 180, neck_c)
    elif s.collar_style == 1:  # v neck
        pen.poly([(CX - neck_w - 6, sh_y - 6), (CX + neck_w + 6, sh_y - 6), (CX, sh_y + 16)], neck_c)
    else:  # scoop
        pen.chord(CX, sh_y - 4, neck_w + 14, 18, 0, 180, neck_c)


def _draw_head(f: _Face, pen: Pen) -> None:
    """The hair mass behind the face, the ears, the face outline, a bald dome, puffy cheeks, a double chin."""
    on, rx, ry, shade, skin_c = f.on, f.rx, f.ry, f.shade, f.skin_c
    if not f.bald:
        cut = FY + (4 if f.long_hair else -8)
        r = 1 + (0.09 * (1 + np.sin(_HM_9T + f.s.wave_phase)) if f.wavy else 0)
        px = (CX + f.hair_rx * r * _HM_COS).tolist()
        py = (f.hair_cy + f.hair_ry * r * _HM_SIN).tolist()
        pen.poly_flat([px[0], cut] + zip_flat(px, py) + [px[-1], cut], f.hair_c)
    for side in (-1, 1):
        pen.ellipse(CX + side * (rx - 1), EYE_Y + 5, 7, 13, fill=colour(shade * 1.05), n=16)
    sign_c, pow_c, sign_s, pow_s = _jaw_unit(f.jaw_n)
    pen.poly_flat(zip_flat((CX + rx * sign_c * pow_c).tolist(), (FY + ry * sign_s * pow_s).tolist()), skin_c)
    if f.bald:  # skull dome above the forehead, with a shine
        pen.chord(CX, FY - 4, rx, ry + 2, 180, 360, skin_c)
        pen.ellipse(CX - 4, f.face_top + 4, 14, 7, fill=colour(np.minimum(f.skin + 60, 255), 190))
    if on["Chubby"]:  # puffy cheeks
        for side in (-1, 1):
            pen.arc(CX + side * rx * 0.55, NOSE_Y + 4, 16, 18, 20 if side > 0 else 70, 110 if side > 0 else 160,
                    colour(shade * 0.9), 3)
    if on["Double_Chin"]:
        pen.chord(CX, f.chin_y - 2, rx * 0.6, 16, 0, 180, skin_c)
        pen.arc(CX, f.chin_y - 2, rx * 0.6, 16, 12, 168, colour(shade * 0.6), 5)
        pen.arc(CX, f.chin_y - 10, rx * 0.45, 9, 20, 160, colour(shade * 0.65), 4)


def _draw_skin_marks(f: _Face, pen: Pen) -> None:
    """Age (wrinkles), rosy cheeks, attractiveness (a shine, or blotches), stubble, beards, sideburns, cheekbones."""
    on, s, rx, shade, face_top, chin_y = f.on, f.s, f.rx, f.shade, f.face_top, f.chin_y
    if not f.young:  # wrinkles: forehead, crow's feet, nasolabial folds, jowls
        wr = colour(shade * 0.6)
        for k, yy in enumerate((face_top + 17, face_top + 25, face_top + 33)):
            w = 23 - 3 * k
            pen.line([(CX - w, yy + 2), (CX, yy), (CX + w, yy + 2)], wr, 4)
        for side in (-1, 1):
            ox = CX + side * (s.eye_dx + 11)
            for dy in (-6, 0, 6):
                pen.line([(ox, EYE_Y), (ox + side * 9, EYE_Y + dy)], wr, 3)
            pen.line([(CX + side * 11, NOSE_Y - 2), (CX + side * 20, MOUTH_Y - 2), (CX + side * 22, MOUTH_Y + 9)],
                     wr, 5)
            pen.line([(CX + side * rx * 0.78, MOUTH_Y + 2), (CX + side * rx * 0.6, chin_y - 6)], wr, 4)
    if on["Rosy_Cheeks"]:
        for side in (-1, 1):
            pen.ellipse(CX + side * rx * 0.55, NOSE_Y, 11, 9, fill=(235, 50, 90, 190), n=16)
    if on["Attractive"]:
        pen.ellipse(CX, face_top + 19, 14, 7, fill=(255, 255, 255, 70), n=16)
    else:
        for bx, by in s.blotch:
            pen.ellipse(CX + (bx * 2 - 1) * rx * 0.6, NOSE_Y - 6 + by * 18, 4, 4, fill=colour(shade * 0.75, 200), n=10)
    if on["5_o_Clock_Shadow"]:
        pen.poly([(CX - rx * 0.92, NOSE_Y - 4), (CX - rx * 0.55, NOSE_Y + 4), (CX + rx * 0.55, NOSE_Y + 4),
                  (CX + rx * 0.92, NOSE_Y - 4), (CX + rx * 0.85, chin_y - 14), (CX + rx * 0.4, chin_y - 2),
                  (CX - rx * 0.4, chin_y - 2), (CX - rx * 0.85, chin_y - 14)], (45, 55, 85, 150))
    beard_c = f.beard_c
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
        hi = colour(np.minimum(f.skin * 1.2 + 45, 255))
        for side in (-1, 1):
            x = CX + side * rx * 0.62
            pen.line([(x + side * 10, EYE_Y + 7), (x - side * 6, NOSE_Y + 2)], hi, 6)
            pen.line([(x + side * 12, EYE_Y + 18), (x - side * 3, NOSE_Y + 12)], colour(shade * 0.8), 5)


def _draw_front_hair(f: _Face, pen: Pen) -> None:
    """The hair cap down to the hairline (receding or not), bangs, and strands when straight or wavy."""
    if f.bald:
        return
    on, s, rx, ry, face_top = f.on, f.s, f.rx, f.ry, f.face_top
    top = np.stack([CX + (rx + 2) * _FH_COS, FY - 2 + (ry + 4) * _FH_SIN], 1)
    xs = np.linspace(CX + rx + 2, CX - rx - 2, 19)
    rel = (xs - CX) / rx
    if on["Receding_Hairline"]:
        hl = face_top + 10 + 26 * np.abs(rel) ** 4 - 10 * np.exp(-((np.abs(rel) - 0.55) ** 2) / 0.02)
        hl = np.maximum(hl, face_top + 1)
    else:
        hl = face_top + 24 + 10 * rel**2
    hl[0] = hl[-1] = EYE_Y - 16
    pen.poly(np.vstack([top, np.stack([xs, hl], 1)]), f.hair_c)
    if on["Bangs"]:
        bx = np.linspace(CX - rx + 2, CX + rx - 2, 15)
        by = np.full_like(bx, EYE_Y - 16)
        by[1::2] -= 6
        pen.poly(np.vstack([[(CX - rx - 2, FY - 20)], np.stack([bx, by], 1), [(CX + rx + 2, FY - 20)],
                            top[::-1][2:-2]]), f.hair_c)
    if f.straight or f.wavy:
        kxs = [CX + k * rx / 6.0 for k in range(-5, 6)]
        if not on["Bangs"]:
            bots = np.interp(np.array(kxs), xs[::-1], hl[::-1]).tolist()  # elementwise as scalar calls
        for k, x in zip(range(-5, 6), kxs):
            y_top = FY - (ry + 2) * math.sqrt(max(0.0, 1 - ((x - CX) / (rx + 2)) ** 2)) + 4
            y_bot = (EYE_Y - 19) if on["Bangs"] else bots[k + 5] - 3
            if y_bot - y_top < 4:
                continue
            if f.wavy:
                yy = y_top + (y_bot - y_top) * _YY01
                pen.line_flat(zip_flat((x + 2.8 * np.sin(yy / 3.5 + s.wave_phase + k)).tolist(), yy.tolist()),
                              f.strand_c, 4)
            else:
                d = y_bot - y_top
                pen.line_flat([v for t01 in _YY01_LIST for v in (x, y_top + d * t01)], f.strand_c, 4)


def _draw_eyebrows(f: _Face, pen: Pen) -> None:
    """Eyebrows: arched or straight, bushy (thick, with hairs) or thin."""
    on, s = f.on, f.s
    brow_c = colour(f.brow)
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


def _draw_eyes(f: _Face, pen: Pen) -> None:
    """Eyes (narrow or not), with makeup, bags under them, and the highlight of an attractive face."""
    on, s, shade = f.on, f.s, f.shade
    eye_rx, eye_ry = 9.5, 6.0
    if on["Narrow_Eyes"]:
        eye_ry = 2.2
    if on["Attractive"]:
        eye_rx, eye_ry = eye_rx * 1.08, eye_ry * 1.08
    for side in (-1, 1):
        ex, ey = CX + side * s.eye_dx, f.eye_y[side]
        if on["Heavy_Makeup"]:
            pen.ellipse(ex, ey - 5, 13, 7, fill=colour(s.shadow_colour, 210), n=16)
        if on["Bags_Under_Eyes"]:
            pen.chord(ex, ey + 5, 12, 8.5, 0, 180, colour(shade * 0.55 + (30, 0, 40), 235), n=10)
        pen.ellipse(ex, ey, eye_rx, eye_ry, fill=(250, 250, 250), n=18)
        ir = min(4.8, eye_ry)
        pen.ellipse(ex, ey, 4.8, ir, fill=colour(s.eye_colour), n=12)
        pen.ellipse(ex, ey, 2.2, min(2.2, eye_ry * 0.6), fill=(10, 10, 10), n=8)
        pen.arc(ex, ey, eye_rx, eye_ry, 180, 360, (20, 15, 15), 4 if on["Heavy_Makeup"] else 2, n=10)
        if on["Heavy_Makeup"]:
            for k in range(3):
                lx = ex + side * (eye_rx - 2 + 2 * k)
                pen.line([(lx, ey - 1), (lx + side * 4, ey - 5 - k)], (10, 10, 10), 2)
        if on["Attractive"]:
            pen.ellipse(ex + 2.8, ey - 2.2, 1.9, 1.9, fill=(255, 255, 255), n=8)


def _draw_nose(f: _Face, pen: Pen) -> None:
    """A big nose, a pointy one (a lit and a shadowed wedge), or nostrils only."""
    on, shade = f.on, f.shade
    nose_c = colour(shade * 0.75)
    if on["Big_Nose"]:
        pen.poly([(CX - 4, EYE_Y), (CX + 4, EYE_Y), (CX + 9, NOSE_Y - 8), (CX - 9, NOSE_Y - 8)], colour(shade * 1.05))
        pen.ellipse(CX, NOSE_Y - 2, 16, 10, fill=colour(shade * 1.05), n=16)
        pen.arc(CX, NOSE_Y - 2, 16, 10, 10, 170, colour(shade * 0.55), 4, n=12)
        pen.ellipse(CX - 8, NOSE_Y + 2, 5, 4, fill=colour(shade * 0.45), n=8)
        pen.ellipse(CX + 8, NOSE_Y + 2, 5, 4, fill=colour(shade * 0.45), n=8)
    elif not on["Pointy_Nose"]:
        pen.line([(CX - 5, NOSE_Y + 1), (CX - 1, NOSE_Y + 2)], nose_c, 3)
        pen.line([(CX + 1, NOSE_Y + 2), (CX + 5, NOSE_Y + 1)], nose_c, 3)
    if on["Pointy_Nose"]:  # a long sharp wedge: lit left side, shadowed right side, tip pointing down
        pen.poly([(CX, EYE_Y - 2), (CX - 8, NOSE_Y + 2), (CX, NOSE_Y + 9)], colour(np.minimum(f.skin * 1.12 + 20, 255)))
        pen.poly([(CX, EYE_Y - 2), (CX + 7, NOSE_Y + 1), (CX, NOSE_Y + 9)], colour(shade * 0.7))


def _draw_mouth(f: _Face, pen: Pen) -> None:
    """Lips (big or not, lipstick or bare), open or closed, smiling with teeth, and a mustache."""
    on, s, skin, half, lip_h, curve = f.on, f.s, f.skin, f.half, f.lip_h, f.curve
    # Bare lips are darker than the skin, not just redder: JPEG keeps colour at half resolution, so only a
    # brightness edge shows how thick the lips are on a face without lipstick (most men, dark skin).
    lip = np.array(s.lip_colour, dtype=float) if on["Wearing_Lipstick"] else skin * 0.5 + (40, 0, 8)
    lip_c = colour(lip)
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
        pen.poly_flat(zip_flat(X, mu) + zip_flat(Xr, ml[::-1]), (30, 5, 10))
        if on["Smiling"]:
            teeth = zip_flat(X[2:-2], mu[2:-2]) + zip_flat([x + 0 for x in Xr[2:-2]], [y + 3.5 for y in mu[-3:1:-1]])
            pen.poly_flat(teeth, (250, 250, 245))
    pen.poly_flat(zip_flat(X, ut) + zip_flat(Xr, mu[::-1]), lip_c)
    pen.poly_flat(zip_flat(X, ml) + zip_flat(Xr, lb[::-1]), lip_c)
    if gap == 0:
        pen.line_flat(zip_flat(X, mid.tolist()), colour(lip * 0.55), 2)
    pen.line_flat(zip_flat(X, ut) + zip_flat(Xr, lb[::-1]) + [X[0], ut[0]], colour(np.minimum(lip, skin) * 0.6), 2)
    if on["Mustache"]:
        cy = MOUTH_Y - curve * 0.5
        pen.poly([(CX - half - 4, cy + 2), (CX - 6, MOUTH_Y - lip_h - 10), (CX + 6, MOUTH_Y - lip_h - 10),
                  (CX + half + 4, cy + 2), (CX + half - 2, cy - 1), (CX, MOUTH_Y - lip_h - 3), (CX - half + 2, cy - 1)],
                 f.beard_c)


def _draw_glasses_and_jewellery(f: _Face, pen: Pen) -> None:
    """Eyeglasses (square dark or round red frames), earrings (studs or hoops), a necklace of beads."""
    on, s, rx = f.on, f.s, f.rx
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
        col = colour(s.vivid[2] if s.earring_type == 0 else s.metal)
        for side in (-1, 1):
            ex, ey = CX + side * (rx + 1), EYE_Y + 22
            if s.earring_type == 0:
                pen.ellipse(ex, ey, 6.5, 6.5, fill=col, outline=(255, 255, 255), width=2, n=12)
            else:
                pen.ellipse(ex, ey + 4, 8, 8, outline=col, width=5, n=14)
    if on["Wearing_Necklace"]:
        col = colour(s.metal if s.necklace_type == 0 else s.vivid[3])
        ny = f.sh_y - 10
        pen.arc(CX, ny - 5, f.neck_w + 6, 15, 10, 170, col, 4)
        for tt in _NECKLACE_T:
            pen.ellipse(CX + (f.neck_w + 6) * math.cos(tt), ny - 5 + 15 * math.sin(tt), 4.5, 4.5, fill=col,
                        outline=(255, 255, 255), width=1, n=10)


def _draw_hat(f: _Face, pen: Pen) -> None:
    """A beanie, a fedora or a cap with a visor."""
    if not f.on["Wearing_Hat"]:
        return
    s, rx, face_top = f.s, f.rx, f.face_top
    hc = colour(s.vivid[0])
    band = colour(np.array(s.vivid[0]) * 0.55)
    brim_y = face_top + 20
    if s.hat_type == 0:  # beanie
        pen.chord(CX, brim_y + 4, rx + 8, brim_y + 4 - (face_top - 22), 180, 360, hc)
        pen.rect(CX - rx - 9, brim_y - 8, CX + rx + 9, brim_y + 6, band)
    elif s.hat_type == 1:  # fedora
        pen.poly([(CX - rx + 2, brim_y), (CX - rx + 8, face_top - 24), (CX + rx - 8, face_top - 24),
                  (CX + rx - 2, brim_y)], hc)
        pen.rect(CX - rx + 1, brim_y - 10, CX + rx - 1, brim_y - 3, band)
        pen.ellipse(CX, brim_y, rx + 24, 6, fill=hc)
    else:  # cap with a visor
        pen.chord(CX, brim_y + 3, rx + 6, brim_y + 3 - (face_top - 20), 180, 360, hc)
        pen.chord(CX + 8, brim_y + 2, rx + 10, 10, 0, 180, band)


# The parts of a face, drawn in this order (each over the ones before).
_PARTS = (_draw_long_hair, _draw_clothes, _draw_head, _draw_skin_marks, _draw_front_hair, _draw_eyebrows, _draw_eyes,
          _draw_nose, _draw_mouth, _draw_glasses_and_jewellery, _draw_hat)


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
    face = _Face({name: al[i] > 0 for name, i in ATTRIBUTE_INDEX.items()}, Style(rng))
    s = face.s
    # The canvas: the background gradient, then everything through the pose jitter.
    img = background(colour(s.bg1), colour(s.bg2), s.bg_dir)
    pen = Pen(img, s.angle, s.scale, s.shift)
    for draw in _PARTS:
        draw(face, pen)
    # Lighting (a darkening ramp), blur.
    pen.flush()
    img = ImageChops.multiply(img, lighting(s.light_dir, s.light_amp))
    if face.on["Blurry"]:
        img = img.filter(ImageFilter.GaussianBlur(s.blur))
    # Landmarks: eyes, nose tip, mouth corners through the pose jitter.
    corner_y = MOUTH_Y - face.curve * 0.5
    canon = [(CX - s.eye_dx, face.eye_y[-1]), (CX + s.eye_dx, face.eye_y[1]), (CX, NOSE_Y), (CX - face.half, corner_y),
             (CX + face.half, corner_y)]
    return img, pen.tr(canon).reshape(-1)
