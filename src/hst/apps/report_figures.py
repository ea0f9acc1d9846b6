"""The figures of ``hst report``: losses, mAP, per-class AP, thresholds and pseudo labels of a run, drawn from
its ``metrics.csv`` with matplotlib's Agg canvas (no display, no global pyplot state)."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from hst.io import atomic_path

_DPI = 110


_PSEUDO_KINDS = (("intra", "IST (intra-image)"), ("inter", "CST (cross-image)"))


def _to_float(text: str | None) -> float | None:
    if text is None or text.strip() == "":
        return None
    try:
        return float(text)
    except ValueError:
        return None


class MetricsLog:
    """The sparse rows of Lightning's ``metrics.csv``, numeric cells only."""

    def __init__(self, rows: list[dict[str, float]]) -> None:
        self.rows = rows
        self.columns = {key for row in rows for key in row}

    @classmethod
    def read(cls, path: Path) -> MetricsLog:
        with path.open(newline="") as handle:
            rows = []
            for raw in csv.DictReader(handle):
                parsed = {key: _to_float(value) for key, value in raw.items() if key is not None}
                rows.append({key: value for key, value in parsed.items() if value is not None})
        return cls(rows)

    def has(self, column: str) -> bool:
        return column in self.columns

    def series(self, column: str, x: str = "epoch") -> tuple[np.ndarray, np.ndarray]:
        """Finite (x, value) pairs of a column, sorted by x; a repeated x keeps its last value (resumed runs)."""
        points: dict[float, float] = {}
        for row in self.rows:
            if column in row and x in row and math.isfinite(row[column]) and math.isfinite(row[x]):
                points[row[x]] = row[column]
        xs = np.array(sorted(points), dtype=float)
        return xs, np.array([points[v] for v in xs], dtype=float)


def new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(figure)  # render with Agg whatever backend pyplot may have selected
    return figure


def save_figure(figure: Figure, path: Path) -> Path:
    for axis in figure.axes:
        if axis.get_xlabel() in ("epoch", "training epoch", "training step"):
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    with atomic_path(path) as temp:
        figure.savefig(temp, format="png", dpi=_DPI)
    return path


def style_axis(axis: Any, xlabel: str, ylabel: str, title: str) -> None:
    """Axis labels, title, a light grid and a small legend: the look of the report's single-panel figures."""
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)


def loss_figure(log: MetricsLog, path: Path) -> str:
    """Training loss by step (per step and per-epoch mean), and the loss terms per epoch; '' when absent."""
    step_column = "train/loss_step" if log.has("train/loss_step") else "train/loss"
    x = "step" if log.has("step") else "epoch"
    steps, step_loss = log.series(step_column, x)
    epoch_x, epoch_loss = log.series("train/loss_epoch", x)
    terms = sorted(
        c
        for c in log.columns
        if c.startswith("train/")
        and c not in {"train/loss", "train/loss_step", "train/loss_epoch"}
        and "pseudo" not in c
    )
    term_series = {c: log.series(c) for c in terms}
    term_series = {c: s for c, s in term_series.items() if s[0].size}
    if not steps.size and not epoch_x.size:
        return ""
    figure = new_figure(11 if term_series else 6.5, 4)
    axis = figure.add_subplot(1, 2 if term_series else 1, 1)
    if steps.size:
        axis.plot(steps, step_loss, lw=0.8, alpha=0.6, label="per step")
    if epoch_x.size:
        axis.plot(epoch_x, epoch_loss, marker="o", lw=1.8, label="epoch mean")
    style_axis(axis, f"training {x}", "loss", "Training loss")
    if term_series:
        parts = figure.add_subplot(1, 2, 2)
        for column, (xs, ys) in term_series.items():
            parts.plot(xs, ys, marker=".", label=column.removeprefix("train/"))
        parts.set_xlabel("epoch")
        parts.set_title("Loss terms (epoch mean)")
        parts.grid(alpha=0.3)
        parts.legend(fontsize=7, ncol=2)
    save_figure(figure, path)
    return f"Loss by {x}" + (f"; {len(term_series)} loss terms per epoch." if term_series else ".")


