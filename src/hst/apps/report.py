"""``hst report``: one self-contained HTML page of a run's (or a benchmark's) curves, metrics and config.

A run directory holds ``config.yaml``, ``metrics.json``, ``summary.txt`` and ``csv/metrics.csv``; a benchmark
directory holds ``results.csv`` (and ``runs/``); an ``hst simulate-review`` folder holds ``POLICY-sSEED/rounds.csv``
(:mod:`hst.apps.report_review`). The page embeds every figure as a base64 PNG so that the single
``report.html`` still works when moved; the PNG files are written beside it and linked too.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from hst.apps.report_figures import (
    MetricsLog,
    loss_figure,
    map_figure,
    per_class_figure,
    pseudo_figure,
    threshold_figure,
)
from hst.apps.report_review import TABLE_FILES, is_review_folder, review_report
from hst.apps.results import aggregate, proportion_figure, read_results_table
from hst.io import write_text_atomic

REPORT_FILE = "report.html"
FIGURE_FILES = {
    "loss": "loss.png",
    "map": "map.png",
    "per_class_ap": "per_class_ap.png",
    "thresholds": "thresholds.png",
    "pseudo_labels": "pseudo_labels.png",
    "map_vs_proportion": "map_vs_proportion.png",
    "review_curve": "review_curve.png",
}


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


def _parse_file(path: Path, parse: Callable[[str], Any], errors: tuple[type[Exception], ...]) -> tuple[Any, str]:
    """(what ``parse`` made of the file, ""), or (None, why not: "is missing" / "could not be read (Error)")."""
    if not path.is_file():
        return None, "is missing"
    try:
        return parse(path.read_text()), ""
    except (*errors, OSError, UnicodeDecodeError) as error:
        return None, f"could not be read ({error.__class__.__name__})"


def _read_yaml(path: Path, notes: list[str]) -> dict[str, Any]:
    loaded, problem = _parse_file(path, yaml.safe_load, (yaml.YAMLError,))
    if not problem and not isinstance(loaded, dict):
        problem = "is not a mapping"
    if problem:
        notes.append(f"{path.name} {problem}: no config shown.")
        return {}
    return loaded


def _read_json(path: Path, notes: list[str]) -> dict[str, Any]:
    loaded, problem = _parse_file(path, json.loads, (json.JSONDecodeError,))
    if problem == "is missing":
        notes.append(f"{path.name} is missing: final metrics come from csv/metrics.csv where logged.")
    elif problem:
        notes.append(f"{path.name} {problem}.")
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


def _final_metrics(metrics: dict[str, Any], log: MetricsLog | None) -> dict[str, float | None]:
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
    log: MetricsLog | None = None
    csv_path = run_dir / "csv" / "metrics.csv"
    if csv_path.is_file():
        try:
            log = MetricsLog.read(csv_path)
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
        loss_figure(log, out_dir / FIGURE_FILES["loss"]) if log else "",
        "no train/loss_step or train/loss_epoch in csv/metrics.csv" if log else no_csv,
    )
    add(
        "map",
        "mAP",
        map_figure(log, final["mAP"], out_dir / FIGURE_FILES["map"]),
        "no val/mAP in csv/metrics.csv and no test mAP",
    )

    per_class = test.get("per_class_AP")
    per_class = (
        {str(k): float(v) for k, v in per_class.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        if isinstance(per_class, dict)
        else {}
    )
    if per_class:
        per_class_figure(per_class, out_dir / FIGURE_FILES["per_class_ap"])
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
        "Pseudo-label thresholds",
        threshold_figure(log, pseudo_epoch, out_dir / FIGURE_FILES["thresholds"]) if log else "",
        "no method/intra_threshold or method/inter_threshold in csv/metrics.csv (method without thresholds?)"
        if log
        else no_csv,
    )
    add(
        "pseudo_labels",
        "Pseudo labels",
        pseudo_figure(log, out_dir / FIGURE_FILES["pseudo_labels"]) if log else "",
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
    columns, results = read_results_table(bench_dir / "results.csv")
    table = aggregate(results)
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
    caption = proportion_figure(table, path)
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


def _review_page(folder: Path, out_dir: Path, entries: int | None, start: float | None) -> _Page:
    path = out_dir / FIGURE_FILES["review_curve"]
    review = review_report(folder, path, entries, start)
    header = f"<p class='path'>{html.escape(str(folder))}</p>\n" + _table(review.facts)
    section = _Section("review_curve", "Test mAP vs answers, per question policy", path, review.caption)
    extra = "".join(f"<h2>{html.escape(title)}</h2>" + _table(rows, head) for title, head, rows in review.tables)
    return _Page(f"Review simulation report: {folder.resolve().name}", header, [section], extra, review.notes)


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
    if is_review_folder(run_dir):
        return "review"
    if (run_dir / "config.yaml").is_file() or (run_dir / "csv" / "metrics.csv").is_file():
        return "run"
    raise FileNotFoundError(
        f"{run_dir}: not a run directory (no config.yaml or csv/metrics.csv) "
        "nor a benchmark directory (no results.csv) nor an hst simulate-review folder (no POLICY-sSEED/rounds.csv)"
    )


def build_report(
    run_dir: Path, out_dir: Path | None = None, entries: int | None = None, start_proportion: float | None = None
) -> Path:
    """Write ``report.html`` and its PNG figures for a run, benchmark or simulate-review folder; return the HTML's
    path. ``entries`` and ``start_proportion`` place a simulate-review folder's random-proportion curve (see
    :mod:`hst.apps.report_review`); other folders ignore them.

    ``out_dir`` defaults to ``run_dir / "report"``. Raises FileNotFoundError or ValueError (naming the path and
    what is missing or wrong) when ``run_dir`` is neither a run directory nor a benchmark directory.
    """
    run_dir = Path(run_dir)
    kind = _kind(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    if kind == "review":
        page = _review_page(run_dir, out_dir, entries, start_proportion)
    else:
        page = _benchmark_page(run_dir, out_dir) if kind == "benchmark" else _run_page(run_dir, out_dir)
        for name in TABLE_FILES:
            (out_dir / name).unlink(missing_ok=True)  # a review table of an earlier report would sit there, stale
    written = {s.path for s in page.sections if s.path is not None}
    for name in FIGURE_FILES.values():
        # A figure of an earlier report that this one left out would otherwise sit beside the page, stale.
        if out_dir / name not in written:
            (out_dir / name).unlink(missing_ok=True)
    target = out_dir / REPORT_FILE
    write_text_atomic(target, _render(page))
    return target
