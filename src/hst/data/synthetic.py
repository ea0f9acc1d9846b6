"""Embedded synthetic multi-label scenes: the default dataset, no files needed.

Each image picks a scene (kitchen, street, park, office, beach, bathroom); the scene template gives every
class an inclusion probability, so labels co-occur the way objects do in real photos (``synthetic_layout``). Objects
are drawn as simple cartoons (``synthetic_objects``) with a fixed per-class signature (shape, colour family,
pattern) and per-instance variation (position, size, tilt, mirror, colour jitter), on a scene background.

Image ``i`` depends only on ``(seed, i)``. Labels are sampled first, without rendering, from
``numpy.random.default_rng([seed, i, 0])``; the layout that places exactly those objects uses
``default_rng([seed, i, 1])``.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from hst.data.base import MultiLabelData
from hst.data.synthetic_layout import (
    SCENE_TEMPLATES,
    SCENES,
    SYNTHETIC_CLASSES,
    Colour,
    PlacedObject,
    SyntheticLayout,
    sample_labels,
    synthetic_layout,
)
from hst.data.synthetic_objects import DRAWERS, WHITE, Pen, shade


def _bands(draw: ImageDraw.ImageDraw, side: int, y0: float, y1: float, top: Colour, bottom: Colour) -> None:
    # A vertical gradient as a few flat bands: much cheaper than per-pixel blending.
    steps = 6
    for k in range(steps):
        t = k / (steps - 1)
        colour = tuple(int(a + (b - a) * t) for a, b in zip(top, bottom, strict=True))
        ya = y0 + (y1 - y0) * k / steps
        yb = y0 + (y1 - y0) * (k + 1) / steps
        draw.rectangle((0, int(ya * side), side, math.ceil(yb * side)), fill=colour)  # type: ignore[arg-type]


def _background(draw: ImageDraw.ImageDraw, layout: SyntheticLayout, side: int) -> None:
    top, mid, low, bottom, detail = layout.tints
    h = layout.horizon
    _bands(draw, side, 0.0, h, top, mid)
    _bands(draw, side, h, 1.0, low, bottom)
    line = max(1, side // 100)
    if layout.scene in ("kitchen", "bathroom"):
        # Wall tiles.
        step = side / (8 if layout.scene == "kitchen" else 10)
        hy = int(h * side)
        k = step
        while k < side:
            draw.line((int(k), 0, int(k), hy), fill=detail, width=line)
            if k < hy:
                draw.line((0, int(k), side, int(k)), fill=detail, width=line)
            k += step
        draw.rectangle((0, hy, side, hy + 2 * line), fill=shade(low, 0.7))
    elif layout.scene == "street":
        hy = int(h * side)
        draw.rectangle((0, hy, side, hy + side // 14), fill=(175, 175, 170))
        y = int((h + (1 - h) * 0.55) * side)
        dash = side // 8
        for x in range(0, side, 2 * dash):
            draw.rectangle((x, y, x + dash, y + max(1, side // 60)), fill=detail)
    elif layout.scene == "park":
        hy = int(h * side)
        draw.rectangle((0, hy - side // 20, side, hy), fill=shade(detail, 0.8))
    elif layout.scene == "office":
        wx0, wx1 = int(0.08 * side), int(0.38 * side)
        draw.rectangle((wx0, int(0.06 * side), wx1, int(h * side * 0.8)), fill=detail, outline=WHITE, width=line)
        draw.rectangle((0, int(h * side), side, int(h * side) + 2 * line), fill=shade(low, 0.7))
    elif layout.scene == "beach":
        draw.rectangle((0, int(h * side), side, int((h + 0.12) * side)), fill=detail)
        draw.line((0, int((h + 0.12) * side), side, int((h + 0.12) * side)), fill=WHITE, width=line)


def render_layout(layout: SyntheticLayout, image_size: int = 128) -> Image.Image:
    """Draw ``layout`` as an ``image_size``×``image_size`` RGB image."""
    image = Image.new("RGB", (image_size, image_size))
    draw = ImageDraw.Draw(image)
    _background(draw, layout, image_size)
    for obj in layout.objects:
        DRAWERS[obj.name](Pen(draw, obj, image_size), obj)
    return image


def render_synthetic(seed: int, index: int, image_size: int = 128) -> Image.Image:
    """Image ``index`` of the synthetic dataset with ``seed``."""
    return render_layout(synthetic_layout(seed, index), image_size)


class SyntheticRenderer:
    """Picklable ``index -> image`` callable (DataLoader workers may need to pickle it)."""

    def __init__(self, seed: int, count: int, image_size: int) -> None:
        self.seed = seed
        self.count = count
        self.image_size = image_size

    def __call__(self, index: int) -> Image.Image:
        if not 0 <= index < self.count:
            raise IndexError(f"synthetic image index {index} out of range 0..{self.count - 1}")
        return render_synthetic(self.seed, int(index), self.image_size)


def make_synthetic(count: int, seed: int = 0, image_size: int = 128) -> MultiLabelData:
    """``count`` synthetic scenes with full labels (+1 / -1); images render lazily via ``data.render``."""
    if count < 1:
        raise ValueError(f"synthetic dataset: count must be at least 1, got {count}")
    if image_size < 16:
        raise ValueError(f"synthetic dataset: image_size must be at least 16 pixels, got {image_size}")
    labels = np.full((count, len(SYNTHETIC_CLASSES)), -1, dtype=np.int8)
    scenes: list[str] = []
    for i in range(count):
        scene, present = sample_labels(seed, i)
        labels[i, present] = 1
        scenes.append(SCENES[scene])
    return MultiLabelData(
        image_ids=[f"synthetic-{i:06d}" for i in range(count)],
        labels=labels,
        class_names=list(SYNTHETIC_CLASSES),
        render=SyntheticRenderer(seed, count, image_size),
        source=f"synthetic:{count}?seed={seed}",
        info={
            "scenes": scenes,
            "scene_templates": {scene: dict(probs) for scene, probs in SCENE_TEMPLATES.items()},
            "seed": seed,
            "image_size": image_size,
        },
    )


__all__ = [
    "SCENES",
    "SCENE_TEMPLATES",
    "SYNTHETIC_CLASSES",
    "PlacedObject",
    "SyntheticLayout",
    "SyntheticRenderer",
    "make_synthetic",
    "render_layout",
    "render_synthetic",
    "sample_labels",
    "synthetic_layout",
]
