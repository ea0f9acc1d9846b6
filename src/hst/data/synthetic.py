"""Embedded synthetic multi-label scenes: the default dataset, no files needed.

Each image picks a scene (kitchen, street, park, office, beach, bathroom); the scene template gives every
class an inclusion probability, so labels co-occur the way objects do in real photos. Objects are drawn
as simple cartoons with a fixed per-class signature (shape, colour family, pattern) and per-instance
variation (position, size, tilt, mirror, colour jitter), on a scene-dependent background.

Image ``i`` depends only on ``(seed, i)``. Labels are sampled first, without rendering, from
``numpy.random.default_rng([seed, i, 0])``; the layout that places exactly those objects uses
``default_rng([seed, i, 1])``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from hst.data.base import MultiLabelData

Colour = tuple[int, int, int]

SYNTHETIC_CLASSES: tuple[str, ...] = (
    "person",
    "bicycle",
    "car",
    "bus",
    "boat",
    "sign",
    "bench",
    "bird",
    "dog",
    "umbrella",
    "ball",
    "bottle",
    "cup",
    "fork",
    "knife",
    "plate",
    "chair",
    "laptop",
    "book",
    "clock",
    "tree",
    "flower",
    "towel",
    "toothbrush",
)

SCENES: tuple[str, ...] = ("kitchen", "street", "park", "office", "beach", "bathroom")

# Per-scene inclusion probability of each class; classes not listed never appear in that scene.
SCENE_TEMPLATES: dict[str, dict[str, float]] = {
    "kitchen": {
        "cup": 0.7, "plate": 0.75, "fork": 0.6, "knife": 0.55, "bottle": 0.4,
        "chair": 0.25, "clock": 0.2, "flower": 0.12, "person": 0.12, "book": 0.06,
    },
    "street": {
        "car": 0.8, "sign": 0.65, "bus": 0.45, "bicycle": 0.45, "person": 0.55,
        "tree": 0.3, "dog": 0.12, "umbrella": 0.12, "bench": 0.1, "clock": 0.06,
    },
    "park": {
        "tree": 0.85, "bench": 0.55, "dog": 0.5, "bird": 0.45, "flower": 0.45,
        "ball": 0.35, "person": 0.4, "bicycle": 0.2, "umbrella": 0.08, "book": 0.06,
    },
    "office": {
        "laptop": 0.8, "book": 0.6, "chair": 0.6, "clock": 0.45, "cup": 0.4,
        "bottle": 0.2, "person": 0.25, "flower": 0.12, "sign": 0.05,
    },
    "beach": {
        "umbrella": 0.75, "boat": 0.6, "towel": 0.55, "ball": 0.5, "bird": 0.45,
        "person": 0.45, "bottle": 0.2, "dog": 0.12, "book": 0.08,
    },
    "bathroom": {
        "towel": 0.8, "toothbrush": 0.7, "bottle": 0.55, "cup": 0.4, "clock": 0.15,
        "flower": 0.2, "book": 0.05, "person": 0.05,
    },
}

# At most this many classes per image, so every object gets its own cell of the 3×3 layout grid.
_MAX_POSITIVES = 8
_GRID = 3

_PROBS = np.array(
    [[SCENE_TEMPLATES[scene].get(name, 0.0) for name in SYNTHETIC_CLASSES] for scene in SCENES],
    dtype=np.float64,
)


@dataclass(frozen=True)
class PlacedObject:
    """One drawn object instance; geometry in fractions of the image side."""

    name: str
    x: float
    y: float
    size: float
    angle: float
    mirror: bool
    colour: Colour
    accent: Colour
    variant: float


@dataclass(frozen=True)
class SyntheticLayout:
    """Everything needed to draw one image: its scene, its positive classes and the objects in draw order."""

    scene: str
    classes: tuple[str, ...]
    objects: tuple[PlacedObject, ...]
    horizon: float
    tints: tuple[Colour, ...]


class _Uniforms:
    """Buffered uniforms from one generator: far cheaper than a Generator call per number."""

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._buffer: list[float] = rng.random(256).tolist()
        self._next = 0

    def random(self) -> float:
        if self._next >= len(self._buffer):
            self._buffer = self._rng.random(256).tolist()
            self._next = 0
        value = self._buffer[self._next]
        self._next += 1
        return value

    def uniform(self, low: float, high: float) -> float:
        return low + (high - low) * self.random()

    def index(self, n: int) -> int:
        return min(int(self.random() * n), n - 1)

    def jitter(self, colour: Colour, amount: int = 22) -> Colour:
        scale = self.uniform(0.85, 1.12)
        return tuple(  # type: ignore[return-value]
            max(0, min(255, int(c * scale + self.uniform(-amount, amount)))) for c in colour
        )


def sample_labels(seed: int, index: int) -> tuple[int, np.ndarray]:
    """Scene index and boolean class-presence vector of image ``index`` (no rendering)."""
    u = np.random.default_rng([seed, index, 0]).random(len(SYNTHETIC_CLASSES) + 2)
    scene = min(int(u[0] * len(SCENES)), len(SCENES) - 1)
    probs = _PROBS[scene]
    draws = u[1:-1]
    present = draws < probs
    if not present.any():
        # Fall back to one class drawn in proportion to the template, so no image is empty.
        cumulative = np.cumsum(probs) / probs.sum()
        present[min(int(np.searchsorted(cumulative, u[-1], side="right")), len(probs) - 1)] = True
    if present.sum() > _MAX_POSITIVES:
        ratio = np.where(present, draws / np.maximum(probs, 1e-9), np.inf)
        present = np.zeros_like(present)
        present[np.argsort(ratio, kind="stable")[:_MAX_POSITIVES]] = True
    return scene, present


@dataclass(frozen=True)
class _ClassStyle:
    size: tuple[float, float]
    max_tilt: float
    instances: tuple[float, ...]
    palette: tuple[Colour, ...]
    accents: tuple[Colour, ...]
    row: str


_SKIN: tuple[Colour, ...] = ((241, 194, 160), (198, 134, 90), (141, 85, 54), (224, 172, 105))
_VIVID: tuple[Colour, ...] = ((200, 40, 40), (40, 80, 200), (40, 150, 60), (230, 180, 30), (140, 50, 160))
_SILVER: tuple[Colour, ...] = ((200, 204, 210), (175, 180, 188))

# size: half extent range; max_tilt: degrees; instances: cumulative probabilities of 1, 2, 3 copies.
_STYLES: dict[str, _ClassStyle] = {
    "person": _ClassStyle((0.14, 0.19), 8, (0.7, 1.0), _SKIN, _VIVID, "ground"),
    "bicycle": _ClassStyle((0.15, 0.2), 10, (1.0,), ((200, 30, 40), (30, 90, 200), (20, 20, 20)), _SILVER,
                           "ground"),
    "car": _ClassStyle((0.15, 0.2), 8, (0.75, 1.0), ((205, 30, 35), (30, 70, 190), (60, 60, 70)),
                       ((170, 220, 250),), "ground"),
    "bus": _ClassStyle((0.2, 0.25), 6, (1.0,), ((250, 190, 20), (240, 120, 20)), ((30, 50, 110),), "ground"),
    "boat": _ClassStyle((0.15, 0.2), 12, (1.0,), ((130, 70, 30), (190, 40, 40), (245, 245, 240)),
                        ((250, 250, 245), (240, 150, 40)), "middle"),
    "sign": _ClassStyle((0.13, 0.17), 10, (1.0,), ((215, 25, 30),), ((250, 250, 250),), "ground"),
    "bench": _ClassStyle((0.15, 0.2), 6, (1.0,), ((150, 90, 45), (40, 110, 60)), ((50, 50, 50),), "ground"),
    "bird": _ClassStyle((0.065, 0.09), 20, (0.5, 0.8, 1.0), ((40, 60, 170), (30, 30, 35), (190, 40, 30)),
                        ((250, 150, 20),), "sky"),
    "dog": _ClassStyle((0.12, 0.16), 10, (1.0,), ((150, 95, 45), (220, 180, 120), (70, 50, 35)),
                       ((60, 35, 20),), "ground"),
    "umbrella": _ClassStyle((0.15, 0.2), 20, (1.0,), ((220, 30, 40), (30, 90, 210), (30, 160, 80)),
                            ((250, 250, 250), (250, 220, 40)), "any"),
    "ball": _ClassStyle((0.065, 0.09), 180, (1.0,), ((250, 250, 250),), ((20, 20, 20),), "any"),
    "bottle": _ClassStyle((0.11, 0.15), 35, (0.75, 1.0), ((40, 140, 60), (120, 70, 30), (60, 120, 200)),
                          ((240, 240, 225),), "any"),
    "cup": _ClassStyle((0.08, 0.11), 10, (0.65, 1.0), ((245, 245, 240), (220, 60, 50), (70, 130, 200)),
                       ((90, 50, 25),), "any"),
    "fork": _ClassStyle((0.12, 0.15), 50, (1.0,), _SILVER, _SILVER, "any"),
    "knife": _ClassStyle((0.12, 0.15), 50, (1.0,), _SILVER, ((30, 30, 30), (110, 65, 30)), "any"),
    "plate": _ClassStyle((0.11, 0.14), 180, (0.8, 1.0), ((248, 248, 245), (230, 225, 210)),
                         ((60, 160, 60), (220, 120, 30), (150, 80, 40)), "any"),
    "chair": _ClassStyle((0.13, 0.17), 6, (0.8, 1.0), ((140, 80, 40), (30, 30, 35), (170, 40, 40)),
                         ((80, 45, 20),), "ground"),
    "laptop": _ClassStyle((0.14, 0.19), 8, (1.0,), ((60, 62, 70), (185, 188, 195)), ((90, 190, 240),), "any"),
    "book": _ClassStyle((0.09, 0.12), 25, (0.6, 1.0), _VIVID, ((245, 235, 200),), "any"),
    "clock": _ClassStyle((0.09, 0.12), 30, (1.0,), ((25, 25, 25), (120, 70, 30)), ((250, 250, 250),), "sky"),
    "tree": _ClassStyle((0.2, 0.26), 4, (0.7, 1.0), ((40, 130, 45), (30, 100, 50), (90, 150, 40)),
                        ((110, 70, 35),), "ground"),
    "flower": _ClassStyle((0.09, 0.12), 12, (0.5, 0.85, 1.0),
                          ((230, 80, 150), (150, 60, 200), (230, 40, 50), (250, 210, 40)),
                          ((250, 200, 30), (240, 140, 20)), "ground"),
    "towel": _ClassStyle((0.13, 0.17), 8, (1.0,), ((120, 200, 220), (240, 150, 170), (250, 240, 200)),
                         ((40, 80, 150), (220, 60, 60)), "any"),
    "toothbrush": _ClassStyle((0.11, 0.14), 45, (0.75, 1.0), ((40, 120, 230), (230, 60, 120), (60, 190, 90)),
                              ((250, 250, 250),), "any"),
}

_ROW_CHOICES: dict[str, tuple[int, ...]] = {"ground": (2, 1), "middle": (1, 2), "sky": (0, 1), "any": ()}


def synthetic_layout(seed: int, index: int) -> SyntheticLayout:
    """The scene, positive classes and placed objects of image ``index``; labels come from :func:`sample_labels`."""
    scene_index, present = sample_labels(seed, index)
    scene = SCENES[scene_index]
    classes = tuple(name for name, on in zip(SYNTHETIC_CLASSES, present, strict=True) if on)
    r = _Uniforms(np.random.default_rng([seed, index, 1]))

    copies: list[str] = list(classes)
    for name in classes:
        cumulative = _STYLES[name].instances
        extra = next(k for k, p in enumerate(cumulative) if r.random() < p or k == len(cumulative) - 1)
        copies.extend([name] * extra)
    # Extra copies beyond the grid are dropped; every class keeps its first copy.
    copies = copies[: _GRID * _GRID]

    cells = list(range(_GRID * _GRID))
    for i in range(len(cells) - 1, 0, -1):
        j = r.index(i + 1)
        cells[i], cells[j] = cells[j], cells[i]
    # Place row-constrained objects first so they find a cell in a preferred row.
    order = sorted(range(len(copies)), key=lambda k: _STYLES[copies[k]].row == "any")
    objects: list[PlacedObject] = []
    for k in order:
        name = copies[k]
        style = _STYLES[name]
        rows = _ROW_CHOICES[style.row]
        cell = next((c for row in rows for c in cells if c // _GRID == row), cells[0])
        cells.remove(cell)
        size = r.uniform(*style.size)
        # Keep the object inside the frame.
        margin = size
        x = (cell % _GRID + 0.5 + r.uniform(-0.3, 0.3)) / _GRID
        y = (cell // _GRID + 0.5 + r.uniform(-0.3, 0.3)) / _GRID
        objects.append(
            PlacedObject(
                name=name,
                x=min(max(x, margin), 1 - margin),
                y=min(max(y, margin), 1 - margin),
                size=size,
                angle=math.radians(r.uniform(-style.max_tilt, style.max_tilt)),
                mirror=r.random() < 0.5,
                colour=r.jitter(style.palette[r.index(len(style.palette))]),
                accent=r.jitter(style.accents[r.index(len(style.accents))], 15),
                variant=r.random(),
            )
        )
    # Larger objects go behind so small ones stay visible.
    objects.sort(key=lambda o: -o.size)
    base = _SCENE_COLOURS[scene]
    return SyntheticLayout(
        scene=scene,
        classes=classes,
        objects=tuple(objects),
        horizon=r.uniform(0.33, 0.5),
        tints=tuple(r.jitter(c, 14) for c in base),
    )


# Background colours per scene: (upper top, upper bottom, lower top, lower bottom, detail).
_SCENE_COLOURS: dict[str, tuple[Colour, ...]] = {
    "kitchen": ((238, 226, 196), (225, 208, 170), (170, 120, 75), (140, 95, 55), (205, 190, 160)),
    "street": ((120, 175, 235), (195, 220, 245), (120, 120, 125), (85, 85, 90), (240, 240, 240)),
    "park": ((110, 170, 240), (190, 220, 250), (120, 185, 75), (70, 140, 50), (95, 160, 60)),
    "office": ((205, 212, 222), (190, 198, 210), (120, 85, 60), (95, 65, 45), (170, 180, 195)),
    "beach": ((90, 160, 235), (180, 215, 245), (235, 215, 160), (215, 190, 130), (40, 110, 190)),
    "bathroom": ((225, 240, 245), (205, 228, 236), (170, 200, 210), (150, 180, 195), (180, 205, 215)),
}


class _Pen:
    """Draws in an object's local frame: unit half extent, tilted, mirrored, then placed in pixels."""

    def __init__(self, draw: ImageDraw.ImageDraw, obj: PlacedObject, side: int) -> None:
        self.draw = draw
        self.cx = obj.x * side
        self.cy = obj.y * side
        self.scale = obj.size * side
        self.cos = math.cos(obj.angle) * self.scale
        self.sin = math.sin(obj.angle) * self.scale
        self.flip = -1.0 if obj.mirror else 1.0

    def point(self, x: float, y: float) -> tuple[float, float]:
        x *= self.flip
        return (self.cx + self.cos * x - self.sin * y, self.cy + self.sin * x + self.cos * y)

    def width(self, w: float) -> int:
        return max(1, round(w * self.scale))

    def poly(self, points: Sequence[tuple[float, float]], fill: Colour, outline: Colour | None = None) -> None:
        self.draw.polygon([self.point(x, y) for x, y in points], fill=fill, outline=outline)

    def rect(self, x0: float, y0: float, x1: float, y1: float, fill: Colour) -> None:
        self.poly(((x0, y0), (x1, y0), (x1, y1), (x0, y1)), fill)

    def line(self, points: Sequence[tuple[float, float]], fill: Colour, w: float) -> None:
        self.draw.line([self.point(x, y) for x, y in points], fill=fill, width=self.width(w), joint="curve")

    def circle(
        self, x: float, y: float, radius: float, fill: Colour | None, outline: Colour | None = None, w: float = 0
    ) -> None:
        px, py = self.point(x, y)
        rr = radius * self.scale
        self.draw.ellipse(
            (px - rr, py - rr, px + rr, py + rr), fill=fill, outline=outline, width=self.width(w) if w else 1
        )

    def ellipse(self, x: float, y: float, rx: float, ry: float, fill: Colour, steps: int = 14) -> None:
        pts = [
            (x + rx * math.cos(2 * math.pi * k / steps), y + ry * math.sin(2 * math.pi * k / steps))
            for k in range(steps)
        ]
        self.poly(pts, fill)


