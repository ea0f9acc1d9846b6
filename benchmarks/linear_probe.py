"""A plain frozen-feature linear probe, outside the toolkit's training engine: the reference a new user would write.

Globally pooled backbone features (read from the toolkit's feature cache of a config) of the training *and*
validation images of the config's split, with their labels there (partial ones; validation's are full only under
``data.val_labels=full``): the whole labelled pool a user has (2,000 images on the VOC 2007 benchmark split). One
linear layer on features standardised per dimension on the images it is fit on, unknown labels treated as negatives
(``--unknowns negative``) or ignored (``--unknowns ignore``), full-batch Adam (lr 1e-3, 300 epochs) with coupled L2
``weight_decay`` chosen from a grid by the mAP on a seeded 20% hold-out of that pool (scored against its partial
labels), then refit on the whole pool. Same split, partial labels and test images as ``hst train --config CONFIG
data.proportion=P data.partial_seed=S``, but unlike the benchmarked methods it also trains on the validation images;
prints the test mAP.

    python benchmarks/linear_probe.py --config configs/voc2007-benchmark.yaml --proportions 0.1,0.5
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from hst.config import TrainConfig, resolve_config
from hst.data.splits import prepare_splits
from hst.feature_cache import extract_for_config
from hst.metrics import evaluate

GRID = (0.001, 0.01, 0.03, 0.1, 0.3)


def fit(
    x: torch.Tensor, labels: torch.Tensor, unknowns: str, weight_decay: float, epochs: int = 300
) -> torch.nn.Linear:
    torch.manual_seed(0)
    layer = torch.nn.Linear(x.shape[1], labels.shape[1])
    optimizer = torch.optim.Adam(layer.parameters(), lr=1e-3, weight_decay=weight_decay)
    target = (labels > 0).float()
    mask = torch.ones_like(target) if unknowns == "negative" else (labels != 0).float()
    for _ in range(epochs):
        optimizer.zero_grad()
        loss = (F.binary_cross_entropy_with_logits(layer(x), target, reduction="none") * mask).sum() / mask.sum()
        loss.backward()
        optimizer.step()
    return layer


def map_on(layer: torch.nn.Linear, x: torch.Tensor, labels: np.ndarray) -> float:
    with torch.no_grad():
        scores = layer(x).numpy()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(evaluate(scores, labels).mAP)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--proportions", default="0.1,0.3,0.5,0.7,0.9")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--unknowns", choices=("negative", "ignore"), default="negative")
    args = parser.parse_args()
    for seed in [int(s) for s in args.seeds.split(",")]:
        for proportion in [float(p) for p in args.proportions.split(",")]:
            started = time.perf_counter()
            config = resolve_config(
                TrainConfig, args.config, [f"data.proportion={proportion}", f"data.partial_seed={seed}"]
            )
            splits = prepare_splits(config.data)
            caches = extract_for_config(config, progress=False)
            source, test = caches[0], caches[-1]
            pooled = {
                part: torch.from_numpy(np.asarray(cache.features[rows], dtype=np.float32).mean(axis=(2, 3)))
                for part, cache, rows in (
                    ("train", source, splits.train_rows),
                    ("val", source, splits.val_rows),
                    ("test", test, splits.test_rows),
                )
            }
            # The user's labelled pool: training and validation images with their partial labels.
            x_all = torch.cat([pooled["train"], pooled["val"]])
            y_all = torch.from_numpy(np.concatenate([splits.train.labels, splits.val.labels])).long()
            generator = np.random.default_rng(seed)
            order = generator.permutation(len(x_all))
            held, kept = order[: len(order) // 5], order[len(order) // 5 :]
            mean, std = x_all[kept].mean(0), x_all[kept].std(0).clamp_min(1e-6)
            scores = {}
            for wd in GRID:
                layer = fit((x_all[kept] - mean) / std, y_all[kept], args.unknowns, wd)
                scores[wd] = map_on(layer, (x_all[held] - mean) / std, y_all[held].numpy())
            best = max(GRID, key=lambda wd: scores[wd])
            mean, std = x_all.mean(0), x_all.std(0).clamp_min(1e-6)
            layer = fit((x_all - mean) / std, y_all, args.unknowns, best)
            test_map = map_on(layer, (pooled["test"] - mean) / std, splits.test.labels)
            print(
                f"p={proportion:g} seed={seed} unknowns={args.unknowns}: wd {best} (held-out mAP "
                + ", ".join(f"{wd}: {v:.1f}" for wd, v in scores.items())
                + f") -> test mAP {test_map:.2f} ({time.perf_counter() - started:.0f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
