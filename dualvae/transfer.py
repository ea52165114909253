"""Transfer grids: rows are images, columns the original and its transfer to each domain (Eq. 3)."""
from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from dualvae.cis import resolve_domains


def to_uint8_hwc(x: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [-1, 1] -> (H, W, C) uint8."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()


@torch.no_grad()
def transfer_tiles(model, images: torch.Tensor, domains: list[int], lam: float, **transfer_kw) -> torch.Tensor:
    """(N, 1 + len(domains), C, H, W): each image, then its transfer to each domain (`model.transfer_all`, a
    TransferModel's; `transfer_kw` such as source_labels go to it)."""
    return torch.cat([images[:, None], model.transfer_all(images, domains, lam, **transfer_kw)], 1)


def save_grid_png(path: str, tiles: torch.Tensor, column_names: list[str] | None = None, scale: int = 1,
                  gap: int = 2) -> str:
    """Write a (rows, cols, C, H, W) stack of [-1, 1] images as one PNG with optional rotated column headers."""
    n_rows, n_cols, _, h, w = tiles.shape
    h, w = h * scale, w * scale
    header = 0
    font = ImageFont.load_default()
    if column_names:
        header = max(int(ImageDraw.Draw(Image.new("L", (1, 1))).textlength(n, font=font)) for n in column_names) + 8
    sheet = Image.new("RGB", (n_cols * (w + gap) + gap, header + n_rows * (h + gap) + gap), "white")
    for c, name in enumerate(column_names or []):
        label = Image.new("RGB", (header, 12), "white")
        ImageDraw.Draw(label).text((2, 0), name, fill="black", font=font)
        label = label.rotate(90, expand=True)
        sheet.paste(label, (gap + c * (w + gap) + (w - label.width) // 2, 0))
    for r in range(n_rows):
        for c in range(n_cols):
            tile = Image.fromarray(to_uint8_hwc(tiles[r, c]))
            if scale != 1:
                tile = tile.resize((w, h), Image.NEAREST)
            sheet.paste(tile, (gap + c * (w + gap), header + gap + r * (h + gap)))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    sheet.save(path)
    return path


def write_transfer_grid(model, images: torch.Tensor, path: str, *, domains=None, lam: float = 1.0,
                        attr_names: list[str] | None = None) -> str:
    """Transfer `images` to each domain and save the grid PNG (columns: original, then one per domain).
    `domains` as in `dualvae.cis.resolve_domains` (an int k: the first k)."""
    idx = resolve_domains(model, domains)
    names = attr_names or model.attr_names
    tiles = transfer_tiles(model, images, idx, lam)
    header = ["original", *[(names[i] if names else str(i)) for i in idx]]
    return save_grid_png(path, tiles, header)
