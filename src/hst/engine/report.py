"""``hst report``: one self-contained HTML page of a run's (or a benchmark's) curves, metrics and config.

A run directory holds ``config.yaml``, ``metrics.json``, ``summary.txt`` and ``csv/metrics.csv``; a benchmark
directory holds ``results.csv`` (and ``runs/``). The page embeds every figure as a base64 PNG so that the single
``report.html`` still works when moved; the PNG files are written beside it and linked too.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from hst.io import atomic_path, write_text_atomic

REPORT_FILE = "report.html"
FIGURE_FILES = {
    "loss": "loss.png",
    "map": "map.png",
    "per_class_ap": "per_class_ap.png",
    "thresholds": "thresholds.png",
    "pseudo_labels": "pseudo_labels.png",
    "map_vs_proportion": "map_vs_proportion.png",
}
RESULT_COLUMNS = ("method", "proportion", "test_mAP")
_DPI = 110
_PSEUDO_KINDS = (("intra", "IST (intra-image)"), ("inter", "CST (cross-image)"))


@dataclass
class _Section:
    """One figure of the page: the PNG written, or the one-line reason it was left out."""

    key: str
    title: str
    path: Path | None = None
    caption: str = ""
    skipped: str = ""


@dataclass
class _Page:
    title: str
    header_html: str
    sections: list[_Section] = field(default_factory=list)
    extra_html: str = ""
    notes: list[str] = field(default_factory=list)


# ---- reading ---------------------------------------------------------------------------------------------------


def _to_float(text: str | None) -> float | None:
    if text is None or text.strip() == "":
        return None
    try:
        return float(text)
    except ValueError:
        return None


class _MetricsLog:
    """The sparse rows of Lightning's ``metrics.csv``, numeric cells only."""

    def __init__(self, rows: list[dict[str, float]]) -> None:
        self.rows = rows
        self.columns = {key for row in rows for key in row}

    @classmethod
    def read(cls, path: Path) -> _MetricsLog:
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


def _read_yaml(path: Path, notes: list[str]) -> dict[str, Any]:
    if not path.is_file():
        notes.append(f"{path.name} is missing: no config shown.")
        return {}
    try:
        loaded = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as error:
        notes.append(f"{path.name} could not be read ({error.__class__.__name__}): no config shown.")
        return {}
    if not isinstance(loaded, dict):
        notes.append(f"{path.name} is not a mapping: no config shown.")
        return {}
    return loaded


