"""``hst report`` of an ``hst simulate-review`` folder: test mAP against answers for every question policy, with the
curve of random known proportions (``curve.csv``) on the same axes, as the exchange rate.

A folder holds one run per policy and seed, ``POLICY-sSEED/rounds.csv`` as simulate-review writes it or
``POLICY-sSEED.rounds.csv`` as copied flat into the docs, and maybe ``curve.csv``. The curve's point at proportion p
sits at x = (p − p0) × entries: the known entries it has beyond the runs' starting proportion p0, the count an
answer is compared with. ``entries`` (training images × classes) and ``p0`` come from the options, else from
``rounds.json``, else (p0 only) from the curve row whose model is the runs' round 0.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hst.apps.report_figures import new_figure, save_figure, style_axis
from hst.io import write_text_atomic

ROUNDS_FILE = "rounds.csv"
CURVE_FILE = "curve.csv"
TABLE_FILES = ("review_curve.md", "review_curve.csv")
ROUND_COLUMNS = ("round", "answers", "test_mAP")
CURVE_COLUMNS = ("proportion", "seed", "test_mAP")
_RUN = re.compile(r"^(?P<policy>.+)-s(?P<seed>\d+)$")
_FLAT_SUFFIX = "." + ROUNDS_FILE
# The curve's round 0 and a run's round 0 are the same model when p0 matches; csv cells carry 4 decimals.
_SAME_MODEL = 1e-3


def read_numeric_csv(path: Path, required: Sequence[str]) -> list[dict[str, float]]:
    """The rows of ``path`` as floats; a ValueError naming the file and the column when one is missing or a
    cell is not a number."""
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        missing = [c for c in required if c not in columns]
        if missing:
            raise ValueError(f"{path}: no column {', '.join(missing)} (columns: {', '.join(columns) or 'none'})")
        rows = []
        for line, raw in enumerate(reader, start=2):
            row = {}
            for column in required:
                try:
                    row[column] = float(raw[column] or "nan")
                except ValueError:
                    raise ValueError(f"{path}, line {line}: column {column} is not a number: {raw[column]!r}") from None
            rows.append(row)
    return rows


def run_files(folder: Path) -> dict[tuple[str, int], Path]:
    """(policy, seed) → its rounds.csv, in either layout."""
    found: dict[tuple[str, int], Path] = {}
    candidates = [(p.parent.name, p) for p in folder.glob(f"*/{ROUNDS_FILE}")]
    candidates += [(p.name.removesuffix(_FLAT_SUFFIX), p) for p in folder.glob(f"*{_FLAT_SUFFIX}")]
    for name, path in sorted(candidates):
        match = _RUN.match(name)
        if match and path.is_file():
            found[(match["policy"], int(match["seed"]))] = path
    return found


def is_review_folder(folder: Path) -> bool:
    return bool(run_files(folder))


@dataclass
class Run:
    policy: str
    seed: int
    answers: np.ndarray
    test_map: np.ndarray
    meta: dict[str, Any]


@dataclass
class PolicyCurve:
    """One policy: per round, the mean answers and the mean ± standard error of test mAP over its seeds."""

    policy: str
    seeds: list[int]
    answers: np.ndarray
    mean: np.ndarray
    se: np.ndarray
    final_answers: float
    final_mean: float
    final_se: float


@dataclass
class CurvePoint:
    proportion: float
    extra_entries: float
    seeds: int
    mean: float
    se: float


@dataclass
class ReviewReport:
    facts: list[tuple[str, str]]
    caption: str
    tables: list[tuple[str, list[str], list[list[str]]]]
    notes: list[str] = field(default_factory=list)


def _mean_se(values: Sequence[float]) -> tuple[float, float]:
    array = np.asarray(values, dtype=float)
    se = float(array.std(ddof=1) / math.sqrt(array.size)) if array.size > 1 else float("nan")
    return float(array.mean()), se


def read_runs(folder: Path) -> list[Run]:
    runs = []
    for (policy, seed), path in run_files(folder).items():
        rows = sorted(read_numeric_csv(path, ROUND_COLUMNS), key=lambda r: r["round"])
        if not rows:
            raise ValueError(f"{path}: no rounds")
        meta_path = path.with_name("rounds.json")
        meta: dict[str, Any] = {}
        if path.name == ROUNDS_FILE and meta_path.is_file():
            try:
                meta = json.loads(meta_path.read_text())
            except json.JSONDecodeError as error:
                raise ValueError(f"{meta_path}: not JSON ({error})") from None
        answers = np.array([r["answers"] for r in rows])
        runs.append(Run(policy, seed, answers, np.array([r["test_mAP"] for r in rows]), meta))
    return runs


def policy_curves(runs: list[Run]) -> list[PolicyCurve]:
    """Per policy, rounds aggregated by index over the seeds that reached them; best final mean first."""
    by_policy: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_policy[run.policy].append(run)
    curves = []
    for policy, group in by_policy.items():
        rounds = max(len(r.answers) for r in group)
        answers, means, ses = [], [], []
        for index in range(rounds):
            present = [r for r in group if len(r.answers) > index]
            answers.append(float(np.mean([r.answers[index] for r in present])))
            mean, se = _mean_se([r.test_map[index] for r in present])
            means.append(mean)
            ses.append(se)
        final_mean, final_se = _mean_se([r.test_map[-1] for r in group])
        final_answers = float(np.mean([r.answers[-1] for r in group]))
        seeds = sorted(r.seed for r in group)
        curves.append(
            PolicyCurve(
                policy, seeds, np.array(answers), np.array(means), np.array(ses), final_answers, final_mean, final_se
            )
        )
    return sorted(curves, key=lambda c: -c.final_mean)


def start_proportion(runs: list[Run], curve: list[dict[str, float]], given: float | None) -> tuple[float | None, str]:
    """The runs' starting known proportion p0 and where it came from; (None, why not) when unknown."""
    if given is not None:
        return given, "given"
    stated = {r.meta.get("proportion") for r in runs if r.meta}
    if len(stated) == 1 and isinstance(next(iter(stated)), (int, float)):
        return float(next(iter(stated))), "rounds.json"
    # Same split, seed and proportion: the curve's model is the runs' round-0 model, so their test mAP agree.
    start = {r.seed: float(r.test_map[0]) for r in runs}
    for proportion in sorted({row["proportion"] for row in curve}):
        rows = {int(row["seed"]): row["test_mAP"] for row in curve if row["proportion"] == proportion}
        if set(start) <= set(rows) and all(abs(rows[s] - start[s]) < _SAME_MODEL for s in start):
            return proportion, "the curve point equal to round 0 for every seed"
    return None, "no --start-proportion, no proportion in rounds.json, and no curve point equal to round 0"


