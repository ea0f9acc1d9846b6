"""The frozen backbone's feature cache filled from an exported graph, without importing torch.

``hst extract-features`` with ``model.trainable=none`` on the CPU takes this path when ``data.cache_dir`` holds
a graph exported from the same weights file (:func:`hst.models.onnx_graphs.find_graph`): decoding and resizing
in a thread (:class:`hst.data.batches.PixelBatches`), the graph in ONNX Runtime, the float16 file written by
:func:`hst.data.feature_files.open_or_write_feature_file`. The file, its key and its sidecar are those the torch path
(:func:`hst.feature_cache.extract_for_config`, which exports the graph and runs it the same way) writes; only
importing torch and timm (3.5 s on 2 cores) and building the network are left out.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from hst.data.base import MultiLabelData
from hst.data.batches import PixelBatches
from hst.data.feature_files import (
    feature_file_fields,
    feature_file_paths,
    open_feature_file,
    open_or_write_feature_file,
)
from hst.data.splits import prepare_splits
from hst.models.onnx_graphs import FORWARD_BATCH, GraphRecord, OnnxSession, find_graph, requested_runtime
from hst.models.weight_files import file_sha256, weights_source


@dataclass(frozen=True)
class WrittenFeatures:
    """A complete feature file: its key and ``N×F×h×w`` shape."""

    key: str
    shape: tuple[int, ...]


def usable_graph(config: Any) -> GraphRecord | None:
    """The exported graph a frozen-backbone run of ``config`` (a TrainConfig) can use without torch, if any."""
    if config.model.trainable != "none" or requested_runtime() == "torch":
        return None
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return None
    source = weights_source(config.model.backbone, config.model.weights)
    if source is None:
        return None
    return find_graph(
        config.data.cache_dir,
        config.model.backbone,
        config.data.image_size,
        source.description,
        file_sha256(source.path),
    )


def _graph_maps(session: OnnxSession, batches: PixelBatches) -> Iterator[np.ndarray]:
    try:
        for batch in batches:
            assert batch.pixels is not None  # unreadable images raise: the cache holds every row
            yield session.run(batch.pixels)
    finally:
        batches.close()


def extract_with_graph(config: Any, progress: bool = True) -> list[WrittenFeatures] | None:
    """Fill (or find) the caches of ``config``'s training and test sources from an exported graph.

    None when there is no graph to use (:func:`usable_graph`): the caller extracts through torch instead.
    """
    record = usable_graph(config)
    if record is None:
        return None
    cache_dir = Path(config.data.cache_dir)
    splits = prepare_splits(config.data)
    sources: list[MultiLabelData] = [splits.source]
    if splits.test_source is not splits.source:
        sources.append(splits.test_source)
    session: OnnxSession | None = None  # built when the first file is written

    def maps(data: MultiLabelData) -> Iterator[np.ndarray]:
        nonlocal session
        batch_size = min(config.data.eval_batch_size, FORWARD_BATCH)
        # decoding starts before the session is built, so the first batches are ready when it is
        batches = PixelBatches(data, config.data.image_size, batch_size, threads=max(1, config.data.num_workers))
        session = session or OnnxSession(record.path)
        return _graph_maps(session, batches)

    def opened(folder: Path, key: str) -> WrittenFeatures | None:
        found = open_feature_file(*feature_file_paths(folder, key), key)
        return None if found is None else WrittenFeatures(key, tuple(int(v) for v in found[1].shape))

    written = []
    for data in sources:
        fields = feature_file_fields(
            data,
            config.model.backbone,
            str(record.fields["weights_description"]),
            record.weights_sha256,
            record.mean,
            record.std,
            config.data.image_size,
            cache_dir,
        )
        written.append(
            open_or_write_feature_file(
                opened,
                feature_file_paths,
                cache_dir,
                fields,
                data,
                partial(maps, data),
                "features",
                config.model.backbone,
                progress,
            )
        )
    return written


__all__ = ["WrittenFeatures", "extract_with_graph", "usable_graph"]
