"""Markdown tables of ``hst simulate-review`` folders: policies at the end of the budget, the mAP after each round,
and the exchange-rate curve (what an answer is worth in random known entries).

    python benchmarks/review_loop_tables.py OUT [OUT ...] [--start 0.1] [--budget 0.02]

Reads every ``summary.csv``, ``curve.csv`` and ``POLICY-sSEED/rounds.csv`` under the folders given.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
from collections import defaultdict
from pathlib import Path


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _stats(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    spread = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, spread


def _cell(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    mean, spread = _stats([scale * v for v in values])
    return f"{mean:.{digits}f} ± {spread:.{digits}f}"


def _precision_cell(rows: list[dict[str, str]], polarity: str) -> str:
    """Precision of the fills pooled over the seeds (a seed that filled nothing has none), with the fill count."""
    filled = [float(r[f"filled_{polarity}"]) for r in rows]
    correct = [n * float(r[f"filled_{polarity}_precision"]) for n, r in zip(filled, rows, strict=True) if n > 0]
    if not correct:
        return "no fills"
    share = 100 * sum(correct) / sum(filled)
    mean_filled = sum(filled) / len(filled)
    empty = sum(n == 0 for n in filled)
    return f"{share:.1f} ({mean_filled:.0f} filled" + (f"; none in {empty} seeds)" if empty else ")")


def equivalent_proportion(curve: list[tuple[float, float]], value: float) -> float:
    """The random known proportion at which the curve (proportion, mean mAP) reaches ``value`` (linear between
    points; NaN below the first point, ``inf`` above the last)."""
    for (p0, m0), (p1, m1) in itertools.pairwise(curve):
        if m0 <= value <= m1 and m1 > m0:
            return p0 + (p1 - p0) * (value - m0) / (m1 - m0)
    if value < curve[0][1]:
        return float("nan")
    return float("inf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--start", type=float, default=0.1, help="known proportion the reviews start from")
    parser.add_argument("--budget", type=float, default=0.02, help="answers, as a fraction of the training entries")
    args = parser.parse_args()
    summary = [
        row for folder in args.folders for row in _rows(folder / "summary.csv") if (folder / "summary.csv").is_file()
    ]
    curve_rows = [
        row for folder in args.folders if (folder / "curve.csv").is_file() for row in _rows(folder / "curve.csv")
    ]
    curve: list[tuple[float, float]] = []
    if curve_rows:
        by_proportion: dict[float, list[dict[str, str]]] = defaultdict(list)
        for row in curve_rows:
            by_proportion[float(row["proportion"])].append(row)
        print(
            "| random known | seeds | test mAP | val mAP | correct positives "
            "| filled + precision | filled − precision |"
        )
        print("|---|---|---|---|---|---|---|")
        for proportion in sorted(by_proportion):
            rows = by_proportion[proportion]
            maps = [float(r["test_mAP"]) for r in rows]
            curve.append((proportion, _stats(maps)[0]))
            print(
                f"| {100 * proportion:g}% | {len(rows)} | {_cell(maps)} | {_cell([float(r['val_mAP']) for r in rows])} "
                f"| {_cell([float(r['completed_correct_positives']) for r in rows], digits=0)} "
                f"| {_precision_cell(rows, 'positive')} "
                f"| {_precision_cell(rows, 'negative')} |"
            )
        print()
    by_policy: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in summary:
        by_policy[row["policy"]].append(row)
    print(
        "| policy | seeds | test mAP at start | test mAP at end | gain | val mAP at end | positives asked "
        "| correct positives (× start) | filled + precision | filled − precision | equivalent random known "
        "| worth per answer | update s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for policy, rows in by_policy.items():
        start = [float(r["start_test_mAP"]) for r in rows]
        end = [float(r["test_mAP"]) for r in rows]
        gain = [e - s for s, e in zip(start, end, strict=True)]
        equivalent = equivalent_proportion(curve, _stats(end)[0]) if curve else float("nan")
        worth = (equivalent - args.start) / args.budget
        ratio = _ratio(args.folders, policy, rows)
        print(
            f"| {policy} | {len(rows)} | {_cell(start)} | {_cell(end)} | {_cell(gain)} "
            f"| {_cell([float(r['val_mAP']) for r in rows])} "
            f"| {_cell([float(r['positives_found']) for r in rows], digits=0)} "
            f"| {_cell([float(r['completed_correct_positives']) for r in rows], digits=0)} ({ratio}) "
            f"| {_precision_cell(rows, 'positive')} "
            f"| {_precision_cell(rows, 'negative')} "
            f"| {100 * equivalent:.1f}% | {worth:.2f} | {_cell([float(r['update_seconds']) for r in rows], digits=1)} |"
        )
    print()
    _round_table(args.folders, list(by_policy))


def _ratio(folders: list[Path], policy: str, rows: list[dict[str, str]]) -> str:
    """Mean over seeds of the correct positives at the end over those before any answer."""
    ratios = []
    for row in rows:
        for folder in folders:
            path = folder / f"{policy}-s{row['seed']}" / "rounds.csv"
            if path.is_file():
                rounds = _rows(path)
                ratios.append(
                    float(rounds[-1]["completed_correct_positives"]) / float(rounds[0]["completed_correct_positives"])
                )
                break
    return f"{_stats(ratios)[0]:.2f}×" if ratios else "?"


def _round_table(folders: list[Path], policies: list[str]) -> None:
    """Mean test mAP after each round, per policy."""
    table: dict[str, dict[int, list[float]]] = {}
    for policy in policies:
        table[policy] = defaultdict(list)
        for folder in folders:
            for path in sorted(folder.glob(f"{policy}-s*/rounds.csv")):
                for row in _rows(path):
                    table[policy][int(row["answers"])].append(float(row["test_mAP"]))
    answers = sorted({a for by_answers in table.values() for a in by_answers})
    print("| answers | " + " | ".join(policies) + " |")
    print("|---|" + "---|" * len(policies))
    for count in answers:
        cells = [f"{_stats(table[p][count])[0]:.2f}" if table[p].get(count) else "" for p in policies]
        print(f"| {count} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
