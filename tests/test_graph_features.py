"""The feature cache filled from an exported graph without torch: the same file as the torch path, only with the
graph of the same weights, and no torch imported at all."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import real_data
from hst.config import TrainConfig, resolve_config
from hst.data.readers import write_manifest_head
from hst.feature_cache import extract_for_config
from hst.models import onnx_graphs
from hst.models.graph_features import extract_with_graph, usable_graph
from hst.models.onnx_graphs import find_graph, write_record

PHOTOS = 6
SIZE = 224


def _overrides(manifest: Path, cache_dir: Path) -> list[str]:
    return [
        f"data.train=csv:{manifest}",
        f"data.test=csv:{manifest.with_name('test.csv')}",
        f"data.image_size={SIZE}",
        "data.val_fraction=0.34",
        f"data.cache_dir={cache_dir}",
        "model.backbone=tf_efficientnet_lite0",
        "model.weights=offline",
        "model.trainable=none",
    ]


@pytest.fixture(scope="module")
def cold(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[Path]]:
    """(manifest, cache folder, feature files): the torch path with ONNX Runtime asked for, as a first run."""
    folder = tmp_path_factory.mktemp("graph-features")
    manifest = folder / "labels.csv"
    write_manifest_head(real_data("voc2007-train", "labels.csv"), PHOTOS, manifest)
    write_manifest_head(real_data("voc2007-train", "labels.csv"), 2, folder / "test.csv")  # a source of its own
    cache_dir = folder / "cold"
    previous = os.environ.get(onnx_graphs.RUNTIME_ENV)
    os.environ[onnx_graphs.RUNTIME_ENV] = "onnxruntime"
    try:
        caches = extract_for_config(resolve_config(TrainConfig, None, _overrides(manifest, cache_dir)), progress=False)
    finally:
        if previous is None:
            del os.environ[onnx_graphs.RUNTIME_ENV]
        else:
            os.environ[onnx_graphs.RUNTIME_ENV] = previous
    return manifest, cache_dir, [cache.path for cache in caches]


def _warm_folder(cold_dir: Path, target: Path) -> Path:
    """A fresh cache folder holding only the graph (and its record) of the cold run."""
    target.mkdir()
    shutil.copytree(cold_dir / "onnx", target / "onnx")
    return target


def _sidecar(path: Path) -> dict[str, object]:
    meta = json.loads(path.with_suffix(".json").read_text())
    return {key: value for key, value in meta.items() if key not in ("seconds", "created")}


def test_the_graph_path_writes_the_file_the_torch_path_writes(
    cold: tuple[Path, Path, list[Path]], tmp_path: Path
) -> None:
    manifest, cold_dir, cold_files = cold
    assert len(cold_files) == 2  # the training source and the test source
    records = list((cold_dir / "onnx").glob("*.json"))
    assert len(records) == 1 and json.loads(records[0].read_text())["source_sha256"]

    warm_dir = _warm_folder(cold_dir, tmp_path / "warm")
    written = extract_with_graph(resolve_config(TrainConfig, None, _overrides(manifest, warm_dir)), progress=False)
    assert written is not None, "the exported graph was not used"
    assert [item.key for item in written] == [path.stem for path in cold_files]
    for item, cold_file in zip(written, cold_files, strict=True):
        warm_file = warm_dir / f"{item.key}.npy"
        assert np.array_equal(np.load(warm_file), np.load(cold_file))
        assert np.load(warm_file).astype(np.float32).std() > 0.1  # real features
        assert _sidecar(warm_file) == _sidecar(cold_file)


def test_extract_features_imports_no_torch_once_the_graph_is_exported(
    cold: tuple[Path, Path, list[Path]], tmp_path: Path
) -> None:
    manifest, cold_dir, cold_files = cold
    warm_dir = _warm_folder(cold_dir, tmp_path / "warm")
    script = textwrap.dedent(
        f"""
        import sys
        from hst.apps.extract_features import extract_features
        from hst.config import TrainConfig, resolve_config
        lines = extract_features(resolve_config(TrainConfig, None, {_overrides(manifest, warm_dir)!r}), progress=False)
        print("\\n".join(lines))
        print("torch imported:", sorted(name for name in sys.modules if name.split(".")[0] in ("torch", "timm")))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("torch imported: []"), done.stdout
    assert [line.split(":")[0] for line in done.stdout.splitlines()[:2]] == [path.stem for path in cold_files]
    for path in cold_files:
        assert np.array_equal(np.load(warm_dir / path.name), np.load(path))