def _shade(colour: Colour, factor: float) -> Colour:
    return tuple(max(0, min(255, int(c * factor))) for c in colour)  # type: ignore[return-value]


_DARK: Colour = (25, 25, 28)
_GREY: Colour = (110, 110, 115)
_WHITE: Colour = (248, 248, 248)


def _person(p: _Pen, o: PlacedObject) -> None:
    shirt = _VIVID[int(o.variant * len(_VIVID))]
    pants = (40, 45, 80) if o.variant < 0.5 else (60, 50, 40)
    p.rect(-0.22, 0.3, -0.04, 1.0, pants)
    p.rect(0.04, 0.3, 0.22, 1.0, pants)
    p.line(((-0.28, -0.38), (-0.46, 0.22)), shirt, 0.12)
    p.line(((0.28, -0.38), (0.46, 0.22)), shirt, 0.12)
    p.poly(((-0.3, -0.45), (0.3, -0.45), (0.25, 0.36), (-0.25, 0.36)), shirt)
    p.circle(0, -0.7, 0.22, o.colour)
    p.poly(((-0.22, -0.76), (0.22, -0.76), (0.18, -0.92), (-0.18, -0.92)), _shade(o.colour, 0.35))


def _bicycle(p: _Pen, o: PlacedObject) -> None:
    for x in (-0.6, 0.6):
        p.circle(x, 0.3, 0.38, None, _DARK, 0.09)
    frame = ((-0.6, 0.3), (-0.1, 0.3), (0.35, -0.25), (-0.25, -0.25), (-0.6, 0.3))
    p.line(frame, o.colour, 0.08)
    p.line(((-0.1, 0.3), (-0.3, -0.38)), o.colour, 0.08)
    p.line(((0.35, -0.25), (0.6, 0.3)), o.colour, 0.08)
    p.line(((0.35, -0.25), (0.3, -0.5), (0.48, -0.52)), o.accent, 0.07)
    p.rect(-0.42, -0.45, -0.18, -0.36, _DARK)