def map_figure(log: MetricsLog | None, test_map: float | None, path: Path) -> str:
    epochs, val_map = log.series("val/mAP") if log else (np.array([]), np.array([]))
    has_test = test_map is not None and math.isfinite(test_map)
    if not epochs.size and not has_test:
        return ""
    figure = new_figure(6.5, 4)
    axis = figure.add_subplot()
    caption = []
    if epochs.size:
        axis.plot(epochs, val_map, marker="o", label="validation mAP")
        best = int(np.argmax(val_map))
        axis.scatter([epochs[best]], [val_map[best]], marker="*", s=160, color="C1", zorder=3, label="best epoch")
        caption.append(f"best validation mAP {val_map[best]:.2f} at epoch {int(epochs[best])}")
    if has_test:
        assert test_map is not None
        axis.axhline(test_map, color="C3", ls="--", lw=1.2, label=f"test mAP {test_map:.2f}")
        caption.append(f"test mAP {test_map:.2f}")
    style_axis(axis, "epoch", "mAP (%)", "mAP")
    save_figure(figure, path)
    text = "; ".join(caption)
    return text[:1].upper() + text[1:] + "."


def per_class_figure(per_class: dict[str, float], path: Path) -> None:
    ordered = sorted(per_class.items(), key=lambda item: item[1])  # barh draws bottom-up: best class on top
    names = [name for name, _ in ordered]
    values = np.array([value for _, value in ordered], dtype=float)
    figure = new_figure(7, max(2.5, 0.6 + 0.19 * len(names)))
    axis = figure.add_subplot()
    positions = np.arange(len(names))
    axis.barh(positions, values, height=0.75, color="C0")
    axis.set_yticks(positions, names, fontsize=7 if len(names) > 40 else 8)
    axis.set_ylim(-0.6, len(names) - 0.4)
    axis.axvline(float(values.mean()), color="C3", ls="--", lw=1, label=f"mean {values.mean():.2f}")
    for y, value in zip(positions, values, strict=True):
        axis.text(value + 0.5, y, f"{value:.1f}", va="center", fontsize=6)
    axis.set_xlim(0, max(100.0, float(values.max()) + 8))
    axis.set_xlabel("test AP (%)")
    axis.set_title("Per-class test AP")
    axis.grid(axis="x", alpha=0.3)
    axis.legend(fontsize=8, loc="lower right")
    save_figure(figure, path)


def _epoch_curves(
    log: MetricsLog, columns: dict[str, str], pseudo_epoch: Any, ylabel: str, title: str, path: Path
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """One line per logged column (label → column) against the epoch, the pseudo-label start marked; the
    curves drawn (none: no figure written)."""
    curves = {label: log.series(column) for label, column in columns.items() if log.has(column)}
    curves = {label: s for label, s in curves.items() if s[0].size}
    if not curves:
        return curves
    figure = new_figure(6.5, 4)
    axis = figure.add_subplot()
    for label, (epochs, values) in curves.items():
        axis.plot(epochs, values, marker="o", label=label)
    if isinstance(pseudo_epoch, int):
        axis.axvline(pseudo_epoch, color="grey", ls=":", lw=1, label="pseudo labels start")
    style_axis(axis, "epoch", ylabel, title)
    save_figure(figure, path)
    return curves


def threshold_figure(log: MetricsLog, pseudo_epoch: Any, path: Path) -> str:
    """Learned thresholds per epoch or, for calibrated thresholds, the classes each evidence source could
    calibrate at the target precision; '' when the run logged neither."""
    learned = {f"{label} threshold": f"method/{kind}_threshold" for kind, label in _PSEUDO_KINDS}
    curves = _epoch_curves(log, learned, pseudo_epoch, "threshold", "Learned thresholds", path)
    if curves:
        return ", ".join(f"{label}: {v[0]:.3f} → {v[-1]:.3f}" for label, (_, v) in curves.items()) + "."
    calibrated = {label: f"method/calibrated_{key}_classes" for key, label in _CALIBRATED_SOURCES if key != "all"}
    # The cross-fitted rule (one score, decided once) logs its calibrated classes per polarity.
    calibrated |= {
        f"cross-fitted rule, {name}s": f"method/calibrated_{name}_classes" for name in ("positive", "negative")
    }
    title = "Classes with a calibrated positive threshold"
    curves = _epoch_curves(log, calibrated, pseudo_epoch, "classes", title, path)
    if not curves:
        return ""
    return "Per evidence source, the classes whose known entries allowed a threshold at the target precision: " + (
        ", ".join(f"{label} {int(values[-1])}" for label, (_, values) in curves.items()) + " at the last epoch."
    )


def _ratio(log: MetricsLog, numerator: str, denominator: str) -> tuple[np.ndarray, np.ndarray]:
    """numerator/denominator per epoch, only where both were logged and the denominator is positive."""
    num_x, num = log.series(numerator)
    den = dict(zip(*log.series(denominator), strict=True))
    pairs = [(x, 100.0 * n / den[x]) for x, n in zip(num_x, num, strict=True) if den.get(x, 0.0) > 0]
    return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])


