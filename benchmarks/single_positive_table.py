"""Tabulate single-positive runs: test mAP per seed and method, HST minus each reference paired by seed, and what
HST withheld (from each run's metrics.csv).

    python benchmarks/single_positive_table.py bench/voc2007-split4/single-positive-val-partial
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

METHODS = ("hst", "assume_negative", "partial_bce")


def _run(folder: Path) -> tuple[float, float, dict[str, float]]:
    """Test mAP, best validation score and HST's withheld logs of one run folder."""
    metrics = json.loads((folder / "metrics.json").read_text())
    summary = (folder / "summary.txt").read_text()
    score = float(summary.split("(score ")[1].split(")")[0]) if "(score " in summary else float("nan")
    withheld: dict[str, float] = {}
    with (folder / "csv" / "metrics.csv").open() as handle:
        for row in csv.DictReader(handle):
            found = {k.removeprefix("method/"): float(v) for k, v in row.items() if "withheld" in k and v}
            if found:
                withheld = found
                break
    return float(metrics["test"]["mAP"]), score, withheld


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = {(m, s): _run(args.folder / f"{m}-s{s}") for m in METHODS for s in seeds}
    print("| method | " + " | ".join(f"test mAP seed {s}" for s in seeds) + " | mean | validation score by seed |")
    print("|---|" + "---|" * (len(seeds) + 2))
    for m in METHODS:
        tests = [runs[m, s][0] for s in seeds]
        vals = " / ".join(f"{runs[m, s][1]:.2f}" for s in seeds)
        print(f"| {m} | " + " | ".join(f"{t:.2f}" for t in tests) + f" | {np.mean(tests):.2f} | {vals} |")
    for ref in METHODS[1:]:
        diff = np.array([runs["hst", s][0] - runs[ref, s][0] for s in seeds])
        error = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
        per_seed = ", ".join(f"{d:+.2f}" for d in diff)
        print(f"\nhst − {ref}: {diff.mean():+.2f} ± {error:.2f} (standard error; by seed {per_seed})")
    print()
    for s in seeds:
        held = {k.removeprefix("withheld_"): v for k, v in runs["hst", s][2].items()}
        if held:
            print(
                f"- seed {s}: withheld {held['count']:.0f}, hidden positives among them {held['correct']:.0f} "
                f"({100 * held['precision']:.1f}%), {100 * held['recall']:.1f}% of the {held['possible']:.0f} hidden"
            )


if __name__ == "__main__":
    main()
