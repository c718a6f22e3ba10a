"""A pixel judge for the demo world, independent of every model.

Background colour: the median of the image's outer ring, matched to the nearest palette
colour. Foreground: the pixels that differ clearly from the background; their median is
the foreground colour. Shape: the foreground mask, cropped to its bounding box and
resized, compared by IoU with each shape drawn the same way.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

from ldm_batch.demo_kit.world import COLOURS, SHAPES, Scene, draw

MASK = 16
NAMES = list(COLOURS)
PALETTE = np.array([COLOURS[n] for n in NAMES], dtype=np.float32)


def nearest_colour(rgb: np.ndarray) -> str:
    return NAMES[int(np.argmin(((PALETTE - rgb) ** 2).sum(axis=1)))]


def _normalised_mask(mask: np.ndarray) -> np.ndarray | None:
    ys, xs = np.nonzero(mask)
    if len(ys) < 4:
        return None
    crop = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    resized = Image.fromarray((crop * 255).astype(np.uint8)).resize((MASK, MASK), Image.BILINEAR)
    return np.asarray(resized) > 127


@lru_cache(maxsize=1)
def _templates() -> dict[str, np.ndarray]:
    templates = {}
    for shape in SHAPES:
        image = np.asarray(draw(Scene("white", shape, "black"), size=128), dtype=np.float32)
        templates[shape] = _normalised_mask(image.mean(axis=2) > 128)
    return templates


def judge(image: Image.Image) -> Scene | None:
    """The scene an image shows, or None when no foreground shape can be found."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    ring = np.concatenate([pixels[:2].reshape(-1, 3), pixels[-2:].reshape(-1, 3),
                           pixels[:, :2].reshape(-1, 3), pixels[:, -2:].reshape(-1, 3)])
    bg_rgb = np.median(ring, axis=0)
    distance = np.sqrt(((pixels - bg_rgb) ** 2).sum(axis=2))
    foreground = distance > 60
    if foreground.sum() < 0.03 * foreground.size:
        return None
    fg = nearest_colour(np.median(pixels[foreground], axis=0))
    mask = _normalised_mask(foreground)
    if mask is None:
        return None
    ious = {shape: (mask & t).sum() / max((mask | t).sum(), 1) for shape, t in _templates().items()}
    return Scene(fg=fg, shape=max(ious, key=ious.get), bg=nearest_colour(bg_rgb))