def test_no_graph_of_these_weights_means_the_torch_path(cold: tuple[Path, Path, list[Path]], tmp_path: Path) -> None:
    manifest, cold_dir, _ = cold
    warm_dir = _warm_folder(cold_dir, tmp_path / "warm")
    config = resolve_config(TrainConfig, None, _overrides(manifest, warm_dir))
    record_file = next((warm_dir / "onnx").glob("*.json"))
    record = json.loads(record_file.read_text())
    assert usable_graph(config) is not None

    # a graph of other weights (here: its record names another weights file's bytes)
    record_file.write_text(json.dumps({**record, "source_sha256": "0" * 64}))
    assert usable_graph(config) is None
    # a graph that is not the one checked at export
    record_file.write_text(json.dumps(record))
    graph = record_file.with_suffix(".onnx")
    graph.write_bytes(graph.read_bytes() + b"\0")
    assert usable_graph(config) is None
    # another image size, another backbone, torch asked for, a trained backbone
    graph.write_bytes(graph.read_bytes()[:-1])
    assert usable_graph(config) is not None
    for extra in ("data.image_size=256", "model.trainable=last_stage", "model.weights=none"):
        assert usable_graph(resolve_config(TrainConfig, None, [*_overrides(manifest, warm_dir), extra])) is None
    os.environ[onnx_graphs.RUNTIME_ENV] = "torch"
    try:
        assert usable_graph(config) is None
    finally:
        del os.environ[onnx_graphs.RUNTIME_ENV]


def test_a_record_matches_only_its_own_weights_file_and_timm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    graph = tmp_path / "onnx" / "net-32px-abc.onnx"
    graph.parent.mkdir()
    graph.write_bytes(b"graph bytes")
    fields = {"backbone": "net", "image_size": 32, "weights_description": "file w.pth", "source_sha256": "aa"}
    write_record(graph, {**fields, "timm": onnx_graphs.package_version("timm"), "weights_sha256": "ff"})
    found = find_graph(tmp_path, "net", 32, "file w.pth", "aa")
    assert found is not None and found.path == graph and found.weights_sha256 == "ff"
    assert find_graph(tmp_path, "net", 32, "file w.pth", "ab") is None
    assert find_graph(tmp_path, "net", 32, "file v.pth", "aa") is None
    assert find_graph(tmp_path, "net", 64, "file w.pth", "aa") is None
    monkeypatch.setattr(onnx_graphs, "package_version", lambda name: "0.0.1")
    assert find_graph(tmp_path, "net", 32, "file w.pth", "aa") is None  # timm builds the network differently


def test_numpy_rounds_to_float16_as_torch_did(tmp_path: Path) -> None:
    # The cache files were written with torch's .half() before the writer moved to numpy.
    rng = np.random.default_rng(0)
    values = np.concatenate(
        [
            rng.normal(0, 3, 100_000),
            rng.uniform(-65504, 65504, 10_000),
            rng.uniform(-1e-7, 1e-7, 10_000),  # float16 subnormals and zero
            np.array([1 + 2.0**-11, 1 + 3 * 2.0**-11, -(1 + 2.0**-11), 65520.0, 1e-8]),  # ties, overflow, underflow
        ]
    ).astype(np.float32)
    with np.errstate(over="ignore"):
        ours = values.astype(np.float16)
    theirs = torch.from_numpy(values).half().numpy()
    assert np.array_equal(ours.view(np.uint16), theirs.view(np.uint16))


def test_weights_given_as_a_file_take_the_graph_path_until_the_file_changes(
    cold: tuple[Path, Path, list[Path]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hst.models.backbone import create_backbone

    manifest = cold[0]
    weights = tmp_path / "lite0.pth"
    torch.save(create_backbone("tf_efficientnet_lite0", "offline", "none").model.state_dict(), weights)
    cache_dir = tmp_path / "cache"
    overrides = [*_overrides(manifest, cache_dir), f"model.weights={weights}"]
    monkeypatch.setenv(onnx_graphs.RUNTIME_ENV, "onnxruntime")
    first = extract_for_config(resolve_config(TrainConfig, None, overrides), progress=False)
    monkeypatch.delenv(onnx_graphs.RUNTIME_ENV)

    again = _warm_folder(cache_dir, tmp_path / "again")
    warm_overrides = [*_overrides(manifest, again), f"model.weights={weights}"]
    written = extract_with_graph(resolve_config(TrainConfig, None, warm_overrides), progress=False)
    assert written is not None and [item.key for item in written] == [cache.key for cache in first]
    for item, cache in zip(written, first, strict=True):
        assert np.array_equal(np.load(again / f"{item.key}.npy"), np.load(cache.path))

    # Other bytes in the same file: the graph no longer stands for them.
    state = torch.load(weights, weights_only=True)
    name = next(key for key, value in state.items() if value.is_floating_point())
    state[name] = state[name] + 1.0
    torch.save(state, weights)
    assert usable_graph(resolve_config(TrainConfig, None, warm_overrides)) is None
