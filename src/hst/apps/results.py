"""The benchmark's ``results.csv``: its columns, the one reader, the aggregation over seeds and its figure.

``hst benchmark`` writes it (one row per finished cell) and summarises it; ``hst report`` of a benchmark
folder reads it again. Both go through :func:`read_results_table` and :func:`aggregate`.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hst.apps.report_figures import new_figure, save_figure, style_axis
from hst.io import atomic_write

RESULTS_FILE = "results.csv"
RESULT_COLUMNS = ("method", "proportion", "test_mAP")
"""Columns a results table must have to be summarised."""


@dataclass
class Result:
    """One finished cell: a method trained at a known-label proportion with one seed."""

    method: str
    """The method's name, with its diagnostic marker (:func:`method_label`)."""
    proportion: float
    seed: str
    test_map: float
    raw: dict[str, str]


FIELDS = [
    "method",
    "proportion",
    "seed",
    "test_mAP",
    "test_OF1",
    "test_CF1",
    "val_mAP",
    "seconds",
    "run_dir",
    "chosen",
    "diagnostic",
]
"""``diagnostic``: the diagnostic options the cell trained with (``hst.apps.diagnostics``), empty for a result."""


def method_label(row: Mapping[str, str | None]) -> str:
    """The row's method, suffixed ``[diagnostic: …]`` when it trained with diagnostic options."""
    marker = (row.get("diagnostic") or "").strip()
    method = row.get("method") or ""
    return f"{method} [diagnostic: {marker}]" if marker else method


def read_results(path: Path) -> list[dict[str, str]]:
    """The raw rows of ``path`` (none when it does not exist yet): what a resumed benchmark keeps."""
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def write_results(path: Path, rows: list[dict[str, str]]) -> None:
    """Write ``rows`` under :data:`FIELDS`, atomically."""
    with atomic_write(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS, restval="", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def parse_results(rows: Sequence[dict[str, str | None]], where: str) -> list[Result]:
    """Rows of a results table as :class:`Result` (an empty ``test_mAP`` is NaN); errors name ``where``'s line."""
    results = []
    for line, row in enumerate(rows, start=2):
        values = {}
        for column in ("proportion", "test_mAP"):
            text = (row.get(column) or "").strip()
            try:
                values[column] = float(text) if text else math.nan
            except ValueError:
                raise ValueError(f"{where}, line {line}: {column} {text!r} is not a number") from None
        if not math.isfinite(values["proportion"]):
            raise ValueError(f"{where}, line {line}: proportion is empty")
        clean = {k: (v or "") for k, v in row.items() if k is not None}
        # Diagnostic rows carry their marker in the method: every table and figure keeps them apart.
        results.append(
            Result(method_label(clean), values["proportion"], clean.get("seed", ""), values["test_mAP"], clean)
        )
    return results


def read_results_table(path: Path) -> tuple[list[str], list[Result]]:
    """The columns and rows of a results table; an error names a missing column or the line of a bad number."""
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = list(reader.fieldnames or [])
        missing = [c for c in RESULT_COLUMNS if c not in columns]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (has: {', '.join(columns) or 'none'})")
        rows = list(reader)
    return columns, parse_results(rows, str(path))


def aggregate(results: Sequence[Result]) -> dict[str, dict[float, np.ndarray]]:
    """method → proportion → finite test mAPs over seeds, in first-seen method order."""
    table: dict[str, dict[float, list[float]]] = {}
    for r in results:
        cell = table.setdefault(r.method, {}).setdefault(r.proportion, [])
        if math.isfinite(r.test_map):
            cell.append(r.test_map)
    return {m: {p: np.array(v) for p, v in sorted(cells.items())} for m, cells in table.items()}


def cell_values(table: dict[str, dict[float, np.ndarray]], method: str, proportion: float) -> np.ndarray:
    """The test mAPs of one (method, proportion) cell of :func:`aggregate`'s table (empty when none)."""
    for known, values in table.get(method, {}).items():
        if abs(known - proportion) < 1e-9:
            return values
    return np.array([])


def proportion_figure(table: dict[str, dict[float, np.ndarray]], path: Path, always: bool = False) -> str:
    """Test mAP against the known-label proportion, one line per method; the caption, or "" when there is
    nothing to draw (no file is written then, unless ``always``)."""
    if not always and not any(values.size for cells in table.values() for values in cells.values()):
        return ""
    figure = new_figure(7, 4.5)
    axis = figure.add_subplot()
    for method, cells in table.items():
        points = [(p * 100, v.mean(), v.min(), v.max()) for p, v in cells.items() if v.size]
        if not points:
            continue
        xs, means, lows, highs = (np.array(c) for c in zip(*points, strict=True))
        (line,) = axis.plot(xs, means, marker="o", label=method)
        axis.fill_between(xs, lows, highs, color=line.get_color(), alpha=0.15, lw=0)
    style_axis(
        axis, "known labels (%)", "test mAP (%)", "Test mAP vs known-label proportion (mean over seeds, min–max shaded)"
    )
    save_figure(figure, path)
    return f"{len(table)} method(s); line = mean over seeds, band = min–max over seeds."
