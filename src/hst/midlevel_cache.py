"""Mid-level feature cache: the frozen front of a partly trainable backbone, run once, stored, trained from.

With ``model.trainable=last_stage`` the layers before the last stage never change, yet a plain training step runs
them on every image of every epoch (most of the step's time on a CPU). This cache stores their output
(:meth:`hst.models.backbone.Backbone.forward_front`) as float16 in ``<cache_dir>/<key>.front.npy`` (``N×O×F×h×w``)
with a JSON sidecar ``<key>.front.json``, and training runs only the trainable rest and the head.

Exactness: with ``data.augment=flip`` every image is stored in both orientations (``O = 2``), and the training
dataset draws the flip exactly as the image transform does (one ``torch.rand(1) < 0.5`` per item, in item order),
so a seeded run from this cache sees the same images as one from raw photos, up to the float16 rounding of the
stored maps. Augmentations that change more than the orientation (``paper``: random crops) cannot be applied after
the front, and such runs use the images.

The key hashes what the front's output depends on: the data (as for the final-feature cache), the backbone's name,
weights and the tensors of the front only (a resumed run whose last stage has trained keeps its cache), the cut,
the eval transform and the orientations stored.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from hst.data.base import MultiLabelData
from hst.feature_cache import FeatureCacheError, extraction_options, feature_cache_fields, open_or_write_cache
from hst.models.backbone import Backbone
from hst.models.frozen_runtime import front_fingerprint, frozen_features

FRONT_CACHE_FORMAT = 1
ORIENTATIONS = {"none": ("original",), "flip": ("original", "hflip")}
"""What a training augmentation needs stored, by ``data.augment`` (others cannot be cached after the front)."""


def cacheable_augment(augment: str) -> bool:
    return augment in ORIENTATIONS


def front_cache_fields(
    data: MultiLabelData, backbone: Backbone, image_size: int, augment: str, cache_dir: Path | None = None
) -> dict[str, Any]:
    """Everything the cached front maps depend on; the key hashes exactly this."""
    split = backbone.split
    if split is None:
        raise FeatureCacheError(f"{backbone.name}: no frozen front to cache (model.trainable={backbone.trainable!r})")
    fields = feature_cache_fields(data, backbone, image_size, cache_dir, fingerprint=front_fingerprint(backbone))
    fields.update(
        {
            "front_format": FRONT_CACHE_FORMAT,
            "level": "front",
            "cut": split.cut,
            "front_modules": list(split.front),
            "orientations": list(ORIENTATIONS[augment]),
        }
    )
    return fields


def _paths(cache_dir: Path, key: str) -> tuple[Path, Path]:
    return cache_dir / f"{key}.front.npy", cache_dir / f"{key}.front.json"


class FrontCache:
    """A complete front cache: ``features`` is a read-only ``N×O×F×h×w`` float16 memory map."""

    def __init__(self, path: Path, meta: dict[str, Any], features: np.ndarray | None = None) -> None:
        self.path = Path(path)
        self.meta = meta
        self._features = features

    @property
    def key(self) -> str:
        return str(self.meta["key"])

    @property
    def features(self) -> np.ndarray:
        if self._features is None:  # opened lazily: pickling for loader workers never copies the array
            self._features = np.load(self.path, mmap_mode="r")
        return self._features

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(v) for v in self.meta["shape"])

    @property
    def orientations(self) -> tuple[str, ...]:
        return tuple(self.meta["orientations"])

    def __len__(self) -> int:
        return self.shape[0]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_features": None}

    def rows(self, rows: np.ndarray, flipped: np.ndarray | None = None) -> torch.Tensor:
        """``B×F×h×w`` float32 maps of ``rows``, each mirrored where ``flipped`` is True."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        orientation = np.zeros(len(rows), dtype=np.int64) if flipped is None else np.asarray(flipped, dtype=np.int64)
        if orientation.any() and len(self.orientations) < 2:
            raise FeatureCacheError(f"{self.path}: holds no mirrored maps (stored: {', '.join(self.orientations)})")
        return torch.from_numpy(np.array(self.features[rows, orientation], dtype=np.float32))

    @classmethod
    def open(cls, cache_dir: Path, key: str) -> FrontCache | None:
        """The complete cache ``key`` in ``cache_dir``, or ``None`` if missing, torn or inconsistent."""
        npy_path, meta_path = _paths(Path(cache_dir), key)
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            features = np.load(npy_path, mmap_mode="r")
        except (OSError, ValueError):
            return None
        if not isinstance(meta, dict) or meta.get("key") != key or meta.get("complete") is not True:
            return None
        if features.dtype != np.float16 or list(features.shape) != meta.get("shape"):
            return None
        return cls(npy_path, meta, features)


