"""The frozen front of a partly trainable backbone, cached and trained from (hst.midlevel_cache)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from hst.config import TrainConfig, resolve_config
from hst.data.spec import load_dataset
from hst.feature_cache import FeatureCacheError
from hst.midlevel_cache import FrontCache, FrontFeatureDataset, extract_front, front_cache_fields
from hst.models.backbone import Backbone, create_backbone
from hst.models.backbone_split import find_split
from tiny_run import TINY


@pytest.fixture(scope="module")
def backbone() -> Backbone:
    return create_backbone("tf_efficientnet_lite0", "offline", "last_stage").eval()


def test_front_then_rest_is_the_backbone(backbone: Backbone) -> None:
    assert backbone.split is not None
    assert backbone.split.cut == "blocks.6" and backbone.split.rest == ("blocks.6", "conv_head", "bn2")
    images = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(backbone.forward_rest(backbone.forward_front(images)), backbone(images))
    resnet = create_backbone("resnet18", "none", "last_stage")
    assert resnet.split is not None and resnet.split.rest == ("layer4",)


def test_no_split_when_nothing_or_everything_trains_or_forward_differs() -> None:
    assert create_backbone("tf_efficientnet_lite0", "offline", "none").split is None
    assert create_backbone("tf_efficientnet_lite0", "offline", "all").split is None

    class Skipping(nn.Module):
        """forward_features adds a skip the module order cannot show: running the parts is not the forward."""

        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 3, padding=1)
            self.last = nn.Conv2d(4, 4, 3, padding=1)

        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            h = self.stem(x)
            return self.last(h) + h

    assert find_split(Skipping(), ("last",)) is None


def _tiny_data():
    return load_dataset("synthetic:12")


def test_cache_key_follows_the_cut_the_orientations_and_the_front_weights_only(
    backbone: Backbone, tmp_path: Path
) -> None:
    data = _tiny_data()
    base = front_cache_fields(data, backbone, 64, "flip")
    assert base["orientations"] == ["original", "hflip"]
    assert front_cache_fields(data, backbone, 64, "none")["orientations"] == ["original"]
    other_cut = create_backbone("tf_efficientnet_lite0", "offline", "last_stage")
    other_cut.trainable_prefixes = ("blocks.5", *other_cut.trainable_prefixes)
    assert other_cut.split is not None and other_cut.split.cut == "blocks.5"
    assert front_cache_fields(data, other_cut, 64, "flip")["cut"] == "blocks.5"
    assert front_cache_fields(data, other_cut, 64, "flip")["weights_sha256"] != base["weights_sha256"]
    trained = create_backbone("tf_efficientnet_lite0", "offline", "last_stage")
    with torch.no_grad():
        trained.model.blocks[6][0].conv_pw.weight.add_(1.0)  # the rest trains: the front's maps do not change
    assert front_cache_fields(data, trained, 64, "flip") == base
    with torch.no_grad():
        trained.model.blocks[2][0].conv_pw.weight.add_(1.0)
    assert front_cache_fields(data, trained, 64, "flip")["weights_sha256"] != base["weights_sha256"]


def test_cache_holds_both_orientations_and_the_dataset_flips_as_the_transform_draws(
    backbone: Backbone, tmp_path: Path
) -> None:
    data = _tiny_data()
    cache = extract_front(backbone, data, 64, "flip", tmp_path, batch_size=5, progress=False)
    assert cache.shape == (12, 2, 192, 2, 2) and cache.orientations == ("original", "hflip")
    again = FrontCache.open(tmp_path, cache.key)
    assert again is not None and again.shape == cache.shape
    from hst.data.transforms import build_transform

    transform = build_transform(64, "none", backbone.mean, backbone.std)
    image = transform(data.load_image(3))[None]
    with torch.no_grad():
        mirrored = backbone.forward_front(torch.flip(image, dims=[-1]))[0]
    stored = cache.rows(np.array([3]), np.array([True]))[0]
    assert torch.allclose(stored, mirrored, atol=2e-3 * float(mirrored.abs().max()))
    labels = np.zeros((12, data.labels.shape[1]), dtype=np.int8)
    dataset = FrontFeatureDataset(cache, labels, labels, rows=np.arange(12), flip=True)
    torch.manual_seed(7)
    items = dataset.__getitems__(list(range(12)))
    torch.manual_seed(7)
    draws = [bool(torch.rand(1) < 0.5) for _ in range(12)]
    assert 0 < sum(draws) < 12
    expected = cache.rows(np.arange(12), np.array(draws))
    assert torch.equal(torch.stack([item[1] for item in items]), expected)
    with pytest.raises(FeatureCacheError, match="mirrored"):
        unflipped = extract_front(backbone, data, 64, "none", tmp_path, progress=False)
        FrontFeatureDataset(unflipped, labels, labels, rows=np.arange(12), flip=True)


def _train_last_stage(tmp_path: Path, name: str, cache: str) -> dict[str, torch.Tensor]:
    from hst.engine.train import train

    overrides = [
        *TINY,
        f"trainer.output_dir={tmp_path / 'runs'}",
        f"trainer.run_name={name}",
        f"data.cache_dir={tmp_path / 'cache'}",
        f"data.feature_cache={cache}",
        "model.trainable=last_stage",
        "data.augment=flip",
        "trainer.epochs=1",
        "data.steps_per_epoch=4",
        "method.name=partial_bce",
        "trainer.early_stopping_patience=0",
        "trainer.save_last=true",
    ]
    result = train(resolve_config(TrainConfig, None, overrides))
    checkpoint = torch.load(result.run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    return checkpoint["state_dict"]


def test_training_from_the_front_cache_matches_training_from_images(tmp_path: Path) -> None:
    """Same seed, same flips: the last stage ends where the image path ends it, up to the float16 cache.

    A copy that drops the mirrored maps, or caches another layer, moves it by as much as the training does."""
    from_cache = _train_last_stage(tmp_path, "cache", "auto")
    from_images = _train_last_stage(tmp_path, "images", "'off'")
    start = create_backbone("tf_efficientnet_lite0", "offline", "last_stage").state_dict()
    difference = moved = 0.0
    for name, initial in start.items():
        if not name.startswith("model.blocks.6") or "running" in name or not initial.dtype.is_floating_point:
            continue
        key = f"network.backbone.{name}"
        step_cache, step_images = from_cache[key] - initial, from_images[key] - initial
        difference += float((step_cache - step_images).pow(2).sum())
        moved += float(step_images.pow(2).sum())
    assert moved > 0
    # measured 0.09 (float16 rounding of the cached maps under Adam); without the flips 1.2
    assert (difference / moved) ** 0.5 < 0.3
    assert any((tmp_path / "cache").glob("*.front.npy"))


def test_crop_augmentation_trains_from_images_with_a_notice(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from hst.engine.train import train

    overrides = [
        *TINY,
        f"trainer.output_dir={tmp_path}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.augment=paper",
        "trainer.epochs=1",
        "data.steps_per_epoch=1",
        "method.name=partial_bce",
    ]
    with caplog.at_level(logging.WARNING):
        result = train(resolve_config(TrainConfig, None, overrides))
    assert "cannot be applied after the backbone's frozen front" in caplog.text
    assert not any((tmp_path / "cache").glob("*.front.npy"))
    assert not any("front maps" in line for line in result.summary_lines)


def test_a_checkpoint_trained_from_the_front_cache_predicts_from_images(tmp_path: Path) -> None:
    """Checkpoints stay whole networks: on raw images they give what the cached front gave during training."""
    from hst.data.transforms import build_transform
    from hst.engine.module import PartialLabelModule
    from tiny_run import tiny_checkpoint

    cache_dir = tmp_path / "cache"
    overrides = [f"data.cache_dir={cache_dir}", "trainer.epochs=1", "data.steps_per_epoch=2", "method.name=partial_bce"]
    module = PartialLabelModule.from_checkpoint(tiny_checkpoint(tmp_path / "runs", overrides)).eval()
    assert not module.front_cached
    (meta,) = cache_dir.glob("*.front.json")
    cache = FrontCache.open(cache_dir, meta.name.removesuffix(".front.json"))
    assert cache is not None
    data = load_dataset("synthetic:72")
    backbone = module.network.backbone
    transform = build_transform(64, "none", backbone.mean, backbone.std)
    images = torch.stack([transform(data.load_image(i)) for i in range(8)])
    with torch.no_grad():
        from_images = module(images)
        from_front = module.network.from_front(cache.rows(np.arange(8))).logits
    assert torch.allclose(from_images, from_front, atol=2e-2 * float(from_images.abs().max()))