def _car(p: _Pen, o: PlacedObject) -> None:
    body = ((-1, 0.0), (-0.95, -0.2), (-0.5, -0.25), (-0.3, -0.6), (0.35, -0.6), (0.55, -0.25), (0.95, -0.2),
            (1, 0.0), (1, 0.3), (-1, 0.3))
    p.poly(body, o.colour)
    p.poly(((-0.25, -0.52), (0.02, -0.52), (0.02, -0.28), (-0.42, -0.28)), o.accent)
    p.poly(((0.08, -0.52), (0.32, -0.52), (0.47, -0.28), (0.08, -0.28)), o.accent)
    p.rect(0.86, -0.14, 1.0, -0.04, (250, 230, 120))
    for x in (-0.55, 0.55):
        p.circle(x, 0.3, 0.22, _DARK)
        p.circle(x, 0.3, 0.09, (170, 170, 175))


def _bus(p: _Pen, o: PlacedObject) -> None:
    p.rect(-1, -0.55, 1, 0.35, o.colour)
    for k in range(5):
        x0 = -0.9 + k * 0.34
        p.rect(x0, -0.45, x0 + 0.26, -0.12, o.accent)
    p.rect(-1, 0.0, 1, 0.08, _shade(o.colour, 0.6))
    p.rect(0.8, -0.05, 0.95, 0.3, _shade(o.accent, 1.3))
    for x in (-0.6, 0.55):
        p.circle(x, 0.35, 0.17, _DARK)


