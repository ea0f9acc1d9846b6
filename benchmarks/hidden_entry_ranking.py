"""How well each HST evidence ranks the hidden entries of the training images, for trained runs.

For every run folder given (a ``hst train`` or ``hst benchmark`` run with a frozen backbone and a feature cache),
the best checkpoint scores the training images and the script prints the mAP over their *hidden* entries (known
entries left out, the full labels as truth) of: the classifier's logits, the image-level CST neighbour margin,
and their standardised sum (the "joint" evidence HST calibrates). Higher means pseudo labels taken from the top
of that ranking are more precise at the same recall.

    python benchmarks/hidden_entry_ranking.py bench/voc2007/runs/hst-p0.1-s0-t0 bench/voc2007/runs/hst-p0.1-s1
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from hst.methods.neighbour_evidence import neighbour_evidence
from run_outputs import quiet_map, run_outputs


def hidden_map(scores: np.ndarray, partial: np.ndarray, full: np.ndarray) -> float:
    """mAP over the unknown entries of ``partial`` against ``full`` (known entries are left out)."""
    return quiet_map(scores, np.where(partial == 0, np.where(full > 0, 1, -1), 0))


def rank_run(run: Path, neighbours: int) -> dict[str, float]:
    splits, outputs = run_outputs(run, ("train", "val"))
    (train_logits, train_pooled), (val_logits, val_pooled) = outputs["train"], outputs["val"]
    found = neighbour_evidence(
        train_pooled.numpy(),
        splits.train.labels,
        train_logits,
        val_pooled.numpy(),
        val_logits,
        neighbours,
        bank_limit=0,
    )
    partial, full = splits.train.labels, splits.train_full
    return {
        "classifier": hidden_map(train_logits, partial, full),
        "neighbours": hidden_map(np.nan_to_num(found.margin, nan=-2.0), partial, full),
        "joint": hidden_map(found.joint, partial, full),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--neighbours", type=int, default=20)
    args = parser.parse_args()
    print("| run | classifier | CST neighbours | joint |")
    print("|---|---|---|---|")
    for run in args.runs:
        values = rank_run(run, args.neighbours)
        print(f"| {run.name} | {values['classifier']:.1f} | {values['neighbours']:.1f} | {values['joint']:.1f} |")


if __name__ == "__main__":
    main()
