"""Does the pseudo-label rule keep the precision it promises? Checked against the hidden training labels.

For every known proportion and partial-label seed, the training split's known entries calibrate the cross-fitted
rule (``hst.methods.pseudo_label_round``, what HST's pseudo labels and ``hst complete --precision`` use) and the
labels it gives the unknown entries are scored against the full labels, which nothing in the rule reads:
overall precision and recall of the positives and of the negatives (both at the target, as ``hst complete
--precision`` fills them; HST's pseudo positives are the positives), and every class with at least 20 of them whose
95% Clopper–Pearson upper bound of the measured precision lies below the target (a class significantly below it).
Only training images are read: no test or validation label is looked at.

    python benchmarks/calibration_check.py --config configs/voc2007-benchmark.yaml --split-seed 0 \
        --proportions 0.1,0.3,0.5 --seeds 0,1,2 --targets 0.9,0.95
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import torch

from hst.config import TrainConfig
from hst.config.loader import resolve_config
from hst.data.splits import prepare_splits
from hst.feature_cache import extract_split_features
from hst.methods.calibration import clopper_pearson
from hst.methods.pseudo_label_round import RoundSettings, pseudo_label_round
from hst.models.backbone import create_backbone

MIN_CLASS_FILLS = 20


def training_pooled(config: TrainConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Globally pooled frozen-backbone features, partial labels and full labels of the training split."""
    splits = prepare_splits(config.data)
    backbone = create_backbone(config.model.backbone, config.model.weights, "none")
    cache, _ = extract_split_features(backbone, splits, config.data, config.model.channels_last, progress=False)
    maps = cache.pooled()[torch.from_numpy(np.asarray(splits.train_rows))].float()
    return maps.mean(dim=(2, 3)).numpy(), splits.train.labels, splits.train_full, list(splits.train.class_names)


def _side(result, labels: np.ndarray, full: np.ndarray, sign: int, target: float) -> dict[str, float]:
    """Fills of one sign against the full labels: count, precision, recall, classes significantly below target."""
    # Entries without a true label (VOC's "difficult" ones) are never known and have nothing to be scored against.
    chosen = (result.targets == sign) & (labels == 0) & (full != 0)
    hits = chosen & (full == sign)
    hidden = (labels == 0) & (full == sign)
    per_class_n, per_class_k = chosen.sum(0), hits.sum(0)
    _, high = clopper_pearson(per_class_k, np.maximum(per_class_n, 1))
    below = (per_class_n >= MIN_CLASS_FILLS) & (high < target)
    calibration = result.positive if sign > 0 else result.negative
    for c in np.flatnonzero(below):
        print(
            f"  below ({'+' if sign > 0 else '-'}): class {c}: {per_class_k[c]} of {per_class_n[c]} right (CI high "
            f"{high[c]:.3f}); on its known entries {calibration.correct_above[c]} of {calibration.known_above[c]}"
        )
    return {
        "count": float(chosen.sum()),
        "precision": float(hits.sum() / max(chosen.sum(), 1)),
        "recall": float(hits.sum() / max(hidden.sum(), 1)),
        "classes": float(calibration.calibrated.sum()),
        "below": float(below.sum()),
    }


def check(pooled: np.ndarray, labels: np.ndarray, full: np.ndarray, settings: RoundSettings) -> list[dict[str, float]]:
    """Positives and negatives (as ``hst complete --precision`` fills them) against the full labels."""
    result = pseudo_label_round(pooled, labels, settings)
    target = settings.target_precision
    return [_side(result, labels, full, 1, target), _side(result, labels, full, -1, settings.negative_precision)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--proportions", default="0.1,0.3,0.5")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--targets", default="0.9,0.95")
    parser.add_argument("--scheme", default="entry")
    parser.add_argument("--z", type=float, default=RoundSettings.z)
    parser.add_argument("--neighbours", type=int, default=RoundSettings.neighbours)
    parser.add_argument("--no-probe", action="store_true")
    parser.add_argument("--scan", choices=("sequential", "lowest"), default="sequential")
    args = parser.parse_args()
    print(
        "| scheme | known | target | seed | positives | precision % | recall % | classes | below "
        "| negatives | precision % | recall % | classes | below |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for proportion in (float(p) for p in args.proportions.split(",")):
        for seed in (int(s) for s in args.seeds.split(",")):
            overrides = [
                f"data.split_seed={args.split_seed}",
                f"data.proportion={proportion}",
                f"data.partial_seed={seed}",
                f"data.scheme={args.scheme}",
            ]
            config = resolve_config(TrainConfig, args.config, overrides)
            pooled, labels, full, _ = training_pooled(config)
            for target in (float(t) for t in args.targets.split(",")):
                # HST's own round (seed 0), with negatives at the same target as hst complete --precision fills them.
                settings = dataclasses.replace(
                    RoundSettings(),
                    target_precision=target,
                    negative_precision=target,
                    negatives=True,
                    z=args.z,
                    neighbours=args.neighbours,
                    probe=not args.no_probe,
                    sequential=args.scan == "sequential",
                )
                cells = " | ".join(
                    f"{r['count']:.0f} | {100 * r['precision']:.1f} | {100 * r['recall']:.1f} | {r['classes']:.0f} | "
                    f"{r['below']:.0f}"
                    for r in check(pooled, labels, full, settings)
                )
                print(f"| {args.scheme} | {proportion:.0%} | {target:g} | {seed} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