def _boat(p: _Pen, o: PlacedObject) -> None:
    p.line(((0, 0.15), (0, -1.0)), _DARK, 0.05)
    p.poly(((0.06, -0.95), (0.06, 0.02), (0.72, 0.02)), o.accent)
    p.poly(((-0.06, -0.75), (-0.06, 0.02), (-0.55, 0.02)), _shade(o.accent, 0.85))
    p.poly(((-1, 0.1), (1, 0.1), (0.7, 0.5), (-0.7, 0.5)), o.colour)
    p.rect(-0.85, 0.18, 0.85, 0.24, _shade(o.colour, 0.55))


def _sign(p: _Pen, o: PlacedObject) -> None:
    p.rect(-0.06, 0.0, 0.06, 1.0, _GREY)
    octagon = [
        (0.5 * math.cos(math.pi / 8 + k * math.pi / 4), -0.45 + 0.5 * math.sin(math.pi / 8 + k * math.pi / 4))
        for k in range(8)
    ]
    p.poly(octagon, o.colour, outline=o.accent)
    p.rect(-0.33, -0.52, 0.33, -0.38, o.accent)


def _bench(p: _Pen, o: PlacedObject) -> None:
    p.rect(-0.85, -0.5, -0.75, 0.5, o.accent)
    p.rect(0.75, -0.5, 0.85, 0.5, o.accent)
    p.rect(-1, -0.5, 1, -0.35, o.colour)
    p.rect(-1, -0.25, 1, -0.1, o.colour)
    p.rect(-1, 0.02, 1, 0.18, _shade(o.colour, 0.85))


