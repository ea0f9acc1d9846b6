"""The pooled frozen-backbone features a review learns from, per split of a config, from the feature cache."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from hst.data.splits import Splits, prepare_splits
from hst.feature_cache import FeatureCache, extract_for_config


@dataclass
class PooledSplits:
    splits: Splits
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    """Pooled features (images × F, float32) of the training, validation and test images."""
    source: np.ndarray
    """... of every image of the training source (the same for any partial labels of it)."""


def pooled_features(cache: FeatureCache, chunk: int = 256) -> np.ndarray:
    """Every row's feature map averaged over space (the network's pooled features); from the 2×2-pooled copy when
    there is one, which has the same mean and is a quarter of the file to read."""
    import torch

    maps = cache.pooled() if cache.poolable() else torch.from_numpy(np.asarray(cache.features))
    return torch.cat([maps[i : i + chunk].float().mean(dim=(2, 3)) for i in range(0, len(maps), chunk)]).numpy()


def pooled_splits(config: Any, progress: bool = False, source: np.ndarray | None = None) -> PooledSplits:
    """The splits of ``config`` (a TrainConfig with a frozen backbone) and their pooled features; ``source``: the
    training source's pooled features when already read (they do not depend on the partial labels)."""
    splits = prepare_splits(config.data)
    if splits.train_rows is None or splits.val_rows is None or splits.test_rows is None:
        raise ValueError("the splits do not index their sources")
    caches = extract_for_config(config, progress=progress)
    if source is None:
        source = pooled_features(caches[0])
    test_source = source if len(caches) == 1 else pooled_features(caches[1])
    train, val, test = source[splits.train_rows], source[splits.val_rows], test_source[splits.test_rows]
    return PooledSplits(splits, train, val, test, source)
