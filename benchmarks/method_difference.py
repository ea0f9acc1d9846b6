"""Test mAP of one method minus another, per known proportion, paired by seed, with its standard error.

The seeds of a benchmark hide different entries, and both methods see the same ones at a seed, so the difference
is taken seed by seed; the standard error is the sample standard deviation of those differences over √seeds.

    python benchmarks/method_difference.py bench/voc2007-split1 --method hst --against partial_bce,linear_partial_bce
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

import numpy as np


def paired(rows: list[dict[str, str]], method: str, other: str, proportion: float) -> np.ndarray:
    """The per-seed differences of test mAP at ``proportion``, over the seeds both methods ran."""

    def by_seed(name: str) -> dict[int, float]:
        return {
            int(r["seed"]): float(r["test_mAP"])
            for r in rows
            if r["method"] == name and math.isclose(float(r["proportion"]), proportion) and not r.get("diagnostic")
        }

    ours, theirs = by_seed(method), by_seed(other)
    return np.array([ours[s] - theirs[s] for s in sorted(set(ours) & set(theirs))])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--method", default="hst")
    parser.add_argument("--against", default="partial_bce")
    args = parser.parse_args()
    rows = list(csv.DictReader((args.folder / "results.csv").open()))
    proportions = sorted({float(r["proportion"]) for r in rows if r["method"] == args.method})
    print("| " + args.method + " minus | " + " | ".join(f"{p:.0%}" for p in proportions) + " | average |")
    print("|---|" + "---|" * (len(proportions) + 1))
    for other in args.against.split(","):
        cells, means = [], []
        for proportion in proportions:
            diff = paired(rows, args.method, other, proportion)
            if len(diff) == 0:
                cells.append("—")
                continue
            se = diff.std(ddof=1) / math.sqrt(len(diff)) if len(diff) > 1 else float("nan")
            means.append(diff.mean())
            cells.append(f"{diff.mean():+.2f} ± {se:.2f} ({', '.join(f'{d:+.1f}' for d in diff)})")
        average = f"{np.mean(means):+.2f}" if means else "—"
        print(f"| {other} | " + " | ".join(cells) + f" | {average} |")


if __name__ == "__main__":
    main()
