"""Pseudo-label quality of the runs of a benchmark folder, as a markdown table.

For each method and known proportion, over the seeds of ``results.csv`` (the runs it reports): the pseudo
positives used for training at the run's best epoch (count, precision, recall of the hidden positives) and the
negatives the calibrated sources would assign (the classifier's, or the joint classifier + CST neighbours
evidence where used: count, precision), read from each run's ``csv/metrics.csv`` (``method/pseudo_*`` keys,
logged against the full training labels).

    python benchmarks/pseudo_label_quality.py bench/voc2007 --methods hst
    python benchmarks/pseudo_label_quality.py bench/voc2007 --methods hst --by-agreement

``--by-agreement``: the pseudo positives split by how many evidence sources voted for them (two or more, or one),
and the positives of each source alone, from runs that log them (``method/pseudo_{agreed,single}_pos_*``).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np


def best_epoch(run: Path) -> int | None:
    """The epoch of the run's best validation mAP (the checkpoint it tested)."""
    rows = list(csv.DictReader((run / "csv" / "metrics.csv").open()))
    scored = [(float(r["val/mAP"]), int(r["epoch"])) for r in rows if r.get("val/mAP")]
    return max(scored, key=lambda t: (t[0], -t[1]))[1] if scored else None


def quality(run: Path, at: str = "best") -> dict[str, float] | None:
    """The ``method/pseudo_*`` values of the best epoch (or the last pseudo-label epoch before it); ``at="last"``:
    of the last epoch."""
    rows = list(csv.DictReader((run / "csv" / "metrics.csv").open()))
    epoch = best_epoch(run) if at == "best" else max((int(r["epoch"]) for r in rows if r.get("epoch")), default=None)
    logged = [
        r for r in rows if r.get("method/pseudo_all_pos_count") and epoch is not None and int(r["epoch"]) <= epoch
    ]
    if not logged:
        return None
    row = logged[-1]
    return {k.removeprefix("method/"): float(v) for k, v in row.items() if k.startswith("method/pseudo_") and v}


def cell_values(
    folder: Path, rows: list[dict[str, str]], method: str, proportion: float, at: str
) -> list[dict[str, float]]:
    """The logged pseudo-label values of every run of one (method, proportion) cell that has any."""
    return [
        q
        for r in rows
        if r["method"] == method and float(r["proportion"]) == proportion
        for q in [quality(folder / r["run_dir"], at)]
        if q is not None
    ]


AGREEMENT_GROUPS = (
    ("agreed", "two or more sources"),
    ("single", "one source"),
    ("joint", "joint alone would give"),
    ("neighbours", "CST neighbours alone"),
    ("cst", "CST prototypes alone"),
    ("ist", "IST alone"),
)


def print_by_agreement(folder: Path, rows: list[dict[str, str]], methods: list[str], at: str) -> None:
    """One row per method and proportion: count at precision (recall) of each group, mean over the runs."""
    print("| method | known | " + " | ".join(title for _, title in AGREEMENT_GROUPS) + " | runs |")
    print("|---|---|" + "---|" * len(AGREEMENT_GROUPS) + "---|")
    for method in methods:
        for proportion in sorted({float(r["proportion"]) for r in rows if r["method"] == method}):
            values = [v for v in cell_values(folder, rows, method, proportion, at) if "pseudo_agreed_pos_count" in v]
            cells = []
            for group, _ in AGREEMENT_GROUPS:
                found = [v for v in values if f"pseudo_{group}_pos_count" in v]
                if not found:
                    cells.append("—")
                    continue
                count = np.mean([v[f"pseudo_{group}_pos_count"] for v in found])
                precision = [100 * v[key] for v in found if (key := f"pseudo_{group}_pos_precision") in v]
                recall = [100 * v[key] for v in found if (key := f"pseudo_{group}_pos_recall") in v]
                text = f"{count:,.0f}"
                if precision:
                    text += f" at {np.mean(precision):.1f}%"
                if recall:
                    text += f" ({np.mean(recall):.1f}%)"
                cells.append(text)
            print(f"| {method} | {proportion:.0%} | " + " | ".join(cells) + f" | {len(values)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder")
    parser.add_argument("--methods", default="hst")
    parser.add_argument("--at", choices=("best", "last"), default="best", help="epoch whose pseudo labels to show")
    parser.add_argument("--by-agreement", action="store_true", help="split the pseudo positives by agreement")
    args = parser.parse_args()
    folder = Path(args.folder)
    rows = list(csv.DictReader((folder / "results.csv").open()))
    if args.by_agreement:
        print_by_agreement(folder, rows, args.methods.split(","), args.at)
        return
    print(
        "| method | known | pseudo positives | precision % | recall of hidden positives % | classifier (joint) "
        "negatives | their precision % | runs |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for method in args.methods.split(","):
        for proportion in sorted({float(r["proportion"]) for r in rows if r["method"] == method}):
            values = cell_values(folder, rows, method, proportion, args.at)
            if not values:
                print(f"| {method} | {proportion:.0%} | no pseudo-label epoch before the best one | | | | | 0 |")
                continue

            # With CST neighbours the classifier's evidence is the joint one.
            negatives = "joint" if any("pseudo_joint_neg_count" in v for v in values) else "classifier"

            def mean(key: str, scale: float = 1.0, values: list[dict[str, float]] = values) -> str:
                found = [v[key] * scale for v in values if key in v]
                return f"{np.mean(found):.1f}" if found else "—"

            print(
                f"| {method} | {proportion:.0%} | {mean('pseudo_all_pos_count')} "
                f"| {mean('pseudo_all_pos_precision', 100)} "
                f"| {mean('pseudo_all_pos_recall', 100)} | {mean(f'pseudo_{negatives}_neg_count')} "
                f"| {mean(f'pseudo_{negatives}_neg_precision', 100)} | {len(values)} |"
            )


if __name__ == "__main__":
    main()
