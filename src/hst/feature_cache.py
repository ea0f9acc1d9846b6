"""Frozen-backbone feature cache: run the backbone once, train the head on the stored feature maps.

The backbone's output (before the reducer, N×F×h×w) is stored as float16 in ``<cache_dir>/<key>.npy``
with a JSON sidecar ``<key>.json``. The key hashes everything the features depend on: the data (spec,
image ids, image file contents), the backbone (name, weights, a fingerprint of its tensors) and
the eval transform, so any change gives a new file instead of stale features.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from hst.data.base import MultiLabelData
from hst.data.feature_files import (
    KEY_LENGTH,
    CacheT,
    FeatureCacheError,
    feature_file_fields,
    feature_file_paths,
    open_feature_file,
    open_or_write_feature_file,
)
from hst.data.splits import prepare_splits
from hst.io import atomic_write, fields_key
from hst.models.backbone import Backbone
from hst.models.frozen_runtime import frozen_features, weights_fingerprint


def feature_cache_fields(
    data: MultiLabelData,
    backbone: Backbone,
    image_size: int,
    cache_dir: Path | None = None,
    fingerprint: str | None = None,
) -> dict[str, Any]:
    """Everything the cached features depend on; :func:`feature_cache_key` hashes exactly this.

    ``cache_dir``: where the image digests are remembered between runs (:func:`image_files_digest`);
    ``fingerprint``: the tensors' sha256 when only some of them matter (default: all the backbone's)."""
    return feature_file_fields(
        data,
        backbone.name,
        backbone.weights_description,
        fingerprint or weights_fingerprint(backbone),
        backbone.mean,
        backbone.std,
        image_size,
        cache_dir,
    )


def feature_cache_key(data: MultiLabelData, backbone: Backbone, image_size: int) -> str:
    """Short hex key of the features of ``backbone`` on ``data`` at ``image_size`` (see module docstring)."""
    return fields_key(feature_cache_fields(data, backbone, image_size), KEY_LENGTH)


class FeatureCache:
    """A complete cache file: ``features`` is a read-only N×F×h×w float16 memory map."""

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path = Path(path)
        self.meta = meta
        self._features: np.ndarray | None = None
        self._pooled: torch.Tensor | None = None

    @property
    def key(self) -> str:
        return str(self.meta["key"])

    @property
    def features(self) -> np.ndarray:
        # opened lazily so that pickling (DataLoader workers) never copies the whole array
        if self._features is None:
            self._features = np.load(self.path, mmap_mode="r")
        return self._features

    @property
    def shape(self) -> tuple[int, int, int, int]:
        n, f, h, w = (int(v) for v in self.meta["shape"])
        return n, f, h, w

    @property
    def image_ids(self) -> list[str]:
        return list(self.meta["image_ids"])

    def __len__(self) -> int:
        return self.shape[0]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_features"] = None
        state["_pooled"] = None
        return state

    def tensor(self, indices: int | Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
        """Rows ``indices`` as float32 (a single int gives F×h×w, a sequence B×F×h×w)."""
        if isinstance(indices, torch.Tensor):
            indices = indices.cpu().numpy()
        if isinstance(indices, (int, np.integer)):
            return torch.from_numpy(np.array(self.features[int(indices)], dtype=np.float32))
        rows = np.asarray(indices, dtype=np.int64).reshape(-1)
        return torch.from_numpy(np.array(self.features[rows], dtype=np.float32))

    def poolable(self) -> bool:
        """True when the stored maps have even sides, so a 2×2 average pool tiles them exactly."""
        _, _, h, w = self.shape
        return h % 2 == 0 and w % 2 == 0 and h > 0 and w > 0

    def pooled(self, chunk: int = 256) -> torch.Tensor:
        """All rows 2×2 average-pooled, in memory (float16 ``N×F×h/2×w/2``, a quarter of the file).

        What a head with the published 2×2 pool reads anyway; it is computed once from the file (in float32,
        then rounded) and kept next to it as ``<key>.pool2.npy``, so later runs only load it.
        """
        if self._pooled is not None:
            return self._pooled
        if not self.poolable():
            raise FeatureCacheError(f"{self.path}: maps of shape {self.shape[2:]} cannot be pooled 2×2 exactly")
        path = self.path.with_name(f"{self.key}.pool2.npy")
        n, f, h, w = self.shape
        expected = (n, f, h // 2, w // 2)
        array: np.ndarray | None = None
        if path.is_file():
            try:
                loaded = np.load(path)
                if loaded.shape == expected and loaded.dtype == np.float16:
                    array = loaded
            except (OSError, ValueError):
                array = None
        if array is None:
            array = np.empty(expected, dtype=np.float16)
            for start in range(0, n, chunk):
                block = torch.from_numpy(np.array(self.features[start : start + chunk], dtype=np.float32))
                array[start : start + chunk] = torch.nn.functional.avg_pool2d(block, 2).half().numpy()
            try:
                with atomic_write(path, "wb") as handle:
                    np.save(handle, array)
            except OSError:
                pass  # a read-only or full cache folder: keep the pooled copy in memory only
        self._pooled = torch.from_numpy(array)
        return self._pooled

    @classmethod
    def open(cls, cache_dir: Path, key: str) -> FeatureCache | None:
        """The complete cache ``key`` in ``cache_dir``, or ``None`` if missing, torn or inconsistent."""
        npy_path, meta_path = feature_file_paths(Path(cache_dir), key)
        opened = open_feature_file(npy_path, meta_path, key)
        if opened is None:
            return None
        meta, features = opened
        cache = cls(npy_path, meta)
        cache._features = features
        return cache


def open_or_write_cache(
    open_cache: Callable[[Path, str], CacheT | None],
    paths: Callable[[Path, str], tuple[Path, Path]],
    cache_dir: Path,
    fields: dict[str, Any],
    data: MultiLabelData,
    backbone: Backbone,
    maps: Callable[[], Generator[torch.Tensor, None, None]],
    what: str,
    progress: bool,
) -> CacheT:
    """The cache of ``fields`` in ``cache_dir`` as ``open_cache`` opens it, first written from ``maps()`` if missing.

    ``maps()`` yields the float32 maps (``what``) of the images of ``data`` in order, a batch at a time, while
    ``backbone`` is in eval mode; :func:`hst.data.feature_files.open_or_write_feature_file` writes them (float16,
    the sidecar last, so an interrupted run leaves nothing that ``open_cache`` accepts).
    """
    was_training = backbone.training
    backbone.eval()
    try:
        return open_or_write_feature_file(
            open_cache, paths, cache_dir, fields, data, lambda: _as_arrays(maps()), what, backbone.name, progress
        )
    finally:
        backbone.train(was_training)


def _as_arrays(maps: Generator[torch.Tensor, None, None]) -> Generator[np.ndarray, None, None]:
    with closing(maps):
        for batch in maps:
            yield batch.float().cpu().numpy()


def extract_features(
    backbone: Backbone,
    data: MultiLabelData,
    image_size: int,
    cache_dir: Path,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = True,
    channels_last: bool = False,
    runtime: str | None = None,
) -> FeatureCache:
    """Return the cache of ``backbone`` features on ``data``, computing and writing it if needed.

    Images go through the eval transform (no augmentation); the backbone runs in eval mode, on the CPU through
    the fastest runtime at hand (:func:`hst.models.frozen_runtime.frozen_features`, whose exported graph is kept
    in ``cache_dir/onnx``), else on the device of its parameters; :func:`open_or_write_cache` writes the cache.
    """
    cache_dir = Path(cache_dir)

    def feature_maps() -> Generator[torch.Tensor, None, None]:
        batches = frozen_features(
            backbone, data, image_size, cache_dir, batch_size, num_workers, channels_last, runtime=runtime
        )
        with closing(batches):
            for found in batches:
                assert found.features is not None  # unreadable images raise: the cache holds every row
                if found.features.ndim != 4:
                    shape = tuple(found.features.shape)
                    raise FeatureCacheError(f"{backbone.name}: expected N×F×h×w features, got {shape}")
                yield found.features.float()

    fields = feature_cache_fields(data, backbone, image_size, cache_dir)
    return open_or_write_cache(
        FeatureCache.open, feature_file_paths, cache_dir, fields, data, backbone, feature_maps, "features", progress
    )


class CachedFeatureDataset(Dataset):
    """Yields (index, features float32 F×h×w, training labels, evaluation labels) from a feature cache.

    Item ``i`` reads cache row ``rows[i]`` (default: row ``i``) and label row ``i``, so a split of the
    cached source passes its own label matrices and its rows in the cache.
    """

    def __init__(
        self,
        cache: FeatureCache,
        labels: np.ndarray,
        eval_labels: np.ndarray,
        rows: Sequence[int] | np.ndarray | None = None,
        pooled: bool = False,
    ) -> None:
        self.cache = cache
        self.pooled = pooled
        """Serve the 2×2-pooled maps held in memory (:meth:`FeatureCache.pooled`) instead of the file's."""
        self.rows = np.arange(len(cache), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        if self.rows.ndim != 1:
            raise ValueError(f"rows must be one-dimensional, got shape {self.rows.shape}")
        if len(self.rows) and (self.rows.min() < 0 or self.rows.max() >= len(cache)):
            raise ValueError(f"rows must lie in [0, {len(cache)}) for {cache.path}")
        self.labels = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int8))
        self.eval_labels = torch.from_numpy(np.ascontiguousarray(eval_labels, dtype=np.int8))
        for name, matrix in (("labels", self.labels), ("eval_labels", self.eval_labels)):
            if matrix.ndim != 2 or matrix.shape[0] != len(self.rows):
                raise ValueError(f"{name} must have {len(self.rows)} rows (one per item), got {tuple(matrix.shape)}")

    def __len__(self) -> int:
        return len(self.rows)

    def _rows(self, rows: np.ndarray) -> torch.Tensor:
        if self.pooled:
            return self.cache.pooled()[torch.from_numpy(rows)].float()
        return self.cache.tensor(rows)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]:
        features = self._rows(self.rows[[index]])[0]
        return index, features, self.labels[index], self.eval_labels[index]

    def __getitems__(self, indices: list[int]) -> list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]:
        # one read per batch instead of one per item
        batch = self._rows(self.rows[np.asarray(indices, dtype=np.int64)])
        return [(index, batch[i], self.labels[index], self.eval_labels[index]) for i, index in enumerate(indices)]