def training_entries(runs: list[Run], given: int | None) -> tuple[int | None, str]:
    if given is not None:
        return given, "given"
    stated = {r.meta.get("entries") for r in runs if r.meta}
    if len(stated) == 1 and isinstance(next(iter(stated)), int):
        return int(next(iter(stated))), "rounds.json"
    return None, "no --entries and no entries in rounds.json"


def curve_points(curve: list[dict[str, float]], start: float, entries: int) -> list[CurvePoint]:
    """Mean ± standard error of test mAP per proportion, at x = (p − p0) × entries."""
    points = []
    for proportion in sorted({row["proportion"] for row in curve}):
        mean, se = _mean_se([row["test_mAP"] for row in curve if row["proportion"] == proportion])
        seeds = sum(row["proportion"] == proportion for row in curve)
        points.append(CurvePoint(proportion, (proportion - start) * entries, seeds, mean, se))
    return points


def equivalent_proportion(points: list[CurvePoint], value: float) -> float | None:
    """Where the piecewise-linear curve of means first reaches ``value``; None outside its range."""
    for low, high in itertools.pairwise(points):
        if min(low.mean, high.mean) <= value <= max(low.mean, high.mean) and high.mean != low.mean:
            return low.proportion + (value - low.mean) / (high.mean - low.mean) * (high.proportion - low.proportion)
    return None


def review_figure(policies: list[PolicyCurve], points: list[CurvePoint], entries: int | None, path: Path) -> None:
    """Two panels of the same lines: the whole curve, and the range of the answers (curve points beyond it drawn
    as horizontal levels)."""
    figure = new_figure(12.5, 4.8)
    reach = max(float(c.answers.max()) for c in policies) or 1.0
    for axis, zoom in zip(figure.subplots(1, 2), (False, True), strict=True):
        for index, policy in enumerate(policies):
            color = f"C{index % 10}"
            label = f"{policy.policy} (seeds {','.join(map(str, policy.seeds))})"
            axis.plot(policy.answers, policy.mean, marker="o", ms=3, color=color, label=label)
            axis.fill_between(policy.answers, policy.mean - policy.se, policy.mean + policy.se, color=color, alpha=0.15)
        if points:
            xs, means, ses = ([getattr(p, k) for p in points] for k in ("extra_entries", "mean", "se"))
            axis.errorbar(xs, means, yerr=ses, color="black", ls="--", marker="s", ms=4, capsize=3,
                          label="random known proportions")  # fmt: skip
            for point in points:
                if zoom and point.extra_entries > 1.05 * reach:
                    axis.axhline(point.mean, color="grey", ls=":", lw=1)
                    axis.text(1.04 * reach, point.mean, f"random {point.proportion:.0%}", ha="right", va="bottom",
                              fontsize=7, color="dimgrey")  # fmt: skip
                else:
                    axis.annotate(f"{point.proportion:.0%}", (point.extra_entries, point.mean), fontsize=7,
                                  xytext=(4, -10), textcoords="offset points")  # fmt: skip
        if zoom:
            axis.set_xlim(-0.03 * reach, 1.05 * reach)
        if entries:
            top = axis.secondary_xaxis("top", functions=(lambda a: 100 * a / entries, lambda f: f * entries / 100))
            top.set_xlabel("% of all training entries", fontsize=8)
        title = "Answers' range" if zoom else "Whole curve"
        style_axis(axis, "answers (curve: known entries beyond the start)", "test mAP (%)", title)
        axis.legend(fontsize=7, title="mean over seeds, band / bars ± s.e.", title_fontsize=7)
    save_figure(figure, path)