def _read_json(path: Path, notes: list[str]) -> dict[str, Any]:
    if not path.is_file():
        notes.append(f"{path.name} is missing: final metrics come from csv/metrics.csv where logged.")
        return {}
    try:
        loaded = json.loads(path.read_text())
    except (json.JSONDecodeError, OSError, UnicodeDecodeError) as error:
        notes.append(f"{path.name} could not be read ({error.__class__.__name__}).")
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _lookup(config: dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


# ---- formatting ------------------------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        number = float(value)
        if not math.isfinite(number):
            return "—"
        return str(int(number)) if isinstance(value, int) else f"{number:.{digits}f}"
    return str(value)


def _table(rows: Iterable[Sequence[str]], header: Sequence[str] | None = None, raw: bool = False) -> str:
    """An HTML table; cells are escaped unless ``raw`` (callers then escape what they put in)."""

    def cell(text: str, tag: str) -> str:
        return f"<{tag}>{text if raw else html.escape(text)}</{tag}>"

    parts = ["<table>"]
    if header:
        parts.append("<tr>" + "".join(cell(h, "th") for h in header) + "</tr>")
    parts.extend("<tr>" + "".join(cell(c, "td") for c in row) + "</tr>" for row in rows)
    parts.append("</table>")
    return "\n".join(parts)


# ---- figures ---------------------------------------------------------------------------------------------------


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(figure)  # render with Agg whatever backend pyplot may have selected
    return figure


def _save(figure: Figure, path: Path) -> Path:
    for axis in figure.axes:
        if axis.get_xlabel() in ("epoch", "training epoch", "training step"):
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    with atomic_path(path) as temp:
        figure.savefig(temp, format="png", dpi=_DPI)
    return path


def _loss_figure(log: _MetricsLog, path: Path) -> str:
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
    figure = _new_figure(11 if term_series else 6.5, 4)
    axis = figure.add_subplot(1, 2 if term_series else 1, 1)
    if steps.size:
        axis.plot(steps, step_loss, lw=0.8, alpha=0.6, label="per step")
    if epoch_x.size:
        axis.plot(epoch_x, epoch_loss, marker="o", lw=1.8, label="epoch mean")
    axis.set_xlabel(f"training {x}")
    axis.set_ylabel("loss")
    axis.set_title("Training loss")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    if term_series:
        parts = figure.add_subplot(1, 2, 2)
        for column, (xs, ys) in term_series.items():
            parts.plot(xs, ys, marker=".", label=column.removeprefix("train/"))
        parts.set_xlabel("epoch")
        parts.set_title("Loss terms (epoch mean)")
        parts.grid(alpha=0.3)
        parts.legend(fontsize=7, ncol=2)
    _save(figure, path)
    return f"Loss by {x}" + (f"; {len(term_series)} loss terms per epoch." if term_series else ".")


def _map_figure(log: _MetricsLog | None, test_map: float | None, path: Path) -> str:
    epochs, val_map = log.series("val/mAP") if log else (np.array([]), np.array([]))
    has_test = test_map is not None and math.isfinite(test_map)
    if not epochs.size and not has_test:
        return ""
    figure = _new_figure(6.5, 4)
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
    axis.set_xlabel("epoch")
    axis.set_ylabel("mAP (%)")
    axis.set_title("mAP")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    _save(figure, path)
    text = "; ".join(caption)
    return text[:1].upper() + text[1:] + "."


def _per_class_figure(per_class: dict[str, float], path: Path) -> None:
    ordered = sorted(per_class.items(), key=lambda item: item[1])  # barh draws bottom-up: best class on top
    names = [name for name, _ in ordered]
    values = np.array([value for _, value in ordered], dtype=float)
    figure = _new_figure(7, max(2.5, 0.6 + 0.19 * len(names)))
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
    _save(figure, path)


def _threshold_figure(log: _MetricsLog, pseudo_epoch: Any, path: Path) -> str:
    curves = {
        label: log.series(f"method/{kind}_threshold")
        for kind, label in _PSEUDO_KINDS
        if log.has(f"method/{kind}_threshold")
    }
    curves = {label: s for label, s in curves.items() if s[0].size}
    if not curves:
        return ""
    figure = _new_figure(6.5, 4)
    axis = figure.add_subplot()
    for label, (epochs, values) in curves.items():
        axis.plot(epochs, values, marker="o", label=f"{label} threshold")
    if isinstance(pseudo_epoch, int):
        axis.axvline(pseudo_epoch, color="grey", ls=":", lw=1, label="pseudo labels start")
    axis.set_xlabel("epoch")
    axis.set_ylabel("threshold")
    axis.set_title("Learned thresholds")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    _save(figure, path)
    return ", ".join(f"{label}: {values[0]:.3f} → {values[-1]:.3f}" for label, (_, values) in curves.items()) + "."


def _ratio(log: _MetricsLog, numerator: str, denominator: str) -> tuple[np.ndarray, np.ndarray]:
    """numerator/denominator per epoch, only where both were logged and the denominator is positive."""
    num_x, num = log.series(numerator)
    den = dict(zip(*log.series(denominator), strict=True))
    pairs = [(x, 100.0 * n / den[x]) for x, n in zip(num_x, num, strict=True) if den.get(x, 0.0) > 0]
    return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])


_SOURCE_COLORS = {"classifier": "C0", "ist": "C1", "cst": "C2"}
_CALIBRATED_SOURCES = (
    ("all", "used for training"), ("classifier", "classifier"), ("ist", "IST"), ("cst", "CST")
)