def extraction_options(data_config: Any, channels_last: bool, progress: bool) -> dict[str, Any]:
    """The keyword arguments of an extraction (:func:`extract_features`, the front's) that a data config gives."""
    return {
        "image_size": data_config.image_size,
        "cache_dir": Path(data_config.cache_dir),
        "batch_size": data_config.eval_batch_size,
        "num_workers": data_config.num_workers,
        "progress": progress,
        "channels_last": channels_last,
    }


def extract_split_features(
    backbone: Backbone, splits: Any, data_config: Any, channels_last: bool, progress: bool
) -> tuple[FeatureCache, FeatureCache]:
    """Caches of the training source (all of it: splits and partial labels do not change the features) and
    of the test source; one cache serves both when the test set is carved from the training source."""
    kwargs = extraction_options(data_config, channels_last, progress)
    source_cache = extract_features(backbone, splits.source, **kwargs)
    if splits.test_source is splits.source:
        return source_cache, source_cache
    return source_cache, extract_features(backbone, splits.test_source, **kwargs)


def extract_for_config(config: Any, progress: bool = True) -> list[FeatureCache]:
    """``hst extract-features``: fill the cache a frozen-backbone run of ``config`` (a TrainConfig) will read.

    Returns the distinct caches (training source, and the test source when it is a separate dataset);
    already cached data is not recomputed.
    """
    from hst.models.backbone import create_backbone

    splits = prepare_splits(config.data)
    backbone = create_backbone(config.model.backbone, config.model.weights, "none")
    source, test = extract_split_features(backbone, splits, config.data, config.model.channels_last, progress)
    return [source] if test is source else [source, test]
