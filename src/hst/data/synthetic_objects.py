"""How each synthetic class is drawn: a pen in the object's own frame, and one cartoon per class.

Every class has a fixed signature (shape, colour family, pattern); what varies per instance (position, size,
tilt, mirror, colour jitter, ``variant``) comes in the ``PlacedObject`` that ``synthetic_layout`` made.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from PIL import ImageDraw

from hst.data.synthetic_layout import VIVID, Colour, PlacedObject


class Pen:
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


def shade(colour: Colour, factor: float) -> Colour:
    return tuple(max(0, min(255, int(c * factor))) for c in colour)  # type: ignore[return-value]


_DARK: Colour = (25, 25, 28)
_GREY: Colour = (110, 110, 115)
WHITE: Colour = (248, 248, 248)


def _person(p: Pen, o: PlacedObject) -> None:
    shirt = VIVID[int(o.variant * len(VIVID))]
    pants = (40, 45, 80) if o.variant < 0.5 else (60, 50, 40)
    p.rect(-0.22, 0.3, -0.04, 1.0, pants)
    p.rect(0.04, 0.3, 0.22, 1.0, pants)
    p.line(((-0.28, -0.38), (-0.46, 0.22)), shirt, 0.12)
    p.line(((0.28, -0.38), (0.46, 0.22)), shirt, 0.12)
    p.poly(((-0.3, -0.45), (0.3, -0.45), (0.25, 0.36), (-0.25, 0.36)), shirt)
    p.circle(0, -0.7, 0.22, o.colour)
    p.poly(((-0.22, -0.76), (0.22, -0.76), (0.18, -0.92), (-0.18, -0.92)), shade(o.colour, 0.35))


def _bicycle(p: Pen, o: PlacedObject) -> None:
    for x in (-0.6, 0.6):
        p.circle(x, 0.3, 0.38, None, _DARK, 0.09)
    frame = ((-0.6, 0.3), (-0.1, 0.3), (0.35, -0.25), (-0.25, -0.25), (-0.6, 0.3))
    p.line(frame, o.colour, 0.08)
    p.line(((-0.1, 0.3), (-0.3, -0.38)), o.colour, 0.08)
    p.line(((0.35, -0.25), (0.6, 0.3)), o.colour, 0.08)
    p.line(((0.35, -0.25), (0.3, -0.5), (0.48, -0.52)), o.accent, 0.07)
    p.rect(-0.42, -0.45, -0.18, -0.36, _DARK)


def _car(p: Pen, o: PlacedObject) -> None:
    body = (
        (-1, 0.0),
        (-0.95, -0.2),
        (-0.5, -0.25),
        (-0.3, -0.6),
        (0.35, -0.6),
        (0.55, -0.25),
        (0.95, -0.2),
        (1, 0.0),
        (1, 0.3),
        (-1, 0.3),
    )
    p.poly(body, o.colour)
    p.poly(((-0.25, -0.52), (0.02, -0.52), (0.02, -0.28), (-0.42, -0.28)), o.accent)
    p.poly(((0.08, -0.52), (0.32, -0.52), (0.47, -0.28), (0.08, -0.28)), o.accent)
    p.rect(0.86, -0.14, 1.0, -0.04, (250, 230, 120))
    for x in (-0.55, 0.55):
        p.circle(x, 0.3, 0.22, _DARK)
        p.circle(x, 0.3, 0.09, (170, 170, 175))


def _bus(p: Pen, o: PlacedObject) -> None:
    p.rect(-1, -0.55, 1, 0.35, o.colour)
    for k in range(5):
        x0 = -0.9 + k * 0.34
        p.rect(x0, -0.45, x0 + 0.26, -0.12, o.accent)
    p.rect(-1, 0.0, 1, 0.08, shade(o.colour, 0.6))
    p.rect(0.8, -0.05, 0.95, 0.3, shade(o.accent, 1.3))
    for x in (-0.6, 0.55):
        p.circle(x, 0.35, 0.17, _DARK)


def _boat(p: Pen, o: PlacedObject) -> None:
    p.line(((0, 0.15), (0, -1.0)), _DARK, 0.05)
    p.poly(((0.06, -0.95), (0.06, 0.02), (0.72, 0.02)), o.accent)
    p.poly(((-0.06, -0.75), (-0.06, 0.02), (-0.55, 0.02)), shade(o.accent, 0.85))
    p.poly(((-1, 0.1), (1, 0.1), (0.7, 0.5), (-0.7, 0.5)), o.colour)
    p.rect(-0.85, 0.18, 0.85, 0.24, shade(o.colour, 0.55))


def _sign(p: Pen, o: PlacedObject) -> None:
    p.rect(-0.06, 0.0, 0.06, 1.0, _GREY)
    octagon = [
        (0.5 * math.cos(math.pi / 8 + k * math.pi / 4), -0.45 + 0.5 * math.sin(math.pi / 8 + k * math.pi / 4))
        for k in range(8)
    ]
    p.poly(octagon, o.colour, outline=o.accent)
    p.rect(-0.33, -0.52, 0.33, -0.38, o.accent)


def _bench(p: Pen, o: PlacedObject) -> None:
    p.rect(-0.85, -0.5, -0.75, 0.5, o.accent)
    p.rect(0.75, -0.5, 0.85, 0.5, o.accent)
    p.rect(-1, -0.5, 1, -0.35, o.colour)
    p.rect(-1, -0.25, 1, -0.1, o.colour)
    p.rect(-1, 0.02, 1, 0.18, shade(o.colour, 0.85))


def _bird(p: Pen, o: PlacedObject) -> None:
    p.poly(((-0.5, 0.0), (-1.0, -0.22), (-0.95, 0.18)), shade(o.colour, 0.7))
    p.ellipse(0, 0, 0.62, 0.36, o.colour)
    p.circle(0.55, -0.3, 0.26, o.colour)
    p.poly(((0.76, -0.38), (1.0, -0.26), (0.76, -0.18)), o.accent)
    p.poly(((-0.35, -0.1), (0.2, -0.05), (-0.15, -0.62)), shade(o.colour, 0.65))
    p.circle(0.62, -0.36, 0.06, WHITE)


def _dog(p: Pen, o: PlacedObject) -> None:
    legs = (-0.5, -0.3, 0.25, 0.45)
    for x in legs:
        p.rect(x, 0.15, x + 0.13, 0.7, shade(o.colour, 0.85))
    p.line(((-0.58, -0.02), (-0.95, -0.42)), o.colour, 0.09)
    p.ellipse(0, 0.05, 0.62, 0.3, o.colour)
    p.circle(0.65, -0.3, 0.27, o.colour)
    p.ellipse(0.9, -0.22, 0.16, 0.11, shade(o.colour, 1.15))
    p.circle(1.02, -0.24, 0.05, _DARK)
    p.poly(((0.5, -0.5), (0.65, -0.55), (0.52, -0.15)), o.accent)
    p.circle(0.7, -0.36, 0.04, _DARK)


def _umbrella(p: Pen, o: PlacedObject) -> None:
    p.line(((0, -0.15), (0, 0.85), (-0.12, 0.98), (-0.24, 0.9)), _DARK, 0.06)
    steps = 6
    for k in range(steps):
        a0 = math.pi + math.pi * k / steps
        a1 = math.pi + math.pi * (k + 1) / steps
        am = 0.5 * (a0 + a1)
        pts = [(0, -0.15)] + [(math.cos(a), -0.15 + 0.9 * math.sin(a)) for a in (a0, am, a1)]
        p.poly(pts, o.colour if k % 2 == 0 else o.accent)


def _ball(p: Pen, o: PlacedObject) -> None:
    p.circle(0, 0, 1.0, o.colour, o.accent, 0.08)

    def pentagon(cx: float, cy: float, r: float, phase: float) -> list[tuple[float, float]]:
        return [
            (cx + r * math.cos(phase + k * 2 * math.pi / 5), cy + r * math.sin(phase + k * 2 * math.pi / 5))
            for k in range(5)
        ]

    p.poly(pentagon(0, 0, 0.34, -math.pi / 2), o.accent)
    for k in range(5):
        a = math.pi / 2 + k * 2 * math.pi / 5
        p.poly(pentagon(0.78 * math.cos(a), 0.78 * math.sin(a), 0.2, a), o.accent)


def _bottle(p: Pen, o: PlacedObject) -> None:
    p.rect(-0.35, -0.3, 0.35, 1.0, o.colour)
    p.poly(((-0.35, -0.3), (0.35, -0.3), (0.13, -0.6), (-0.13, -0.6)), o.colour)
    p.rect(-0.13, -0.86, 0.13, -0.58, o.colour)
    p.rect(-0.16, -1.0, 0.16, -0.84, shade(o.accent, 0.6) if o.variant < 0.5 else (200, 40, 40))
    p.rect(-0.35, 0.1, 0.35, 0.5, o.accent)
    p.rect(-0.22, -0.2, -0.12, 0.9, shade(o.colour, 1.35))


def _cup(p: Pen, o: PlacedObject) -> None:
    p.circle(0.55, -0.05, 0.3, None, shade(o.colour, 0.85), 0.13)
    p.poly(((-0.6, -0.7), (0.6, -0.7), (0.45, 0.7), (-0.45, 0.7)), o.colour, outline=_GREY)
    p.ellipse(0, -0.7, 0.6, 0.16, o.accent)
    p.rect(-0.53, -0.05, 0.53, 0.08, shade(o.colour, 0.7))


def _fork(p: Pen, o: PlacedObject) -> None:
    p.poly(((-0.09, 1.0), (0.09, 1.0), (0.07, -0.15), (-0.07, -0.15)), o.colour, outline=_GREY)
    p.poly(((-0.28, -0.45), (0.28, -0.45), (0.12, -0.12), (-0.12, -0.12)), o.colour, outline=_GREY)
    for x in (-0.28, -0.13, 0.03, 0.18):
        p.rect(x, -1.0, x + 0.1, -0.44, o.colour)


def _knife(p: Pen, o: PlacedObject) -> None:
    p.poly(((-0.12, 0.22), (0.16, 0.22), (0.16, -0.55), (-0.12, -1.0)), o.colour, outline=_GREY)
    p.rect(-0.14, 0.22, 0.18, 1.0, o.accent)
    p.rect(-0.16, 0.18, 0.2, 0.28, _GREY)


def _plate(p: Pen, o: PlacedObject) -> None:
    p.circle(0, 0, 1.0, o.colour, (170, 170, 170), 0.04)
    p.circle(0, 0, 0.66, shade(o.colour, 0.93), (200, 200, 200), 0.03)
    if o.variant < 0.6:
        p.circle(-0.15, 0.1, 0.28, o.accent)
        p.circle(0.22, -0.12, 0.22, shade(o.accent, 0.8))


def _chair(p: Pen, o: PlacedObject) -> None:
    for x in (-0.5, 0.38):
        p.rect(x, 0.05, x + 0.12, 1.0, shade(o.colour, 0.8))
    p.rect(-0.5, -1.0, -0.38, 0.1, o.colour)
    p.rect(0.38, -1.0, 0.5, 0.1, o.colour)
    p.rect(-0.5, -1.0, 0.5, -0.7, o.colour)
    p.rect(-0.5, -0.55, 0.5, -0.42, o.colour)
    p.poly(((-0.6, -0.05), (0.6, -0.05), (0.5, 0.15), (-0.5, 0.15)), shade(o.colour, 1.2))


def _laptop(p: Pen, o: PlacedObject) -> None:
    p.rect(-0.8, -0.75, 0.8, 0.25, o.colour)
    p.rect(-0.7, -0.66, 0.7, 0.16, o.accent)
    p.poly(((-0.8, 0.25), (0.8, 0.25), (1.0, 0.72), (-1.0, 0.72)), shade(o.colour, 1.3))
    for y in (0.36, 0.47, 0.58):
        p.line(((-0.7 - (y - 0.25) * 0.4, y), (0.7 + (y - 0.25) * 0.4, y)), shade(o.colour, 0.6), 0.05)


def _book(p: Pen, o: PlacedObject) -> None:
    p.rect(-0.82, -0.62, 0.82, 0.62, WHITE)
    p.rect(-0.8, -0.6, 0.72, 0.6, o.colour)
    p.rect(-0.8, -0.6, -0.6, 0.6, shade(o.colour, 0.6))
    p.rect(-0.35, -0.35, 0.5, -0.12, o.accent)


def _clock(p: Pen, o: PlacedObject) -> None:
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


def _tree(p: Pen, o: PlacedObject) -> None:
    p.rect(-0.12, 0.05, 0.12, 1.0, o.accent)
    if o.variant < 0.3:
        for k, (y, w) in enumerate(((0.25, 0.75), (-0.2, 0.6), (-0.62, 0.45))):
            p.poly(((-w, y), (w, y), (0, y - 0.6)), shade(o.colour, 0.85 + 0.1 * k))
        return
    p.circle(-0.38, -0.12, 0.42, shade(o.colour, 0.85))
    p.circle(0.38, -0.12, 0.42, shade(o.colour, 0.9))
    p.circle(0.0, -0.38, 0.55, o.colour)
    p.circle(0.05, -0.72, 0.32, shade(o.colour, 1.15))


def _flower(p: Pen, o: PlacedObject) -> None:
    green = (50, 140, 50)
    p.line(((0, -0.45), (0.05, 1.0)), green, 0.08)
    p.ellipse(0.2, 0.35, 0.2, 0.08, green, 8)
    for k in range(6):
        a = k * math.pi / 3
        p.circle(0.26 * math.cos(a), -0.5 + 0.26 * math.sin(a), 0.2, o.colour)
    p.circle(0, -0.5, 0.15, o.accent)


def _towel(p: Pen, o: PlacedObject) -> None:
    p.line(((-0.95, -0.9), (0.95, -0.9)), _GREY, 0.06)
    p.rect(-0.7, -0.9, 0.7, 0.9, o.colour)
    p.rect(-0.7, 0.45, 0.7, 0.56, o.accent)
    p.rect(-0.7, 0.64, 0.7, 0.69, o.accent)
    p.rect(-0.7, -0.9, -0.55, 0.9, shade(o.colour, 0.85))


def _toothbrush(p: Pen, o: PlacedObject) -> None:
    p.poly(((-0.1, 1.0), (0.1, 1.0), (0.06, -0.45), (-0.06, -0.45)), o.colour)
    p.rect(-0.1, -1.0, 0.1, -0.45, o.colour)
    p.rect(0.1, -0.97, 0.26, -0.55, o.accent)
    p.rect(0.2, -0.97, 0.26, -0.55, (120, 200, 240))


DRAWERS: dict[str, Callable[[Pen, PlacedObject], None]] = {
    "person": _person,
    "bicycle": _bicycle,
    "car": _car,
    "bus": _bus,
    "boat": _boat,
    "sign": _sign,
    "bench": _bench,
    "bird": _bird,
    "dog": _dog,
    "umbrella": _umbrella,
    "ball": _ball,
    "bottle": _bottle,
    "cup": _cup,
    "fork": _fork,
    "knife": _knife,
    "plate": _plate,
    "chair": _chair,
    "laptop": _laptop,
    "book": _book,
    "clock": _clock,
    "tree": _tree,
    "flower": _flower,
    "towel": _towel,
    "toothbrush": _toothbrush,
}
