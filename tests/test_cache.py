"""Frozen-backbone feature cache: exact features, reuse, key invalidation, torn writes, subset rows."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from hst.data.base import MultiLabelData
from hst.data.digests import DIGEST_MEMO, image_files_digest
from hst.data.spec import load_dataset
from hst.data.transforms import build_transform
from hst.feature_cache import CachedFeatureDataset, FeatureCache, extract_features, feature_cache_key
from hst.models.backbone import Backbone, create_backbone

SIZE = 64
BATCH = 5  # 12 images -> batches of 5, 5, 2: exercises partial last batches


@pytest.fixture(scope="module")
def data() -> MultiLabelData:
    return load_dataset("synthetic:12?size=64")


@pytest.fixture(scope="module")
def backbone() -> Backbone:
    return create_backbone("tf_efficientnet_lite0", "offline", trainable="none")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("features")


@pytest.fixture(scope="module")
def cache(backbone: Backbone, data: MultiLabelData, cache_dir: Path) -> FeatureCache:
    return extract_features(backbone, data, SIZE, cache_dir, batch_size=BATCH, progress=False)


def _direct_features(backbone: Backbone, data: MultiLabelData, size: int) -> torch.Tensor:
    transform = build_transform(size, "none", backbone.mean, backbone.std)
    images = torch.stack([transform(data.load_image(i)) for i in range(len(data))])
    backbone.eval()
    with torch.no_grad():
        # same batch composition as the extraction, so float32 results are bit-identical
        return torch.cat([backbone(chunk) for chunk in images.split(BATCH)])


def _write_images(root: Path, count: int) -> MultiLabelData:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = root / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    labels = np.array([[1, -1], [0, 1], [-1, 1]][:count], dtype=np.int8)
    return MultiLabelData(
        image_ids=[p.stem for p in paths],
        labels=labels,
        class_names=["a", "b"],
        image_paths=paths,
        source=f"csv:{root / 'manifest.csv'}",
    )


def test_cache_holds_the_direct_forward_features(
    cache: FeatureCache, backbone: Backbone, data: MultiLabelData, cache_dir: Path
) -> None:
    direct = _direct_features(backbone, data, SIZE)
    assert cache.features.dtype == np.float16
    assert cache.features.shape == (12, backbone.num_features, 2, 2) == tuple(direct.shape)
    assert not cache.features.flags.writeable
    assert len(cache) == 12
    assert cache.path == cache_dir / f"{cache.meta['key']}.npy"
    stored = torch.from_numpy(np.array(cache.features))
    assert torch.equal(stored, direct.half())
    as_float = cache.tensor(range(12))
    assert as_float.dtype == torch.float32
    torch.testing.assert_close(as_float, direct, rtol=1e-3, atol=1e-3)
    assert torch.equal(cache.tensor(3), as_float[3])
    assert direct.abs().max() > 0.1  # real features, not an all-zero array


def test_meta_sidecar_names_the_key_fields(cache: FeatureCache, backbone: Backbone, data: MultiLabelData) -> None:
    meta = json.loads(cache.path.with_suffix(".json").read_text())
    assert meta["key"] == feature_cache_key(data, backbone, SIZE) == cache.key
    assert meta["source"] == "synthetic:12?size=64"
    assert meta["backbone"] == "tf_efficientnet_lite0"
    assert meta["weights"] == backbone.weights_description
    assert meta["image_size"] == SIZE
    assert meta["transform"] == "resize64-bicubic-antialias-mean0.5,0.5,0.5-std0.5,0.5,0.5"
    assert meta["shape"] == [12, backbone.num_features, 2, 2]
    assert meta["image_ids"] == data.image_ids


def test_second_call_reuses_the_file(
    cache: FeatureCache, backbone: Backbone, data: MultiLabelData, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(images: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the backbone ran although the cache was complete")

    mtime = cache.path.stat().st_mtime_ns
    monkeypatch.setattr(backbone, "forward", refuse)
    again = extract_features(backbone, data, SIZE, cache_dir, batch_size=BATCH, progress=False)
    assert again.path == cache.path
    assert cache.path.stat().st_mtime_ns == mtime
    assert np.array_equal(np.asarray(again.features), np.asarray(cache.features))
    assert sorted(p.name for p in cache_dir.iterdir()) == sorted([cache.path.name, cache.path.stem + ".json"])


def test_key_changes_with_image_size_and_backbone(backbone: Backbone, data: MultiLabelData) -> None:
    base = feature_cache_key(data, backbone, SIZE)
    assert len(base) == 16 and int(base, 16) >= 0
    assert feature_cache_key(data, backbone, SIZE) == base  # deterministic
    assert feature_cache_key(data, backbone, 96) != base
    torch.manual_seed(0)
    random_a = create_backbone("tf_efficientnet_lite0", "none", trainable="none")
    torch.manual_seed(1)
    random_b = create_backbone("tf_efficientnet_lite0", "none", trainable="none")
    other_name = create_backbone("resnet18", "none", trainable="none")
    keys = {
        base,
        feature_cache_key(data, random_a, SIZE),
        feature_cache_key(data, random_b, SIZE),  # same description, other random weights
        feature_cache_key(data, other_name, SIZE),
    }
    assert len(keys) == 4


def test_key_changes_with_data(backbone: Backbone, data: MultiLabelData) -> None:
    base = feature_cache_key(data, backbone, SIZE)
    assert feature_cache_key(load_dataset("synthetic:12?size=64&seed=1"), backbone, SIZE) != base
    assert feature_cache_key(data.subset(np.arange(11)), backbone, SIZE) != base
    # labels do not enter the features, so they do not enter the key
    assert feature_cache_key(data.with_labels(np.zeros_like(data.labels)), backbone, SIZE) == base


def test_key_follows_image_contents_not_mtimes(tmp_path: Path, backbone: Backbone) -> None:
    files = _write_images(tmp_path, 3)
    base = feature_cache_key(files, backbone, SIZE)
    path = files.image_paths[1]
    stat = path.stat()
    # A copy or re-mount gives new mtimes with the same bytes: the features are still valid.
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    assert feature_cache_key(files, backbone, SIZE) == base
    original = path.read_bytes()
    path.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))  # same size, one bit different
    flipped = feature_cache_key(files, backbone, SIZE)
    assert flipped != base
    with path.open("ab") as handle:
        handle.write(b"\0")  # trailing bytes after the PNG end: a size change
    assert feature_cache_key(files, backbone, SIZE) not in {base, flipped}


def test_image_digests_are_remembered_while_size_and_mtime_hold(tmp_path: Path) -> None:
    files = _write_images(tmp_path, 3)
    memo = tmp_path / "cache" / DIGEST_MEMO
    first = image_files_digest(files, memo)
    assert first == image_files_digest(files) and memo.is_file()
    path = files.image_paths[0]
    stat = path.stat()
    original = path.read_bytes()
    path.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size and mtime: the memo is trusted, as make does
    assert image_files_digest(files, memo) == first
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))  # a new mtime: hashed again
    assert image_files_digest(files, memo) == image_files_digest(files) != first
    memo.write_text("{not json", encoding="utf-8")  # a damaged memo costs a re-hash, nothing else
    assert image_files_digest(files, memo) == image_files_digest(files)


def test_on_disk_images_are_cached(tmp_path: Path, backbone: Backbone) -> None:
    (tmp_path / "images").mkdir()
    files = _write_images(tmp_path / "images", 3)
    cache = extract_features(backbone, files, SIZE, tmp_path / "cache", progress=False)
    transform = build_transform(SIZE, "none", backbone.mean, backbone.std)
    with torch.no_grad():
        direct = backbone.eval()(torch.stack([transform(files.load_image(i)) for i in range(3)]))
    assert torch.equal(torch.from_numpy(np.array(cache.features)), direct.half())


def test_weights_file_stamp_enters_the_key(tmp_path: Path, backbone: Backbone, data: MultiLabelData) -> None:
    weights = tmp_path / "lite0.pth"
    torch.save(backbone.model.state_dict(), weights)
    from_file = create_backbone("tf_efficientnet_lite0", weights, trainable="none")
    base = feature_cache_key(data, from_file, SIZE)
    assert base != feature_cache_key(data, backbone, SIZE)  # description differs
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    assert feature_cache_key(data, from_file, SIZE) != base


def test_torn_write_leaves_nothing_open_accepts(
    tmp_path: Path, backbone: Backbone, data: MultiLabelData, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = feature_cache_key(data, backbone, SIZE)
    original = backbone.forward
    calls = {"n": 0}

    def crash_on_second_batch(images: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # an interrupt, not an Exception, must also leave no file
        return original(images)

    monkeypatch.setattr(backbone, "forward", crash_on_second_batch)
    backbone.train()
    with pytest.raises(KeyboardInterrupt):
        extract_features(backbone, data, SIZE, tmp_path, batch_size=BATCH, progress=False)
    assert calls["n"] == 2
    assert backbone.training  # the previous mode is restored
    assert FeatureCache.open(tmp_path, key) is None
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(backbone, "forward", original)
    backbone.eval()
    done = extract_features(backbone, data, SIZE, tmp_path, batch_size=BATCH, progress=False)
    assert FeatureCache.open(tmp_path, key) is not None
    assert len(done) == 12


def test_open_rejects_incomplete_or_mismatched_files(cache: FeatureCache, tmp_path: Path) -> None:
    key = cache.key
    npy, meta = cache.path, cache.path.with_suffix(".json")
    assert FeatureCache.open(tmp_path, key) is None  # nothing there

    def copy(with_npy: bool, with_meta: bool, npy_bytes: bytes | None = None, meta_text: str | None = None) -> None:
        for p in tmp_path.iterdir():
            p.unlink()
        if with_npy:
            (tmp_path / npy.name).write_bytes(npy.read_bytes() if npy_bytes is None else npy_bytes)
        if with_meta:
            (tmp_path / meta.name).write_text(meta.read_text() if meta_text is None else meta_text)

    copy(True, True)
    assert FeatureCache.open(tmp_path, key) is not None
    copy(True, False)  # crash after the array rename, before the sidecar
    assert FeatureCache.open(tmp_path, key) is None
    copy(False, True)
    assert FeatureCache.open(tmp_path, key) is None
    copy(True, True, npy_bytes=npy.read_bytes()[:-100])  # truncated array
    assert FeatureCache.open(tmp_path, key) is None
    copy(True, True, meta_text=meta.read_text()[:-10])  # truncated JSON
    assert FeatureCache.open(tmp_path, key) is None
    other = json.loads(meta.read_text())
    other["key"] = "0" * 16
    copy(True, True, meta_text=json.dumps(other))
    assert FeatureCache.open(tmp_path, key) is None


def test_subset_rows_read_the_right_cache_rows(cache: FeatureCache, data: MultiLabelData) -> None:
    picked = [7, 2, 9, 0]
    split = data.subset(picked)
    eval_labels = -split.labels
    rows = np.asarray(picked)
    dataset = CachedFeatureDataset(cache, split.labels, eval_labels, rows=rows)
    assert len(dataset) == 4
    index, features, labels, evals = dataset[1]
    assert index == 1
    assert features.dtype == torch.float32 and labels.dtype == torch.int8 and evals.dtype == torch.int8
    assert torch.equal(features, cache.tensor(2))
    assert torch.equal(labels, torch.from_numpy(data.labels[2]))
    assert torch.equal(evals, torch.from_numpy(-data.labels[2]))
    batches = list(DataLoader(dataset, batch_size=3, shuffle=False))
    assert [b[0].tolist() for b in batches] == [[0, 1, 2], [3]]
    assert torch.equal(torch.cat([b[1] for b in batches]), cache.tensor(picked))
    assert torch.equal(torch.cat([b[2] for b in batches]), torch.from_numpy(data.labels[picked]))
    with pytest.raises(ValueError, match="rows must lie"):
        CachedFeatureDataset(cache, split.labels, eval_labels, rows=[0, 1, 2, 12])
    with pytest.raises(ValueError, match="must have 4 rows"):
        CachedFeatureDataset(cache, data.labels, data.labels, rows=rows)


def test_full_dataset_without_rows_and_pickling(cache: FeatureCache, data: MultiLabelData) -> None:
    dataset = CachedFeatureDataset(cache, data.labels, data.labels)
    assert len(dataset) == 12
    assert torch.equal(dataset[11][1], cache.tensor(11))
    payload = pickle.dumps(dataset)
    assert len(payload) < 10_000  # the memory map is reopened in the worker, not copied
    restored = pickle.loads(payload)
    assert torch.equal(restored[5][1], cache.tensor(5))


def test_extract_features_command_fills_the_cache_a_frozen_run_reads(tmp_path: Path) -> None:
    from hst.cli import main
    from hst.config import TrainConfig, resolve_config
    from hst.feature_cache import extract_for_config

    overrides = [
        "data.train=synthetic:40",
        "data.image_size=64",
        "model.trainable=none",
        f"data.cache_dir={tmp_path}",
    ]
    assert main(["extract-features", *overrides]) == 0
    files = sorted(tmp_path.glob("*.npy"))
    assert len(files) == 1  # the test set is carved from the training source: one cache serves both
    caches = extract_for_config(resolve_config(TrainConfig, None, overrides), progress=False)
    assert [c.key for c in caches] == [files[0].stem] and len(caches[0]) == 40
    assert sorted(tmp_path.glob("*.npy")) == files  # reused, nothing new written