def _pm(mean: float, se: float) -> str:
    return f"{mean:.2f} ± {se:.2f}" if math.isfinite(se) else f"{mean:.2f}"


def _worth(points: list[CurvePoint], policy: PolicyCurve, p0: float, entries: int) -> list[str]:
    """The random known proportion with the policy's final mAP, and the random entries one answer is worth; above
    the curve's last point both are lower bounds."""
    same = equivalent_proportion(points, policy.final_mean)
    above = same is None and policy.final_mean > points[-1].mean
    proportion = points[-1].proportion if above else same
    if proportion is None or not policy.final_answers:
        return ["—", "—"]
    worth = (proportion - p0) * entries / policy.final_answers
    bound = "> " if above else ""
    return [f"{bound}{proportion:.1%}", f"{bound}{worth:.1f}"]


def _markdown(tables: list[tuple[str, list[str], list[list[str]]]]) -> str:
    parts = []
    for title, header, rows in tables:
        lines = [f"| {' | '.join(header)} |", "|" + "---|" * len(header), *(f"| {' | '.join(r)} |" for r in rows)]
        parts.append(f"{title}\n\n" + "\n".join(lines) + "\n")
    return "\n".join(parts)


def review_report(
    folder: Path, figure_path: Path, entries: int | None = None, start: float | None = None
) -> ReviewReport:
    """Read the folder, draw the figure at ``figure_path`` and write the tables beside it (markdown and CSV)."""
    runs = read_runs(folder)
    curve_path = folder / CURVE_FILE
    curve = read_numeric_csv(curve_path, CURVE_COLUMNS) if curve_path.is_file() else []
    policies = policy_curves(runs)
    notes: list[str] = []
    p0, p0_source = start_proportion(runs, curve, start)
    count, count_source = training_entries(runs, entries)
    points: list[CurvePoint] = []
    if not curve:
        notes.append(f"{CURVE_FILE} is missing: no random-proportion curve.")
    elif p0 is None or count is None:
        reasons = "; ".join(why for value, why in ((p0, p0_source), (count, count_source)) if value is None)
        notes.append(f"The curve is left out: its x needs p0 and the training entries ({reasons}).")
    else:
        points = curve_points(curve, p0, count)
    review_figure(policies, points, count, figure_path)

    policy_rows = []
    for policy in policies:
        row = [policy.policy, str(len(policy.seeds)), f"{policy.final_answers:g}", _pm(policy.mean[0], policy.se[0])]
        row.append(_pm(policy.final_mean, policy.final_se))
        if points and p0 is not None and count is not None:
            row += _worth(points, policy, p0, count)
        policy_rows.append(row)
    policy_header = ["policy", "seeds", "answers", "test mAP at round 0", "test mAP at the final round"]
    if points:
        policy_header += ["random known with the same mAP", "worth of one answer (random entries)"]
    curve_rows = [[f"{p.proportion:.0%}", f"{p.extra_entries:.0f}", str(p.seeds), _pm(p.mean, p.se)] for p in points]
    curve_header = ["random known", "known entries beyond the start", "seeds", "test mAP"]
    tables = [("Policies (mean ± standard error over seeds)", policy_header, policy_rows)]
    if points:
        tables.append(("Random known proportions (mean ± standard error over seeds)", curve_header, curve_rows))
    out = figure_path.parent
    write_text_atomic(out / TABLE_FILES[0], _markdown(tables))
    csv_lines = ["series,answers,fraction_of_entries,seeds,test_mAP_mean,test_mAP_se"]
    for name, x, seeds, mean, se in [
        *((c.policy, c.final_answers, len(c.seeds), c.final_mean, c.final_se) for c in policies),
        *((f"random {p.proportion:g}", p.extra_entries, p.seeds, p.mean, p.se) for p in points),
    ]:
        fraction = f"{x / count:.6f}" if count else ""
        csv_lines.append(f"{name},{x:g},{fraction},{seeds},{mean:.4f},{se:.4f}")
    write_text_atomic(out / TABLE_FILES[1], "\n".join(csv_lines) + "\n")

    facts = [
        ("runs", str(len(runs))),
        ("policies", ", ".join(c.policy for c in policies)),
        ("starting known proportion", f"{p0:.0%} ({p0_source})" if p0 is not None else f"unknown: {p0_source}"),
        ("training entries", f"{count} ({count_source})" if count is not None else f"unknown: {count_source}"),
        ("curve points", ", ".join(f"{p.proportion:.0%}" for p in points) or "—"),
    ]
    caption = (
        "Test mAP (%) against answers, mean over seeds with ± one standard error (band; bars on the curve). "
        "The random-proportion curve sits at its known entries beyond the starting proportion, (p − p0) × entries; "
        "top axis: answers as % of all training entries."
    )
    return ReviewReport(facts, caption, tables, notes)