def extract_front(
    backbone: Backbone,
    data: MultiLabelData,
    image_size: int,
    augment: str,
    cache_dir: Path,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = True,
    channels_last: bool = False,
) -> FrontCache:
    """Return the front cache of ``backbone`` on ``data`` for training with ``augment``, writing it if needed.

    Images go through the eval transform and the front through the fastest runtime at hand
    (:func:`hst.models.frozen_runtime.frozen_features`, whose exported graph is kept in ``cache_dir/onnx``); the
    mirrored copy is the front of the mirrored transformed image (the flip of the training transform commutes with
    the resize and the normalisation); :func:`open_or_write_cache` writes it.
    """
    if not cacheable_augment(augment):
        raise FeatureCacheError(f"data.augment={augment!r} cannot be applied after the backbone's front")
    cache_dir = Path(cache_dir)
    mirrored = len(ORIENTATIONS[augment]) == 2

    def front_maps() -> Generator[torch.Tensor, None, None]:
        batches = frozen_features(
            backbone, data, image_size, cache_dir, batch_size, num_workers, channels_last, front=True, mirrored=mirrored
        )
        with closing(batches):
            for found in batches:
                assert found.features is not None  # unreadable images raise: the cache holds every row
                views = [found.features.float()]
                if found.mirrored is not None:
                    views.append(found.mirrored.float())
                yield torch.stack(views, dim=1)

    fields = front_cache_fields(data, backbone, image_size, augment, cache_dir)
    return open_or_write_cache(
        FrontCache.open, _paths, cache_dir, fields, data, backbone, front_maps, "front maps", progress
    )


class FrontFeatureDataset(Dataset):
    """Yields (index, front maps float32 F×h×w, training labels, evaluation labels) from a front cache.

    ``flip``: mirror each item with probability 1/2, drawn as ``torchvision``'s ``RandomHorizontalFlip`` draws it
    (so that a seeded run equals the run on images); otherwise the original orientation.
    """

    def __init__(
        self,
        cache: FrontCache,
        labels: np.ndarray,
        eval_labels: np.ndarray,
        rows: Sequence[int] | np.ndarray,
        flip: bool = False,
    ) -> None:
        self.cache = cache
        self.rows = np.asarray(rows, dtype=np.int64)
        self.flip = flip
        if flip and len(cache.orientations) < 2:
            raise FeatureCacheError(f"{cache.path}: flip augmentation needs the mirrored maps, which it lacks")
        self.labels = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int8))
        self.eval_labels = torch.from_numpy(np.ascontiguousarray(eval_labels, dtype=np.int8))
        if len(self.labels) != len(self.rows) or len(self.eval_labels) != len(self.rows):
            raise ValueError(f"labels must have {len(self.rows)} rows (one per item)")

    def __len__(self) -> int:
        return len(self.rows)

    def _flips(self, count: int) -> np.ndarray:
        if not self.flip:
            return np.zeros(count, dtype=bool)
        # one draw per item, in item order, with RandomHorizontalFlip's test (flip when rand < p)
        return np.array([bool(torch.rand(1) < 0.5) for _ in range(count)], dtype=bool)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]:
        picked = np.asarray(indices, dtype=np.int64)
        batch = self.cache.rows(self.rows[picked], self._flips(len(picked)))
        return [(index, batch[i], self.labels[index], self.eval_labels[index]) for i, index in enumerate(indices)]


def extract_split_fronts(
    backbone: Backbone, splits: Any, data_config: Any, channels_last: bool, progress: bool
) -> tuple[FrontCache, FrontCache]:
    """Front caches of the training source (both orientations under ``augment=flip``) and of the test source
    (original orientation only: it is never augmented); one serves both when the test set is carved from the
    training source."""
    kwargs = extraction_options(data_config, channels_last, progress)
    source = extract_front(backbone, splits.source, augment=data_config.augment, **kwargs)
    if splits.test_source is splits.source:
        return source, source
    return source, extract_front(backbone, splits.test_source, augment="none", **kwargs)


def extract_fronts_for_config(config: Any, progress: bool = True) -> list[FrontCache] | None:
    """The front caches a run of ``config`` (a TrainConfig) trains from, filled once; ``None`` when it trains from
    images (nothing frozen in front, all of it frozen, or an augmentation that needs the images)."""
    from hst.data.splits import prepare_splits
    from hst.models.backbone import create_backbone

    if config.model.trainable == "none" or not cacheable_augment(config.data.augment):
        return None
    backbone = create_backbone(config.model.backbone, config.model.weights, config.model.trainable)
    if backbone.split is None:
        return None
    splits = prepare_splits(config.data)
    source, test = extract_split_fronts(backbone, splits, config.data, config.model.channels_last, progress)
    return [source] if test is source else [source, test]
