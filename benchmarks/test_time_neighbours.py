"""Would CST neighbours help at prediction time too? An offline check on trained runs.

For every run folder given (frozen backbone, feature cache), the best checkpoint's logits of the validation and
test images are added to ``λ ×`` their image-level CST neighbour margin against the training images' known labels
(``hst.methods.neighbour_evidence.NeighbourIndex``), λ chosen on the validation split's partial labels from a
small grid.
Prints the test mAP without and with it. Nothing here changes what ``hst predict`` does.

    python benchmarks/test_time_neighbours.py bench/voc2007/runs/hst-p0.1-s0-t0 bench/voc2007/runs/partial_bce-p0.1-s1
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from hst.methods.neighbour_evidence import NeighbourIndex
from run_outputs import quiet_map, run_outputs

LAMBDAS = (0.0, 5.0, 10.0, 20.0, 40.0)


def check_run(run: Path, neighbours: int) -> tuple[float, float, float]:
    """(test mAP of the logits, λ chosen on validation, test mAP of logits + λ · margin)."""
    splits, outputs = run_outputs(run, ("train", "val", "test"))
    index = NeighbourIndex(outputs["train"][1], splits.train.labels)
    margins = {part: np.nan_to_num(index.margins(outputs[part][1], neighbours)) for part in ("val", "test")}
    val = {lam: quiet_map(outputs["val"][0] + lam * margins["val"], splits.val.labels) for lam in LAMBDAS}
    chosen = max(LAMBDAS, key=lambda lam: val[lam])
    plain = quiet_map(outputs["test"][0], splits.test.labels)
    return plain, chosen, quiet_map(outputs["test"][0] + chosen * margins["test"], splits.test.labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--neighbours", type=int, default=20)
    args = parser.parse_args()
    print("| run | test mAP | λ (validation) | test mAP with neighbours |")
    print("|---|---|---|---|")
    for run in args.runs:
        plain, chosen, mixed = check_run(run, args.neighbours)
        print(f"| {run.name} | {plain:.2f} | {chosen:g} | {mixed:.2f} |", flush=True)


if __name__ == "__main__":
    main()