def _bird(p: _Pen, o: PlacedObject) -> None:
    p.poly(((-0.5, 0.0), (-1.0, -0.22), (-0.95, 0.18)), _shade(o.colour, 0.7))
    p.ellipse(0, 0, 0.62, 0.36, o.colour)
    p.circle(0.55, -0.3, 0.26, o.colour)
    p.poly(((0.76, -0.38), (1.0, -0.26), (0.76, -0.18)), o.accent)
    p.poly(((-0.35, -0.1), (0.2, -0.05), (-0.15, -0.62)), _shade(o.colour, 0.65))
    p.circle(0.62, -0.36, 0.06, _WHITE)


def _dog(p: _Pen, o: PlacedObject) -> None:
    legs = (-0.5, -0.3, 0.25, 0.45)
    for x in legs:
        p.rect(x, 0.15, x + 0.13, 0.7, _shade(o.colour, 0.85))
    p.line(((-0.58, -0.02), (-0.95, -0.42)), o.colour, 0.09)
    p.ellipse(0, 0.05, 0.62, 0.3, o.colour)
    p.circle(0.65, -0.3, 0.27, o.colour)
    p.ellipse(0.9, -0.22, 0.16, 0.11, _shade(o.colour, 1.15))
    p.circle(1.02, -0.24, 0.05, _DARK)
    p.poly(((0.5, -0.5), (0.65, -0.55), (0.52, -0.15)), o.accent)
    p.circle(0.7, -0.36, 0.04, _DARK)


