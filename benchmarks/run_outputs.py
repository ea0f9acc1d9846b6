"""What the benchmark scripts that read trained runs share: a run's network outputs on its splits, and mAP
without the warnings about classes that have no positive."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from hst.config import TrainConfig, resolve_config
from hst.data.splits import Splits, prepare_splits
from hst.engine.module import PartialLabelModule
from hst.feature_cache import extract_for_config
from hst.metrics import evaluate


def quiet_map(scores: np.ndarray, labels: np.ndarray) -> float:
    """mAP of ``scores`` against ``labels`` (0 = not scored), classes without a positive left out silently."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(evaluate(scores, labels).mAP)


def run_outputs(run: Path, parts: tuple[str, ...]) -> tuple[Splits, dict[str, tuple[np.ndarray, torch.Tensor]]]:
    """The splits of a frozen-backbone run (from its saved config) and, per part ("train", "val", "test"), the
    best checkpoint's logits and pooled backbone features, read from the run's feature cache."""
    config = resolve_config(TrainConfig, str(run / "config.yaml"), [])
    splits = prepare_splits(config.data)
    caches = extract_for_config(config, progress=False)
    sources = {
        "train": (caches[0], splits.train_rows),
        "val": (caches[0], splits.val_rows),
        "test": (caches[-1], splits.test_rows),
    }
    module = PartialLabelModule.from_checkpoint(next(run.glob("**/checkpoints/best.ckpt"))).eval()
    outputs = {}
    with torch.no_grad():
        for part in parts:
            cache, rows = sources[part]
            out = module.network.head(cache.pooled()[rows].float(), pooled=True)
            outputs[part] = (out.logits.numpy(), out.pooled)
    return splits, outputs
