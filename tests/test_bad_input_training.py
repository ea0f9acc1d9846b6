"""Tiny trainings on unusual but valid input (all-unknown rows, skipped files, a class without a known
positive) and on a NaN / inf loss, which stops training naming the epoch and step."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from _helpers_bad_input import _broken_folder, raises_with
from hst.config import TrainConfig, resolve_config
from hst.data.partial import make_partial
from hst.data.readers import read_csv_manifest, write_csv_manifest
from hst.data.spec import load_dataset
from hst.data.splits import prepare_splits
from hst.labels import UNKNOWN
from tiny_run import TINY

# ---------------------------------------------------------------- tiny trainings


def _loss_column(run_dir: Path) -> list[float]:
    rows = list(csv.DictReader((run_dir / "csv" / "metrics.csv").open()))
    return [float(row["train/loss_epoch"]) for row in rows if row.get("train/loss_epoch")]


def test_all_unknown_images_and_skipped_files_in_a_tiny_run(tmp_path: Path) -> None:
    from hst.engine.train import train

    manifest, bad = _broken_folder(tmp_path / "images")
    data = read_csv_manifest(manifest)
    labels = data.labels.copy()
    labels[::3] = UNKNOWN  # every third image has no known label at all
    write_csv_manifest(data.with_labels(labels), manifest, image_column=data.image_ids)
    overrides = [
        *TINY,
        f"data.train=csv:{manifest}",
        "data.proportion=1.0",
        "data.unreadable_images=skip",
        "data.batch_size=4",
        "trainer.epochs=2",
        f"trainer.output_dir={tmp_path / 'runs'}",
    ]
    config = resolve_config(TrainConfig, None, overrides)
    splits = prepare_splits(config.data)
    unknown_rows = int((splits.train.labels == UNKNOWN).all(axis=1).sum())
    assert unknown_rows >= 2

    result = train(config)
    losses = _loss_column(result.run_dir)
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    assert math.isfinite(result.test_metrics["mAP"])
    summary = (result.run_dir / "summary.txt").read_text()
    assert f"images with no known label: {unknown_rows}" in summary
    assert "skipped 4 of 24 images" in summary and all(name in summary for name in bad)


@pytest.mark.slow
def test_class_without_known_positive_trains_hst(tmp_path: Path) -> None:
    from hst.engine.train import train

    source = load_dataset("synthetic:72")
    hidden = source.class_names.index("person")
    partial = make_partial(source.labels, "entry", 0.5, seed=0)
    partial[partial[:, hidden] == 1, hidden] = UNKNOWN  # every positive of one class is hidden
    partial_file = tmp_path / "partial.csv"
    write_csv_manifest(source.with_labels(partial), partial_file, image_column=source.image_ids)
    config = resolve_config(
        TrainConfig,
        None,
        [
            *TINY,
            "data.train=synthetic:72",
            f"data.partial_labels={partial_file}",
            "trainer.epochs=3",
            f"trainer.output_dir={tmp_path / 'runs'}",
            "trainer.run_name=hidden",
        ],
    )
    has_positive = torch.from_numpy((prepare_splits(config.data).train.labels == 1).any(axis=0))
    assert not has_positive[hidden] and has_positive.sum() > 10
    result = train(config)
    losses = _loss_column(result.run_dir)
    assert len(losses) == 3 and all(math.isfinite(loss) for loss in losses)
    test = result.test_metrics
    assert math.isfinite(test["mAP"]) and math.isfinite(test["per_class_AP"]["person"])
    assert all(math.isfinite(value) for value in test["per_class_AP"].values())
    summary = (result.run_dir / "summary.txt").read_text()
    assert "classes with no known positive" in summary and ": person" in summary

    checkpoint = torch.load(result.run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    adjacency = checkpoint["state_dict"]["network.sarl.adjacency"]
    assert torch.isfinite(adjacency).all()
    assert adjacency[hidden].tolist() == [1.0 if j == hidden else 0.0 for j in range(24)]
    prototypes = checkpoint["hst_method_state"]["prototypes"]
    # Prototypes exist exactly for the classes with a known training positive.
    assert prototypes is not None and torch.equal(prototypes["valid"].any(dim=1), has_positive)
    assert torch.isfinite(prototypes["centers"]).all()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_loss_stops_training_and_keeps_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: float
) -> None:
    from hst.engine.module import load_module
    from hst.engine.train import train
    from hst.methods.base import LossOutput, PartialBCE

    original = PartialBCE.training_loss
    calls = {"count": 0}

    def poisoned(self: PartialBCE, output: object, labels: torch.Tensor, ctx: object) -> LossOutput:
        result = original(self, output, labels, ctx)  # type: ignore[arg-type]
        step = calls["count"]
        calls["count"] += 1
        if step == 4:
            return LossOutput(result.loss + bad, result.logs)
        return result

    monkeypatch.setattr(PartialBCE, "training_loss", poisoned)
    config = resolve_config(
        TrainConfig,
        None,
        [
            *TINY,
            "data.train=synthetic:72",
            "method.name=partial_bce",
            "trainer.epochs=3",
            "trainer.save_last=true",
            f"trainer.output_dir={tmp_path}",
            "trainer.run_name=nan",
        ],
    )
    raises_with(
        lambda: train(config), "non-finite training loss", "epoch 1, step 4", str(bad), error=FloatingPointError
    )
    assert calls["count"] == 5  # training stopped at the bad step
    last = tmp_path / "nan" / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=False)
    assert saved["epoch"] == 0 and saved["global_step"] == 3
    assert all(torch.isfinite(value).all() for value in saved["state_dict"].values() if value.is_floating_point())
    module, _ = load_module(last)
    assert torch.isfinite(module(torch.zeros(1, 3, 64, 64))).all()
