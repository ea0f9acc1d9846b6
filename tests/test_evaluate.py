"""``hst evaluate`` scores the images through the fast inference pass exactly as the plain forward does."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hst.apps.evaluate import evaluate_checkpoint
from hst.data.spec import load_dataset
from hst.data.transforms import build_transform
from hst.engine.trained_model import TrainedModel
from hst.metrics import evaluate

pytestmark = pytest.mark.usefixtures("one_thread")


def test_evaluate_gives_the_metrics_of_the_plain_forward(
    review_checkpoint: Path, review_manifests: tuple[Path, Path]
) -> None:
    spec = f"csv:{review_manifests[0]}"
    got = evaluate_checkpoint(review_checkpoint, spec, batch_size=16)

    # The reference: the evaluation transform image by image and the whole network in torch.
    module = TrainedModel.from_checkpoint(review_checkpoint)
    data = load_dataset(spec)
    backbone = module.network.backbone
    transform = build_transform(module.config.data.image_size, "none", backbone.mean, backbone.std)
    with torch.no_grad():
        logits = torch.cat(
            [
                module(torch.stack([transform(data.load_image(i)) for i in range(start, min(start + 16, len(data)))]))
                for start in range(0, len(data), 16)
            ]
        )
    expected = evaluate(logits.numpy(), data.labels, data.class_names).to_dict()
    assert got["mAP"] == pytest.approx(expected["mAP"], abs=1e-6)
    assert expected["mAP"] > 30  # a model that learnt something: the comparison is not between two constants
    assert got["per_class_AP"].keys() == expected["per_class_AP"].keys()
    for name, ap in expected["per_class_AP"].items():
        assert got["per_class_AP"][name] == pytest.approx(ap, abs=1e-6), name