_SOURCE_COLORS = {"classifier": "C0", "ist": "C1", "cst": "C2", "joint": "C4", "neighbours": "C3"}


_CALIBRATED_SOURCES = (
    ("all", "used for training"),
    ("classifier", "classifier"),
    ("joint", "classifier + CST neighbours"),
    ("ist", "IST"),
    ("cst", "CST prototypes"),
    ("neighbours", "CST neighbours"),
)


def calibrated_pseudo_figure(log: MetricsLog, path: Path) -> str:
    """Calibrated HST: per source and polarity, count / precision / recall against the full training labels."""
    prefix = "method/pseudo_{}_{}_{}"
    sources = [(k, label) for k, label in _CALIBRATED_SOURCES if log.has(prefix.format(k, "pos", "count"))]
    if not sources:
        return ""
    figure = new_figure(12, 6.8)
    axes = figure.subplots(2, 3)
    for row, (polarity, noun) in enumerate((("pos", "positives"), ("neg", "negatives"))):
        for key, label in sources:
            # one colour per source in every panel, whichever curves a panel has
            style = {"lw": 2.4, "color": "black"} if key == "all" else {"lw": 1.2, "color": _SOURCE_COLORS[key]}
            epochs, counts = log.series(prefix.format(key, polarity, "count"))
            axes[row, 0].plot(epochs, counts, marker="o", label=label, **style)
            for column, denominator in ((1, "count"), (2, "possible")):
                xs, ys = _ratio(log, prefix.format(key, polarity, "correct"), prefix.format(key, polarity, denominator))
                if xs.size:
                    axes[row, column].plot(xs, ys, marker="o", label=label, **style)
        titles = (
            (f"Pseudo {noun} per epoch", "count"),
            ("Precision (vs full labels)", "%"),
            (f"Recall of hidden {noun}", "%"),
        )
        for column, (title, unit) in enumerate(titles):
            _style_epoch_panel(axes[row, column], title, unit, legend_size=7)
    save_figure(figure, path)
    last = {
        noun: log.series(prefix.format("all", polarity, "count"))[1]
        for polarity, noun in (("pos", "positives"), ("neg", "negatives"))
    }
    counts = ", ".join(f"{int(v[-1])} {noun}" for noun, v in last.items() if v.size) or "none"
    return (
        "Calibrated pseudo labels of each evidence source (what it alone would assign) and of their combination "
        f"(black: what training used; last epoch: {counts}), scored against the full training labels."
    )


def _style_epoch_panel(axis: Any, title: str, unit: str, legend_size: int = 8) -> None:
    """Title, epoch axis, unit, grid, and a legend when the panel has labelled lines."""
    axis.set_title(title, fontsize=10)
    axis.set_xlabel("epoch")
    axis.set_ylabel(unit)
    axis.grid(alpha=0.3)
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=legend_size)


def pseudo_figure(log: MetricsLog, path: Path) -> str:
    if log.has("method/pseudo_all_pos_count"):
        return calibrated_pseudo_figure(log, path)
    prefix = "method/epoch_{}_pseudo_{}"
    kinds = [(k, label) for k, label in _PSEUDO_KINDS if log.has(prefix.format(k, "count"))]
    if not kinds:
        return ""
    figure = new_figure(12, 3.8)
    axes = figure.subplots(1, 3)
    undefined: list[str] = []
    for kind, label in kinds:
        epochs, counts = log.series(prefix.format(kind, "count"))
        axes[0].plot(epochs, counts, marker="o", label=label)
        for axis, (num, den), name in (
            (axes[1], ("correct", "count"), "precision"),
            (axes[2], ("correct", "possible"), "recall"),
        ):
            xs, ys = _ratio(log, prefix.format(kind, num), prefix.format(kind, den))
            if xs.size:
                axis.plot(xs, ys, marker="o", label=label)
            if xs.size < epochs.size:
                undefined.append(f"{label} {name} at {epochs.size - xs.size} epoch(s)")
    for axis, title, unit in zip(
        axes,
        ("New pseudo positives per epoch", "Precision = correct / count", "Recall = correct / possible"),
        ("count", "%", "%"),
        strict=True,
    ):
        _style_epoch_panel(axis, title, unit)
    save_figure(figure, path)
    caption = "Pseudo positives of " + " and ".join(label for _, label in kinds) + "."
    if undefined:
        caption += " Undefined (zero denominator) and left out: " + "; ".join(undefined) + "."
    return caption
