"""Would CST neighbours help at prediction time too? An offline check on trained runs.

For every run folder given (frozen backbone, feature cache), the best checkpoint's logits of the validation and
test images are added to ``λ ×`` their image-level CST neighbour margin against the training images' known labels
(:func:`hst.models.cst.neighbour_margin`), λ chosen on the validation split's partial labels from a small grid.
Prints the test mAP without and with it. Nothing here changes what ``hst predict`` does.

    python benchmarks/test_time_neighbours.py bench/voc2007/runs/hst-p0.1-s0-t0 bench/voc2007/runs/partial_bce-p0.1-s1
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import torch

from hst.config import TrainConfig, resolve_config
from hst.data.splits import prepare_splits
from hst.engine.module import PartialLabelModule
from hst.feature_cache import extract_for_config
from hst.metrics import evaluate
from hst.models.cst import neighbour_margin, standardize_rows

LAMBDAS = (0.0, 5.0, 10.0, 20.0, 40.0)


def quiet_map(scores: np.ndarray, labels: np.ndarray) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(evaluate(scores, labels).mAP)


def check_run(run: Path, neighbours: int) -> tuple[float, float, float]:
    """(test mAP of the logits, λ chosen on validation, test mAP of logits + λ · margin)."""
    config = resolve_config(TrainConfig, str(run / "config.yaml"), [])
    splits = prepare_splits(config.data)
    caches = extract_for_config(config, progress=False)
    source, test_cache = caches[0].pooled(), caches[-1].pooled()
    module = PartialLabelModule.from_checkpoint(next(run.glob("**/checkpoints/best.ckpt"))).eval()
    outputs = {}
    with torch.no_grad():
        for part, cache, rows in (
            ("train", source, splits.train_rows),
            ("val", source, splits.val_rows),
            ("test", test_cache, splits.test_rows),
        ):
            out = module.network.head(cache[rows].float(), pooled=True)
            outputs[part] = (out.logits.numpy(), out.pooled)
    train_pooled = outputs["train"][1]
    mean, std = train_pooled.mean(0), train_pooled.std(0)
    bank = standardize_rows(train_pooled, mean, std)
    bank_rows = torch.arange(len(bank))
    bank_labels = torch.from_numpy(np.asarray(splits.train.labels))
    margins = {
        part: np.nan_to_num(
            neighbour_margin(
                standardize_rows(outputs[part][1], mean, std), None, bank, bank_rows, bank_labels, neighbours
            ).numpy()
        )
        for part in ("val", "test")
    }
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