def _umbrella(p: _Pen, o: PlacedObject) -> None:
    p.line(((0, -0.15), (0, 0.85), (-0.12, 0.98), (-0.24, 0.9)), _DARK, 0.06)
    steps = 6
    for k in range(steps):
        a0 = math.pi + math.pi * k / steps
        a1 = math.pi + math.pi * (k + 1) / steps
        am = 0.5 * (a0 + a1)
        pts = [(0, -0.15)] + [(math.cos(a), -0.15 + 0.9 * math.sin(a)) for a in (a0, am, a1)]
        p.poly(pts, o.colour if k % 2 == 0 else o.accent)


def _ball(p: _Pen, o: PlacedObject) -> None:
    p.circle(0, 0, 1.0, o.colour, o.accent, 0.08)

    def pentagon(cx: float, cy: float, r: float, phase: float) -> list[tuple[float, float]]:
        return [(cx + r * math.cos(phase + k * 2 * math.pi / 5), cy + r * math.sin(phase + k * 2 * math.pi / 5))
                for k in range(5)]

    p.poly(pentagon(0, 0, 0.34, -math.pi / 2), o.accent)
    for k in range(5):
        a = math.pi / 2 + k * 2 * math.pi / 5
        p.poly(pentagon(0.78 * math.cos(a), 0.78 * math.sin(a), 0.2, a), o.accent)


def _bottle(p: _Pen, o: PlacedObject) -> None:
    p.rect(-0.35, -0.3, 0.35, 1.0, o.colour)
    p.poly(((-0.35, -0.3), (0.35, -0.3), (0.13, -0.6), (-0.13, -0.6)), o.colour)
    p.rect(-0.13, -0.86, 0.13, -0.58, o.colour)
    p.rect(-0.16, -1.0, 0.16, -0.84, _shade(o.accent, 0.6) if o.variant < 0.5 else (200, 40, 40))
    p.rect(-0.35, 0.1, 0.35, 0.5, o.accent)
    p.rect(-0.22, -0.2, -0.12, 0.9, _shade(o.colour, 1.35))


def _cup(p: _Pen, o: PlacedObject) -> None:
    p.circle(0.55, -0.05, 0.3, None, _shade(o.colour, 0.85), 0.13)
    p.poly(((-0.6, -0.7), (0.6, -0.7), (0.45, 0.7), (-0.45, 0.7)), o.colour, outline=_GREY)
    p.ellipse(0, -0.7, 0.6, 0.16, o.accent)
    p.rect(-0.53, -0.05, 0.53, 0.08, _shade(o.colour, 0.7))


