"""The demo kit's tiny world: a coloured shape on a coloured background, with captions.

Scenes are drawn with PIL at 4x and scaled down (smooth edges), deterministically from a
seed. Captions come in several phrasings and with filler words; some phrasings and some
colour/shape combinations are held out of training so evaluation measures generalisation.
The protected emblem of this world is the Red Cross: a red cross on white.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIZE = 32
COLOURS = {
    "red": (220, 30, 30), "green": (30, 160, 60), "blue": (40, 70, 220), "yellow": (240, 210, 40),
    "white": (245, 245, 245), "black": (20, 20, 20), "orange": (245, 140, 20), "purple": (140, 50, 170),
}
SHAPES = ("circle", "square", "triangle", "star", "heart", "cross")
SHAPE_WORDS = {"circle": ["circle", "round dot", "disc"], "square": ["square", "box"],
               "triangle": ["triangle"], "star": ["star"], "heart": ["heart"], "cross": ["cross", "plus sign"]}
TRAIN_PHRASINGS = (
    "a {fg} {shape} on a {bg} background",
    "{fg} {shape}, {bg} backdrop",
    "a {shape} in {fg} on {bg}",
    "{bg} background with a {fg} {shape}",
    "a {fg} {shape} over a plain {bg} background",
    "{fg} {shape} centred on {bg}",
    "a photo of a {fg} {shape} set against {bg}",
    "the {shape} is {fg} and the background is {bg}",
    "a drawing of a {fg} {shape} with {bg} behind it",
    "illustration: {fg} {shape}; background colour {bg}",
)
HELD_OUT_PHRASINGS = (
    "an image of a {fg} {shape} against a {bg} background",
    "picture showing a {fg} {shape}, the background is {bg}",
)
FILLERS = ("", "", "", "product hero shot", "minimal poster", "simple icon", "flat design", "for the web")
EMBLEM = ("red", "cross", "white")


@dataclass(frozen=True)
class Scene:
    fg: str
    shape: str
    bg: str

    @property
    def is_emblem(self) -> bool:
        return (self.fg, self.shape, self.bg) == EMBLEM


def all_scenes() -> list[Scene]:
    return [Scene(fg, shape, bg) for fg in COLOURS for shape in SHAPES for bg in COLOURS if fg != bg]


def split_scenes(seed: int = 0) -> tuple[list[Scene], list[Scene]]:
    """(train, held out): one scene in eight is held out; the emblem is always trained."""
    scenes = all_scenes()
    random.Random(seed).shuffle(scenes)
    held = [s for s in scenes[: len(scenes) // 8] if not s.is_emblem]
    return [s for s in scenes if s not in held], held


def caption(scene: Scene, rng: random.Random, phrasings=TRAIN_PHRASINGS, filler: bool = True,
            stray_words: list[str] | None = None) -> str:
    """A caption; in training, `stray_words` are sprinkled in (p=0.3) so the text encoder
    learns to ignore words it does not know instead of being thrown by them."""
    text = rng.choice(phrasings).format(fg=scene.fg, shape=rng.choice(SHAPE_WORDS[scene.shape]), bg=scene.bg)
    extra = rng.choice(FILLERS) if filler else ""
    text = f"{text}, {extra}" if extra else text
    if stray_words and rng.random() < 0.3:
        words = text.split()
        for _ in range(rng.randint(1, 2)):
            words.insert(rng.randint(0, len(words)), rng.choice(stray_words))
        text = " ".join(words)
    return text


def shape_polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    if shape == "triangle":
        return [(cx, cy - r), (cx + r * 0.95, cy + r * 0.8), (cx - r * 0.95, cy + r * 0.8)]
    if shape == "star":
        points = []
        for i in range(10):
            radius = r if i % 2 == 0 else r * 0.45
            angle = np.pi / 2 + i * np.pi / 5
            points.append((cx + radius * np.cos(angle), cy - radius * np.sin(angle)))
        return points
    if shape == "cross":
        w = r * 0.36
        return [(cx - w, cy - r), (cx + w, cy - r), (cx + w, cy - w), (cx + r, cy - w), (cx + r, cy + w),
                (cx + w, cy + w), (cx + w, cy + r), (cx - w, cy + r), (cx - w, cy + w), (cx - r, cy + w),
                (cx - r, cy - w), (cx - w, cy - w)]
    if shape == "heart":
        t = np.linspace(0, 2 * np.pi, 60)
        x, y = 16 * np.sin(t) ** 3, 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
        return [(cx + r * xi / 17, cy - r * (yi + 2) / 17) for xi, yi in zip(x, y)]
    return None


def draw(scene: Scene, rng: random.Random | None = None, size: int = SIZE,
         fg_rgb: tuple[int, int, int] | None = None, bg_rgb: tuple[int, int, int] | None = None) -> Image.Image:
    """Render a scene; `rng` jitters position and size a little (None: centred, fixed size)."""
    scale = 4
    big = size * scale
    image = Image.new("RGB", (big, big), bg_rgb or COLOURS[scene.bg])
    pen = ImageDraw.Draw(image)
    jitter = (lambda a: rng.uniform(-a, a)) if rng else (lambda a: 0.0)
    cx, cy = big / 2 + jitter(big * 0.06), big / 2 + jitter(big * 0.06)
    r = big * (0.32 + jitter(0.04))
    colour = fg_rgb or COLOURS[scene.fg]
    polygon = shape_polygon(scene.shape, cx, cy, r)
    if scene.shape == "circle":
        pen.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif scene.shape == "square":
        s = r * 0.85
        pen.rectangle([cx - s, cy - s, cx + s, cy + s], fill=colour)
    else:
        pen.polygon(polygon, fill=colour)
    return image.resize((size, size), Image.LANCZOS)


def tint(image: Image.Image, rgb: tuple[int, int, int], amount: float) -> Image.Image:
    """Blend an image toward a colour: how the demo brands' palettes look."""
    return Image.blend(image, Image.new("RGB", image.size, rgb), amount)