def _calibrated_pseudo_figure(log: _MetricsLog, path: Path) -> str:
    """Calibrated HST: per source and polarity, count / precision / recall against the full training labels."""
    prefix = "method/pseudo_{}_{}_{}"
    sources = [(k, label) for k, label in _CALIBRATED_SOURCES if log.has(prefix.format(k, "pos", "count"))]
    if not sources:
        return ""
    figure = _new_figure(12, 6.8)
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
            axis = axes[row, column]
            axis.set_title(title, fontsize=10)
            axis.set_xlabel("epoch")
            axis.set_ylabel(unit)
            axis.grid(alpha=0.3)
            if axis.get_legend_handles_labels()[0]:
                axis.legend(fontsize=7)
    _save(figure, path)
    last = [log.series(prefix.format("all", polarity, "count"))[1] for polarity in ("pos", "neg")]
    counts = " and ".join(f"{int(v[-1])}" for v in last if v.size)
    return (
        "Calibrated pseudo labels of each evidence source (what it alone would assign) and of their combination "
        f"(black: what training used; last epoch: {counts or '—'} positives, negatives), scored against the full "
        "training labels."
    )


def _pseudo_figure(log: _MetricsLog, path: Path) -> str:
    if log.has("method/pseudo_all_pos_count"):
        return _calibrated_pseudo_figure(log, path)
    prefix = "method/epoch_{}_pseudo_{}"
    kinds = [(k, label) for k, label in _PSEUDO_KINDS if log.has(prefix.format(k, "count"))]
    if not kinds:
        return ""
    figure = _new_figure(12, 3.8)
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
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("epoch")
        axis.set_ylabel(unit)
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
    _save(figure, path)
    caption = "Pseudo positives of " + " and ".join(label for _, label in kinds) + "."
    if undefined:
        caption += " Undefined (zero denominator) and left out: " + "; ".join(undefined) + "."
    return caption


# ---- run page --------------------------------------------------------------------------------------------------


_CONFIG_FIELDS = (
    ("method", "method.name"),
    ("backbone", "model.backbone"),
    ("head", "model.head"),
    ("trainable", "model.trainable"),
    ("training data", "data.train"),
    ("test data", "data.test"),
    ("partial labels", "data.partial_labels"),
    ("known proportion", "data.proportion"),
    ("label scheme", "data.scheme"),
    ("image size", "data.image_size"),
    ("batch size", "data.batch_size"),
    ("epochs", "trainer.epochs"),
    ("pseudo labels from epoch", "method.pseudo_label_epoch"),
    ("seed", "trainer.seed"),
)


def _final_metrics(metrics: dict[str, Any], log: _MetricsLog | None) -> dict[str, float | None]:
    test = metrics.get("test") if isinstance(metrics.get("test"), dict) else {}
    assert isinstance(test, dict)
    final: dict[str, float | None] = {}
    for name in ("mAP", "OF1", "CF1"):
        value = test.get(name)
        if not isinstance(value, (int, float)) and log is not None and log.has(f"test/{name}"):
            value = float(log.series(f"test/{name}")[1][-1])
        final[name] = float(value) if isinstance(value, (int, float)) else None
    return final


def _run_header(run_dir: Path, config: dict[str, Any], final: dict[str, float | None]) -> str:
    rows = []
    for label, key in _CONFIG_FIELDS:
        value = _lookup(config, key)
        if key == "data.test" and value is None and config:
            fraction = _lookup(config, "data.test_fraction")
            value = f"{_fmt(fraction)} of the training source" if fraction is not None else None
        if key == "data.partial_labels" and value is None:
            continue
        if key == "data.proportion" and isinstance(value, (int, float)):
            value = f"{float(value):.0%}"
        if value is not None:
            rows.append((label, _fmt(value)))
    metric_rows = [(f"test {name}", _fmt(value)) for name, value in final.items()]
    config_html = _table(rows) if rows else "<p>No config available.</p>"
    return (
        f"<p class='path'>{html.escape(str(run_dir))}</p>\n<div class='header'>"
        f"<div><h2>Config</h2>{config_html}</div>"
        f"<div><h2>Final test metrics (%)</h2>{_table(metric_rows)}</div></div>"
    )