def _fork(p: _Pen, o: PlacedObject) -> None:
    p.poly(((-0.09, 1.0), (0.09, 1.0), (0.07, -0.15), (-0.07, -0.15)), o.colour, outline=_GREY)
    p.poly(((-0.28, -0.45), (0.28, -0.45), (0.12, -0.12), (-0.12, -0.12)), o.colour, outline=_GREY)
    for x in (-0.28, -0.13, 0.03, 0.18):
        p.rect(x, -1.0, x + 0.1, -0.44, o.colour)


def _knife(p: _Pen, o: PlacedObject) -> None:
    p.poly(((-0.12, 0.22), (0.16, 0.22), (0.16, -0.55), (-0.12, -1.0)), o.colour, outline=_GREY)
    p.rect(-0.14, 0.22, 0.18, 1.0, o.accent)
    p.rect(-0.16, 0.18, 0.2, 0.28, _GREY)


def _plate(p: _Pen, o: PlacedObject) -> None:
    p.circle(0, 0, 1.0, o.colour, (170, 170, 170), 0.04)
    p.circle(0, 0, 0.66, _shade(o.colour, 0.93), (200, 200, 200), 0.03)
    if o.variant < 0.6:
        p.circle(-0.15, 0.1, 0.28, o.accent)
        p.circle(0.22, -0.12, 0.22, _shade(o.accent, 0.8))


def _chair(p: _Pen, o: PlacedObject) -> None:
    for x in (-0.5, 0.38):
        p.rect(x, 0.05, x + 0.12, 1.0, _shade(o.colour, 0.8))
    p.rect(-0.5, -1.0, -0.38, 0.1, o.colour)
    p.rect(0.38, -1.0, 0.5, 0.1, o.colour)
    p.rect(-0.5, -1.0, 0.5, -0.7, o.colour)
    p.rect(-0.5, -0.55, 0.5, -0.42, o.colour)
    p.poly(((-0.6, -0.05), (0.6, -0.05), (0.5, 0.15), (-0.5, 0.15)), _shade(o.colour, 1.2))


def _laptop(p: _Pen, o: PlacedObject) -> None:
    p.rect(-0.8, -0.75, 0.8, 0.25, o.colour)
    p.rect(-0.7, -0.66, 0.7, 0.16, o.accent)
    p.poly(((-0.8, 0.25), (0.8, 0.25), (1.0, 0.72), (-1.0, 0.72)), _shade(o.colour, 1.3))
    for y in (0.36, 0.47, 0.58):
        p.line(((-0.7 - (y - 0.25) * 0.4, y), (0.7 + (y - 0.25) * 0.4, y)), _shade(o.colour, 0.6), 0.05)


def _book(p: _Pen, o: PlacedObject) -> None:
    p.rect(-0.82, -0.62, 0.82, 0.62, _WHITE)
    p.rect(-0.8, -0.6, 0.72, 0.6, o.colour)
    p.rect(-0.8, -0.6, -0.6, 0.6, _shade(o.colour, 0.6))
    p.rect(-0.35, -0.35, 0.5, -0.12, o.accent)


def _clock(p: _Pen, o: PlacedObject) -> None:
    p.circle(0, 0, 1.0, o.accent, o.colour, 0.16)
    for k in range(12):
        a = k * math.pi / 6
        inner = 0.62 if k % 3 == 0 else 0.72
        p.line(((inner * math.cos(a), inner * math.sin(a)), (0.82 * math.cos(a), 0.82 * math.sin(a))), _DARK, 0.06)
    a = o.variant * 2 * math.pi
    p.line(((0, 0), (0.45 * math.cos(a), 0.45 * math.sin(a))), _DARK, 0.09)
    b = a * 12 % (2 * math.pi)
    p.line(((0, 0), (0.68 * math.cos(b), 0.68 * math.sin(b))), _DARK, 0.06)
    p.circle(0, 0, 0.07, (200, 30, 30))


