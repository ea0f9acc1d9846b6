"""The frozen backbone through ONNX Runtime: the same features as torch on real photos, and torch when it cannot."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import real_data
from hst.data.base import MultiLabelData
from hst.data.batches import PixelBatches
from hst.data.spec import load_dataset
from hst.data.transforms import build_transform, normalize_pixels
from hst.feature_cache import extract_features
from hst.models import frozen_runtime
from hst.models.backbone import Backbone, create_backbone
from hst.models.frozen_runtime import OnnxRunner, TorchRunner, frozen_features, frozen_runner, weights_fingerprint

SIZE = 224  # half the benchmark size: the same graph, a quarter of the work
PHOTOS = 6


@pytest.fixture(scope="module")
def photos() -> MultiLabelData:
    return load_dataset(f"csv:{real_data('voc2007-train', 'labels.csv')}").subset(np.arange(PHOTOS))


@pytest.fixture(scope="module")
def backbone() -> Backbone:
    return create_backbone("tf_efficientnet_lite0", "offline", trainable="none").eval()


@pytest.fixture(scope="module")
def reference(backbone: Backbone, photos: MultiLabelData) -> torch.Tensor:
    """The features as the cache has always meant them: the evaluation transform per image, torch on the batch."""
    transform = build_transform(SIZE, "none", backbone.mean, backbone.std)
    images = torch.stack([transform(photos.load_image(i)) for i in range(len(photos))])
    with torch.inference_mode():
        return backbone(images)


def _assert_within_cache_tolerance(features: torch.Tensor, reference: torch.Tensor) -> None:
    # one float16 ulp relative (the cache rounds to half of one), 1e-3 absolute for float32 rounding near zero
    torch.testing.assert_close(features.float(), reference, rtol=2.0**-10, atol=1e-3)
    same = (features.half() == reference.half()).float().mean().item()
    assert same > 0.99, f"only {same:.3%} of the float16 features match the torch path's"


def test_normalised_batches_are_the_evaluation_transform_bit_for_bit(
    backbone: Backbone, photos: MultiLabelData
) -> None:
    transform = build_transform(SIZE, "none", backbone.mean, backbone.std)
    batches = list(PixelBatches(photos, SIZE, batch_size=4))
    assert [batch.rows for batch in batches] == [[0, 1, 2, 3], [4, 5]]
    pixels = torch.from_numpy(np.concatenate([batch.pixels for batch in batches if batch.pixels is not None]))
    assert pixels.dtype == torch.uint8 and pixels.shape == (PHOTOS, SIZE, SIZE, 3)
    expected = torch.stack([transform(photos.load_image(i)) for i in range(PHOTOS)])
    assert torch.equal(normalize_pixels(pixels, backbone.mean, backbone.std), expected)


def test_onnx_runtime_features_equal_the_torch_path_on_real_photos(
    backbone: Backbone, photos: MultiLabelData, reference: torch.Tensor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = frozen_runner(backbone, SIZE, tmp_path, runtime="onnxruntime")
    assert isinstance(runner, OnnxRunner)  # not a silent fallback
    exported = list((tmp_path / "onnx").glob("*.onnx"))
    assert len(exported) == 1 and exported[0].name.startswith(f"tf_efficientnet_lite0-{SIZE}px-")

    cache = extract_features(backbone, photos, SIZE, tmp_path, batch_size=4, progress=False, runtime="onnxruntime")
    assert cache.features.shape == tuple(reference.shape)
    _assert_within_cache_tolerance(torch.from_numpy(np.array(cache.features)), reference)
    assert reference.abs().max() > 1.0  # real features, not an all-zero array

    # The cached graph is reused: a second runner exports nothing.
    def refuse(*args: object) -> None:
        raise AssertionError("exported again although the graph is cached")

    monkeypatch.setattr(frozen_runtime, "_export", refuse)
    assert isinstance(frozen_runner(backbone, SIZE, tmp_path, runtime="onnxruntime"), OnnxRunner)
    # Once exported, a handful of images runs in ONNX Runtime too (nothing left to pay for).
    assert isinstance(frozen_runner(backbone, SIZE, tmp_path, num_images=3, runtime="auto"), OnnxRunner)

    # The record beside the graph says which tensors it computes; a graph exported without one gets it on reuse.
    record = exported[0].with_suffix(".json")
    assert json.loads(record.read_text())["weights_sha256"] == weights_fingerprint(backbone)
    record.unlink()
    assert isinstance(frozen_runner(backbone, SIZE, tmp_path, runtime="onnxruntime"), OnnxRunner)
    assert json.loads(record.read_text())["weights_sha256"] == weights_fingerprint(backbone)


def test_without_onnxruntime_torch_runs_and_says_so(
    backbone: Backbone,
    photos: MultiLabelData,
    reference: torch.Tensor,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    monkeypatch.setenv(frozen_runtime.RUNTIME_ENV, "auto")
    runner = frozen_runner(backbone, SIZE, tmp_path, num_images=frozen_runtime.ONNX_MIN_IMAGES)
    assert isinstance(runner, TorchRunner)
    notice = capsys.readouterr().err.strip().splitlines()
    assert len(notice) == 1 and "onnxruntime is not installed" in notice[0] and "torch" in notice[0]

    features = torch.cat([b.features for b in frozen_features(backbone, photos, SIZE, tmp_path, runtime="onnxruntime")])
    assert "onnxruntime is not installed" in capsys.readouterr().err
    assert torch.equal(features, reference)  # the torch path is the reference computation, bit for bit
    assert not (tmp_path / "onnx").exists()


def test_a_failed_export_falls_back_to_torch(
    backbone: Backbone, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(frozen_runtime, "_export", broken)
    assert isinstance(frozen_runner(backbone, SIZE, tmp_path, runtime="onnxruntime"), TorchRunner)
    err = capsys.readouterr().err
    assert "ONNX export of tf_efficientnet_lite0 failed (unsupported operator)" in err
    # A handful of images stays in torch without exporting anything; torch can be asked for by name.
    assert isinstance(frozen_runner(backbone, SIZE, tmp_path, num_images=3), TorchRunner)
    monkeypatch.setenv(frozen_runtime.RUNTIME_ENV, "torch")
    assert isinstance(frozen_runner(backbone, SIZE, tmp_path, num_images=10_000), TorchRunner)
    assert capsys.readouterr().err == ""


def test_the_front_through_onnx_runtime_equals_torch_in_both_orientations(
    photos: MultiLabelData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hst.midlevel_cache import extract_front

    backbone = create_backbone("tf_efficientnet_lite0", "offline", trainable="last_stage").eval()
    transform = build_transform(SIZE, "none", backbone.mean, backbone.std)
    images = torch.stack([transform(photos.load_image(i)) for i in range(len(photos))])
    with torch.inference_mode():  # the front cache as it has always been meant: the mirrored normalised image
        reference = torch.stack([backbone.forward_front(images), backbone.forward_front(images.flip(-1))], dim=1)

    monkeypatch.setenv(frozen_runtime.RUNTIME_ENV, "torch")
    in_torch = extract_front(backbone, photos, SIZE, "flip", tmp_path / "torch", batch_size=4, progress=False)
    assert torch.equal(torch.from_numpy(np.array(in_torch.features)), reference.half())

    monkeypatch.setenv(frozen_runtime.RUNTIME_ENV, "onnxruntime")
    in_onnx = extract_front(backbone, photos, SIZE, "flip", tmp_path / "onnx", batch_size=4, progress=False)
    assert in_onnx.key == in_torch.key
    assert len(list((tmp_path / "onnx" / "onnx").glob(f"tf_efficientnet_lite0-{SIZE}px-front-*.onnx"))) == 1
    stored = torch.from_numpy(np.array(in_onnx.features)).float()
    for view in (0, 1):
        _assert_within_cache_tolerance(stored[:, view], reference[:, view])
    assert not torch.allclose(reference[:, 0], reference[:, 1])  # the two views differ: a real mirror
