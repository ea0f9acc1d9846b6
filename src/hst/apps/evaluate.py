"""``hst evaluate``: the metrics of a trained checkpoint on a labelled dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from hst.data.datasets import ImageLabelDataset
from hst.data.spec import load_dataset
from hst.data.transforms import build_transform
from hst.engine.module import PartialLabelModule
from hst.metrics import evaluate


def evaluate_checkpoint(checkpoint_path: Path, data_spec: str, batch_size: int = 64) -> dict[str, Any]:
    """Score a dataset with a trained checkpoint and return the metrics dict."""
    module = PartialLabelModule.from_checkpoint(checkpoint_path)
    config = module.config
    data = load_dataset(data_spec).with_max_pixels(config.data.max_image_pixels)
    if data.class_names != module.class_names:
        raise ValueError(f"{data_spec}: classes differ from the checkpoint's {len(module.class_names)} classes")
    backbone = module.network.backbone
    transform = build_transform(config.data.image_size, "none", backbone.mean, backbone.std)
    loader = DataLoader(ImageLabelDataset(data, data.labels, data.labels, transform), batch_size=batch_size)
    scores = []
    with torch.no_grad():
        for _, images, _, _ in loader:
            scores.append(module(images))
    result = evaluate(torch.cat(scores).numpy(), data.labels, data.class_names)
    return result.to_dict()


__all__ = ["evaluate_checkpoint"]