def _run_page(run_dir: Path, out_dir: Path) -> _Page:
    notes: list[str] = []
    config = _read_yaml(run_dir / "config.yaml", notes)
    metrics = _read_json(run_dir / "metrics.json", notes)
    log: _MetricsLog | None = None
    csv_path = run_dir / "csv" / "metrics.csv"
    if csv_path.is_file():
        try:
            log = _MetricsLog.read(csv_path)
        except (OSError, UnicodeDecodeError, csv.Error) as error:
            notes.append(f"csv/metrics.csv could not be read ({error.__class__.__name__}).")
    else:
        notes.append("csv/metrics.csv is missing: no training curves.")
    final = _final_metrics(metrics, log)
    test = metrics.get("test") if isinstance(metrics.get("test"), dict) else {}
    assert isinstance(test, dict)

    sections: list[_Section] = []

    def add(key: str, title: str, caption: str, reason: str) -> None:
        path = out_dir / FIGURE_FILES[key]
        sections.append(_Section(key, title, path if caption else None, caption, "" if caption else reason))

    no_csv = "no csv/metrics.csv"
    add(
        "loss",
        "Training loss",
        _loss_figure(log, out_dir / FIGURE_FILES["loss"]) if log else "",
        "no train/loss_step or train/loss_epoch in csv/metrics.csv" if log else no_csv,
    )
    add(
        "map",
        "mAP",
        _map_figure(log, final["mAP"], out_dir / FIGURE_FILES["map"]),
        "no val/mAP in csv/metrics.csv and no test mAP",
    )

    per_class = test.get("per_class_AP")
    per_class = (
        {str(k): float(v) for k, v in per_class.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        if isinstance(per_class, dict)
        else {}
    )
    if per_class:
        _per_class_figure(per_class, out_dir / FIGURE_FILES["per_class_ap"])
        skipped = test.get("skipped_classes") or []
        caption = f"{len(per_class)} classes, sorted by AP."
        if skipped:
            caption += f" No positive in the test set, left out ({len(skipped)}): {', '.join(map(str, skipped))}."
        add("per_class_ap", "Per-class test AP", caption, "")
    else:
        add("per_class_ap", "Per-class test AP", "", "metrics.json has no test per_class_AP")

    pseudo_epoch = _lookup(config, "method.pseudo_label_epoch")
    add(
        "thresholds",
        "Learned thresholds",
        _threshold_figure(log, pseudo_epoch, out_dir / FIGURE_FILES["thresholds"]) if log else "",
        "no method/intra_threshold or method/inter_threshold in csv/metrics.csv (method without thresholds?)"
        if log
        else no_csv,
    )
    add(
        "pseudo_labels",
        "Pseudo labels",
        _pseudo_figure(log, out_dir / FIGURE_FILES["pseudo_labels"]) if log else "",
        "no method/epoch_*_pseudo_count in csv/metrics.csv (method without pseudo labels?)" if log else no_csv,
    )

    extra = ""
    summary = run_dir / "summary.txt"
    if summary.is_file():
        extra = f"<h2>Summary</h2><pre>{html.escape(summary.read_text(errors='replace'))}</pre>"
    method = _lookup(config, "method.name")
    title = f"Run report: {run_dir.name}" + (f" ({method})" if method else "")
    return _Page(title, _run_header(run_dir, config, final), sections, extra, notes)


# ---- benchmark page --------------------------------------------------------------------------------------------


@dataclass
class _Result:
    method: str
    proportion: float
    seed: str
    test_map: float
    raw: dict[str, str]


def _read_results(path: Path) -> tuple[list[str], list[_Result]]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = list(reader.fieldnames or [])
        missing = [c for c in RESULT_COLUMNS if c not in columns]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (has: {', '.join(columns) or 'none'})")
        results = []
        for row in reader:
            line = reader.line_num
            values = {}
            for column in ("proportion", "test_mAP"):
                text = (row.get(column) or "").strip()
                try:
                    values[column] = float(text) if text else math.nan
                except ValueError:
                    raise ValueError(f"{path}, line {line}: {column} {text!r} is not a number") from None
            if not math.isfinite(values["proportion"]):
                raise ValueError(f"{path}, line {line}: proportion is empty")
            clean = {k: (v or "") for k, v in row.items() if k is not None}
            results.append(
                _Result(clean["method"], values["proportion"], clean.get("seed", ""), values["test_mAP"], clean)
            )
    return columns, results


def _aggregate(results: Sequence[_Result]) -> dict[str, dict[float, np.ndarray]]:
    """method → proportion → finite test mAPs over seeds, in first-seen method order."""
    table: dict[str, dict[float, list[float]]] = {}
    for r in results:
        cell = table.setdefault(r.method, {}).setdefault(r.proportion, [])
        if math.isfinite(r.test_map):
            cell.append(r.test_map)
    return {m: {p: np.array(v) for p, v in sorted(cells.items())} for m, cells in table.items()}


def _proportion_figure(table: dict[str, dict[float, np.ndarray]], path: Path) -> str:
    if not any(values.size for cells in table.values() for values in cells.values()):
        return ""
    figure = _new_figure(7, 4.5)
    axis = figure.add_subplot()
    for method, cells in table.items():
        points = [(p * 100, v.mean(), v.min(), v.max()) for p, v in cells.items() if v.size]
        if not points:
            continue
        xs, means, lows, highs = (np.array(c) for c in zip(*points, strict=True))
        (line,) = axis.plot(xs, means, marker="o", label=method)
        axis.fill_between(xs, lows, highs, color=line.get_color(), alpha=0.15, lw=0)
    axis.set_xlabel("known labels (%)")
    axis.set_ylabel("test mAP (%)")
    axis.set_title("Test mAP vs known-label proportion (mean over seeds, min–max shaded)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    _save(figure, path)
    return f"{len(table)} method(s); line = mean over seeds, band = min–max over seeds."


def _resolve_run(bench_dir: Path, text: str) -> Path | None:
    """A run_dir cell as written by the benchmark (maybe relative to where it ran) → the run on disk."""
    if not text:
        return None
    given = Path(text)
    for candidate in (given, bench_dir / given, bench_dir / "runs" / given.name):
        if candidate.is_dir():
            return candidate
    return None


def _benchmark_page(bench_dir: Path, out_dir: Path) -> _Page:
    columns, results = _read_results(bench_dir / "results.csv")
    table = _aggregate(results)
    proportions = sorted({r.proportion for r in results})
    seeds = sorted({r.seed for r in results})
    header = f"<p class='path'>{html.escape(str(bench_dir))}</p>\n" + _table(
        [
            ("finished cells", str(len(results))),
            ("methods", ", ".join(table) or "—"),
            ("known proportions", ", ".join(f"{p:.0%}" for p in proportions) or "—"),
            ("seeds", ", ".join(seeds) or "—"),
        ]
    )
    path = out_dir / FIGURE_FILES["map_vs_proportion"]
    caption = _proportion_figure(table, path)
    sections = [
        _Section(
            "map_vs_proportion",
            "Test mAP vs known proportion",
            path if caption else None,
            caption,
            "" if caption else "results.csv has no finished cell with a test mAP",
        )
    ]

    summary_rows = []
    for method, cells in table.items():
        row = [method]
        for proportion in proportions:
            values = cells.get(proportion, np.array([]))
            spread = f" ± {values.std(ddof=1):.1f}" if values.size > 1 else ""
            row.append(f"{values.mean():.1f}{spread} (n={values.size})" if values.size else "—")
        summary_rows.append(row)
    summary = _table(summary_rows, ["method", *(f"{p:.0%}" for p in proportions)])

    detail_rows = []
    for r in results:
        cells = [html.escape(r.raw.get(c, "")) for c in columns]
        run = _resolve_run(bench_dir, r.raw.get("run_dir", ""))
        sub_report = run / "report" / REPORT_FILE if run else None
        if sub_report and sub_report.is_file() and "run_dir" in columns:
            link = html.escape(Path(os.path.relpath(sub_report, out_dir)).as_posix())
            cells[columns.index("run_dir")] = f"<a href='{link}'>{html.escape(run.name if run else '')}</a>"
        detail_rows.append(cells)
    details = _table(detail_rows, [html.escape(c) for c in columns], raw=True)
    extra = (
        "<h2>Results: test mAP (%), mean ± sample std over seeds</h2>"
        + summary
        + f"<details><summary>All {len(results)} rows of results.csv</summary>{details}</details>"
    )
    notes = [] if (bench_dir / "runs").is_dir() else ["runs/ is missing: no per-run links."]
    return _Page(f"Benchmark report: {bench_dir.resolve().name}", header, sections, extra, notes)


# ---- page ------------------------------------------------------------------------------------------------------


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1250px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 1.2em; }
.path { color: #666; font-family: monospace; }
.header { display: flex; gap: 3em; flex-wrap: wrap; }
table { border-collapse: collapse; font-size: 0.9em; }
td, th { border: 1px solid #ddd; padding: 0.2em 0.6em; text-align: left; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #444; font-size: 0.9em; }
.skipped { color: #a60; } .note { color: #666; font-size: 0.9em; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; }
"""

# Writes data-figures-loaded="<loaded>/<total>" on <body> once every image has had its chance to load.
_SCRIPT = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var loaded = images.filter(function (image) { return image.complete && image.naturalWidth > 0; }).length;
  document.body.setAttribute("data-figures-loaded", loaded + "/" + images.length);
});
"""


def _figure_html(section: _Section) -> str:
    if section.path is None:
        return f"<p class='skipped'>Figure skipped: {html.escape(section.title)}: {html.escape(section.skipped)}.</p>"
    data = base64.b64encode(section.path.read_bytes()).decode("ascii")
    name = html.escape(section.path.name)
    return (
        f"<figure id='fig-{section.key}'><h2>{html.escape(section.title)}</h2>"
        f"<img src='data:image/png;base64,{data}' alt='{html.escape(section.title)}'>"
        f"<figcaption>{html.escape(section.caption)} <a href='{name}'>{name}</a></figcaption></figure>"
    )


def _render(page: _Page) -> str:
    figures = sum(1 for s in page.sections if s.path is not None)
    notes = "".join(f"<p class='note'>{html.escape(n)}</p>" for n in page.notes)
    return (
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
        f"<title>{html.escape(page.title)}</title>\n<style>{_STYLE}</style>\n<script>{_SCRIPT}</script>\n</head>\n"
        f"<body data-figures='{figures}'>\n<h1>{html.escape(page.title)}</h1>\n{page.header_html}\n{notes}\n"
        + "\n".join(_figure_html(s) for s in page.sections)
        + f"\n{page.extra_html}\n</body>\n</html>\n"
    )


def _kind(run_dir: Path) -> str:
    if not run_dir.exists():
        raise FileNotFoundError(f"{run_dir}: no such directory")
    if not run_dir.is_dir():
        raise ValueError(f"{run_dir}: not a directory (expected a run or benchmark directory)")
    if (run_dir / "results.csv").is_file():
        return "benchmark"
    if (run_dir / "config.yaml").is_file() or (run_dir / "csv" / "metrics.csv").is_file():
        return "run"
    raise FileNotFoundError(
        f"{run_dir}: not a run directory (no config.yaml or csv/metrics.csv) "
        "and not a benchmark directory (no results.csv)"
    )


def build_report(run_dir: Path, out_dir: Path | None = None) -> Path:
    """Write ``report.html`` and its PNG figures for a run or benchmark directory; return the HTML's path.

    ``out_dir`` defaults to ``run_dir / "report"``. Raises FileNotFoundError or ValueError (naming the path and
    what is missing or wrong) when ``run_dir`` is neither a run directory nor a benchmark directory.
    """
    run_dir = Path(run_dir)
    kind = _kind(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    page = _benchmark_page(run_dir, out_dir) if kind == "benchmark" else _run_page(run_dir, out_dir)
    written = {s.path for s in page.sections if s.path is not None}
    for name in FIGURE_FILES.values():
        # A figure of an earlier report that this one left out would otherwise sit beside the page, stale.
        if out_dir / name not in written:
            (out_dir / name).unlink(missing_ok=True)
    target = out_dir / REPORT_FILE
    write_text_atomic(target, _render(page))
    return target
