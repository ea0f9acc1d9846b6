"""Files of per-image feature maps: their key fields, the float16 writer and the completeness check, in numpy.

:mod:`hst.feature_cache` (torch views, datasets, the torch-side extraction) and :mod:`hst.models.graph_features`
(the same files from an exported graph, without torch) both write through :func:`write_feature_file`, so one
key names the same bytes whichever of them wrote it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, closing, nullcontext
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from hst.data.base import IMAGE_DECODING, MultiLabelData
from hst.data.digests import DIGEST_MEMO, image_files_digest
from hst.io import atomic_path, fields_key, write_text_atomic
from hst.progress import progress_bar

CACHE_FORMAT = 1
KEY_LENGTH = 16
FP16_MAX = float(np.finfo(np.float16).max)
CacheT = TypeVar("CacheT")


class FeatureCacheError(RuntimeError):
    """Features that cannot be cached (e.g. outside the float16 range) or a cache that does not fit."""


def transform_description(image_size: int, mean: Sequence[float], std: Sequence[float]) -> str:
    """The eval transform of ``hst.data.transforms.build_transform(image_size, 'none', mean, std)`` as text."""
    mean_text = ",".join(f"{float(v):g}" for v in mean)
    std_text = ",".join(f"{float(v):g}" for v in std)
    return f"resize{int(image_size)}-bicubic-antialias-mean{mean_text}-std{std_text}"


def image_ids_digest(image_ids: Sequence[str]) -> str:
    """sha256 of the image ids joined by newlines (ids never contain one in a well-formed source)."""
    return hashlib.sha256("\n".join(image_ids).encode("utf-8")).hexdigest()


def weights_file_stamp(description: str) -> str | None:
    """Size and modification time of a state-dict file the backbone describes as ``file <path>``."""
    if not description.startswith("file "):
        return None
    path = Path(description[len("file ") :])
    try:
        stat = path.stat()
    except OSError:
        return "missing"
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def feature_file_fields(
    data: MultiLabelData,
    backbone: str,
    weights_description: str,
    weights_sha256: str,
    mean: Sequence[float],
    std: Sequence[float],
    image_size: int,
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    """Everything maps of ``backbone`` on ``data`` depend on; their file's key hashes exactly this.

    ``cache_dir``: where the image digests are remembered between runs (:func:`image_files_digest`);
    ``weights_sha256``: the sha256 of the tensors the maps depend on."""
    return {
        "format": CACHE_FORMAT,
        "source": data.source,
        "num_images": len(data),
        "image_ids_sha256": image_ids_digest(data.image_ids),
        "image_files_sha256": image_files_digest(data, None if cache_dir is None else Path(cache_dir) / DIGEST_MEMO),
        "backbone": backbone,
        "weights": weights_description,
        "weights_file_stamp": weights_file_stamp(weights_description),
        "weights_sha256": weights_sha256,
        "image_size": int(image_size),
        "transform": transform_description(image_size, mean, std),
        "image_decoding": IMAGE_DECODING,
    }


def feature_file_paths(cache_dir: Path, key: str) -> tuple[Path, Path]:
    """The array and its JSON sidecar."""
    return cache_dir / f"{key}.npy", cache_dir / f"{key}.json"


def open_feature_file(npy_path: Path, meta_path: Path, key: str) -> tuple[dict[str, Any], np.ndarray] | None:
    """(sidecar, read-only float16 memory map) of a complete file ``key``, or None if missing, torn or inconsistent."""
    if not npy_path.is_file() or not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        features = np.load(npy_path, mmap_mode="r")
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("key") != key or meta.get("format") != CACHE_FORMAT:
        return None
    if meta.get("complete") is not True or features.dtype != np.float16:
        return None
    if list(features.shape) != meta.get("shape") or len(meta.get("image_ids", ())) != features.shape[0]:
        return None
    return meta, features


def write_feature_file(
    npy_path: Path,
    meta_path: Path,
    fields: dict[str, Any],
    data: MultiLabelData,
    maps: Iterable[np.ndarray],
    what: str,
    producer: str,
    progress: bool,
) -> None:
    """Write the float32 ``maps`` (of the images of ``data`` in order, a batch at a time) as float16.

    The array is written under a temporary name and renamed when complete; the sidecar JSON comes last, so an
    interrupted run leaves nothing that :func:`open_feature_file` accepts. ``producer`` names the network in
    errors. ``maps`` is closed (if it can be) on every exit, so that an error stops its decoding at once.
    """
    key = fields_key(fields, KEY_LENGTH)
    if len(data) == 0:
        raise FeatureCacheError(f"{data.source}: no images to extract features from")
    npy_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    out: np.memmap | None = None
    row = 0
    closer: AbstractContextManager[Any] = closing(maps) if hasattr(maps, "close") else nullcontext()
    with atomic_path(npy_path) as tmp_npy, closer, progress_bar(len(data), progress, f"{what} {key}") as advance:
        for batch in maps:
            if not bool(np.isfinite(batch).all()) or float(np.abs(batch).max()) > FP16_MAX:
                raise FeatureCacheError(
                    f"{producer}: {what} of {data.source} rows {row}..{row + len(batch) - 1} are "
                    f"not finite in float16 (|x| > {FP16_MAX:g} or NaN); they cannot be cached"
                )
            if out is None:
                out = np.lib.format.open_memmap(
                    tmp_npy, mode="w+", dtype=np.float16, shape=(len(data), *batch.shape[1:])
                )
            out[row : row + len(batch)] = batch.astype(np.float16)
            row += len(batch)
            advance(len(batch))
        if out is None or row != len(data):
            raise FeatureCacheError(f"{data.source}: extracted {row} of {len(data)} images")
        written = [int(v) for v in out.shape]
        out.flush()
        del out
    meta = {
        **fields,
        "key": key,
        "complete": True,
        "shape": written,
        "dtype": "float16",
        "seconds": round(time.perf_counter() - start, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "image_ids": list(data.image_ids),
    }
    # The sidecar comes last: without it nothing of an interrupted extraction is accepted.
    write_text_atomic(meta_path, json.dumps(meta, indent=1))


def open_or_write_feature_file(
    open_cache: Callable[[Path, str], CacheT | None],
    paths: Callable[[Path, str], tuple[Path, Path]],
    cache_dir: Path,
    fields: dict[str, Any],
    data: MultiLabelData,
    maps: Callable[[], Iterable[np.ndarray]],
    what: str,
    producer: str,
    progress: bool,
) -> CacheT:
    """The file of ``fields`` in ``cache_dir`` as ``open_cache`` opens it, first written from ``maps()`` (see
    :func:`write_feature_file`) when it is missing; ``paths`` names its array and sidecar from its key."""
    key = fields_key(fields, KEY_LENGTH)
    existing = open_cache(cache_dir, key)
    if existing is not None:
        return existing
    npy_path, meta_path = paths(cache_dir, key)
    write_feature_file(npy_path, meta_path, fields, data, maps(), what, producer, progress)
    opened = open_cache(cache_dir, key)
    if opened is None:
        raise FeatureCacheError(f"{npy_path}: the cache just written cannot be opened")
    return opened


__all__ = [
    "CACHE_FORMAT",
    "FP16_MAX",
    "KEY_LENGTH",
    "FeatureCacheError",
    "feature_file_fields",
    "feature_file_paths",
    "image_ids_digest",
    "open_feature_file",
    "open_or_write_feature_file",
    "transform_description",
    "weights_file_stamp",
    "write_feature_file",
]
