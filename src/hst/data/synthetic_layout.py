"""The synthetic scenes before any pixel: classes, scene templates, label sampling and object placement.

Labels of image ``i`` come from ``numpy.random.default_rng([seed, i, 0])`` without rendering; the layout that
places exactly those objects from ``default_rng([seed, i, 1])``. ``hst.data.synthetic`` draws the layouts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

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
        "cup": 0.7,
        "plate": 0.75,
        "fork": 0.6,
        "knife": 0.55,
        "bottle": 0.4,
        "chair": 0.25,
        "clock": 0.2,
        "flower": 0.12,
        "person": 0.12,
        "book": 0.06,
    },
    "street": {
        "car": 0.8,
        "sign": 0.65,
        "bus": 0.45,
        "bicycle": 0.45,
        "person": 0.55,
        "tree": 0.3,
        "dog": 0.12,
        "umbrella": 0.12,
        "bench": 0.1,
        "clock": 0.06,
    },
    "park": {
        "tree": 0.85,
        "bench": 0.55,
        "dog": 0.5,
        "bird": 0.45,
        "flower": 0.45,
        "ball": 0.35,
        "person": 0.4,
        "bicycle": 0.2,
        "umbrella": 0.08,
        "book": 0.06,
    },
    "office": {
        "laptop": 0.8,
        "book": 0.6,
        "chair": 0.6,
        "clock": 0.45,
        "cup": 0.4,
        "bottle": 0.2,
        "person": 0.25,
        "flower": 0.12,
        "sign": 0.05,
    },
    "beach": {
        "umbrella": 0.75,
        "boat": 0.6,
        "towel": 0.55,
        "ball": 0.5,
        "bird": 0.45,
        "person": 0.45,
        "bottle": 0.2,
        "dog": 0.12,
        "book": 0.08,
    },
    "bathroom": {
        "towel": 0.8,
        "toothbrush": 0.7,
        "bottle": 0.55,
        "cup": 0.4,
        "clock": 0.15,
        "flower": 0.2,
        "book": 0.05,
        "person": 0.05,
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


VIVID: tuple[Colour, ...] = ((200, 40, 40), (40, 80, 200), (40, 150, 60), (230, 180, 30), (140, 50, 160))


_SILVER: tuple[Colour, ...] = ((200, 204, 210), (175, 180, 188))


# size: half extent range; max_tilt: degrees; instances: cumulative probabilities of 1, 2, 3 copies.
_STYLES: dict[str, _ClassStyle] = {
    "person": _ClassStyle((0.14, 0.19), 8, (0.7, 1.0), _SKIN, VIVID, "ground"),
    "bicycle": _ClassStyle((0.15, 0.2), 10, (1.0,), ((200, 30, 40), (30, 90, 200), (20, 20, 20)), _SILVER, "ground"),
    "car": _ClassStyle(
        (0.15, 0.2), 8, (0.75, 1.0), ((205, 30, 35), (30, 70, 190), (60, 60, 70)), ((170, 220, 250),), "ground"
    ),
    "bus": _ClassStyle((0.2, 0.25), 6, (1.0,), ((250, 190, 20), (240, 120, 20)), ((30, 50, 110),), "ground"),
    "boat": _ClassStyle(
        (0.15, 0.2),
        12,
        (1.0,),
        ((130, 70, 30), (190, 40, 40), (245, 245, 240)),
        ((250, 250, 245), (240, 150, 40)),
        "middle",
    ),
    "sign": _ClassStyle((0.13, 0.17), 10, (1.0,), ((215, 25, 30),), ((250, 250, 250),), "ground"),
    "bench": _ClassStyle((0.15, 0.2), 6, (1.0,), ((150, 90, 45), (40, 110, 60)), ((50, 50, 50),), "ground"),
    "bird": _ClassStyle(
        (0.065, 0.09), 20, (0.5, 0.8, 1.0), ((40, 60, 170), (30, 30, 35), (190, 40, 30)), ((250, 150, 20),), "sky"
    ),
    "dog": _ClassStyle(
        (0.12, 0.16), 10, (1.0,), ((150, 95, 45), (220, 180, 120), (70, 50, 35)), ((60, 35, 20),), "ground"
    ),
    "umbrella": _ClassStyle(
        (0.15, 0.2), 20, (1.0,), ((220, 30, 40), (30, 90, 210), (30, 160, 80)), ((250, 250, 250), (250, 220, 40)), "any"
    ),
    "ball": _ClassStyle((0.065, 0.09), 180, (1.0,), ((250, 250, 250),), ((20, 20, 20),), "any"),
    "bottle": _ClassStyle(
        (0.11, 0.15), 35, (0.75, 1.0), ((40, 140, 60), (120, 70, 30), (60, 120, 200)), ((240, 240, 225),), "any"
    ),
    "cup": _ClassStyle(
        (0.08, 0.11), 10, (0.65, 1.0), ((245, 245, 240), (220, 60, 50), (70, 130, 200)), ((90, 50, 25),), "any"
    ),
    "fork": _ClassStyle((0.12, 0.15), 50, (1.0,), _SILVER, _SILVER, "any"),
    "knife": _ClassStyle((0.12, 0.15), 50, (1.0,), _SILVER, ((30, 30, 30), (110, 65, 30)), "any"),
    "plate": _ClassStyle(
        (0.11, 0.14),
        180,
        (0.8, 1.0),
        ((248, 248, 245), (230, 225, 210)),
        ((60, 160, 60), (220, 120, 30), (150, 80, 40)),
        "any",
    ),
    "chair": _ClassStyle(
        (0.13, 0.17), 6, (0.8, 1.0), ((140, 80, 40), (30, 30, 35), (170, 40, 40)), ((80, 45, 20),), "ground"
    ),
    "laptop": _ClassStyle((0.14, 0.19), 8, (1.0,), ((60, 62, 70), (185, 188, 195)), ((90, 190, 240),), "any"),
    "book": _ClassStyle((0.09, 0.12), 25, (0.6, 1.0), VIVID, ((245, 235, 200),), "any"),
    "clock": _ClassStyle((0.09, 0.12), 30, (1.0,), ((25, 25, 25), (120, 70, 30)), ((250, 250, 250),), "sky"),
    "tree": _ClassStyle(
        (0.2, 0.26), 4, (0.7, 1.0), ((40, 130, 45), (30, 100, 50), (90, 150, 40)), ((110, 70, 35),), "ground"
    ),
    "flower": _ClassStyle(
        (0.09, 0.12),
        12,
        (0.5, 0.85, 1.0),
        ((230, 80, 150), (150, 60, 200), (230, 40, 50), (250, 210, 40)),
        ((250, 200, 30), (240, 140, 20)),
        "ground",
    ),
    "towel": _ClassStyle(
        (0.13, 0.17),
        8,
        (1.0,),
        ((120, 200, 220), (240, 150, 170), (250, 240, 200)),
        ((40, 80, 150), (220, 60, 60)),
        "any",
    ),
    "toothbrush": _ClassStyle(
        (0.11, 0.14), 45, (0.75, 1.0), ((40, 120, 230), (230, 60, 120), (60, 190, 90)), ((250, 250, 250),), "any"
    ),
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