def _tree(p: _Pen, o: PlacedObject) -> None:
    p.rect(-0.12, 0.05, 0.12, 1.0, o.accent)
    if o.variant < 0.3:
        for k, (y, w) in enumerate(((0.25, 0.75), (-0.2, 0.6), (-0.62, 0.45))):
            p.poly(((-w, y), (w, y), (0, y - 0.6)), _shade(o.colour, 0.85 + 0.1 * k))
        return
    p.circle(-0.38, -0.12, 0.42, _shade(o.colour, 0.85))
    p.circle(0.38, -0.12, 0.42, _shade(o.colour, 0.9))
    p.circle(0.0, -0.38, 0.55, o.colour)
    p.circle(0.05, -0.72, 0.32, _shade(o.colour, 1.15))


def _flower(p: _Pen, o: PlacedObject) -> None:
    green = (50, 140, 50)
    p.line(((0, -0.45), (0.05, 1.0)), green, 0.08)
    p.ellipse(0.2, 0.35, 0.2, 0.08, green, 8)
    for k in range(6):
        a = k * math.pi / 3
        p.circle(0.26 * math.cos(a), -0.5 + 0.26 * math.sin(a), 0.2, o.colour)
    p.circle(0, -0.5, 0.15, o.accent)


def _towel(p: _Pen, o: PlacedObject) -> None:
    p.line(((-0.95, -0.9), (0.95, -0.9)), _GREY, 0.06)
    p.rect(-0.7, -0.9, 0.7, 0.9, o.colour)
    p.rect(-0.7, 0.45, 0.7, 0.56, o.accent)
    p.rect(-0.7, 0.64, 0.7, 0.69, o.accent)
    p.rect(-0.7, -0.9, -0.55, 0.9, _shade(o.colour, 0.85))


def _toothbrush(p: _Pen, o: PlacedObject) -> None:
    p.poly(((-0.1, 1.0), (0.1, 1.0), (0.06, -0.45), (-0.06, -0.45)), o.colour)
    p.rect(-0.1, -1.0, 0.1, -0.45, o.colour)
    p.rect(0.1, -0.97, 0.26, -0.55, o.accent)
    p.rect(0.2, -0.97, 0.26, -0.55, (120, 200, 240))


_DRAWERS: dict[str, Callable[[_Pen, PlacedObject], None]] = {
    "person": _person, "bicycle": _bicycle, "car": _car, "bus": _bus, "boat": _boat, "sign": _sign,
    "bench": _bench, "bird": _bird, "dog": _dog, "umbrella": _umbrella, "ball": _ball, "bottle": _bottle,
    "cup": _cup, "fork": _fork, "knife": _knife, "plate": _plate, "chair": _chair, "laptop": _laptop,
    "book": _book, "clock": _clock, "tree": _tree, "flower": _flower, "towel": _towel, "toothbrush": _toothbrush,
}


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
        draw.rectangle((0, hy, side, hy + 2 * line), fill=_shade(low, 0.7))
    elif layout.scene == "street":
        hy = int(h * side)
        draw.rectangle((0, hy, side, hy + side // 14), fill=(175, 175, 170))
        y = int((h + (1 - h) * 0.55) * side)
        dash = side // 8
        for x in range(0, side, 2 * dash):
            draw.rectangle((x, y, x + dash, y + max(1, side // 60)), fill=detail)
    elif layout.scene == "park":
        hy = int(h * side)
        draw.rectangle((0, hy - side // 20, side, hy), fill=_shade(detail, 0.8))
    elif layout.scene == "office":
        wx0, wx1 = int(0.08 * side), int(0.38 * side)
        draw.rectangle((wx0, int(0.06 * side), wx1, int(h * side * 0.8)), fill=detail, outline=_WHITE, width=line)
        draw.rectangle((0, int(h * side), side, int(h * side) + 2 * line), fill=_shade(low, 0.7))
    elif layout.scene == "beach":
        draw.rectangle((0, int(h * side), side, int((h + 0.12) * side)), fill=detail)
        draw.line((0, int((h + 0.12) * side), side, int((h + 0.12) * side)), fill=_WHITE, width=line)


def render_layout(layout: SyntheticLayout, image_size: int = 128) -> Image.Image:
    """Draw ``layout`` as an ``image_size``×``image_size`` RGB image."""
    image = Image.new("RGB", (image_size, image_size))
    draw = ImageDraw.Draw(image)
    _background(draw, layout, image_size)
    for obj in layout.objects:
        _DRAWERS[obj.name](_Pen(draw, obj, image_size), obj)
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
