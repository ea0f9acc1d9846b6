"""Heads trained on real frozen features (a VOC 2007 subset): assume-negative no longer collapses, and HST's
pseudo positives on real photos are far more precise than the unknown entries' base rate."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from conftest import real_data
from hst.config import TrainConfig, resolve_config
from hst.data.readers import write_manifest_head
from hst.data.splits import prepare_splits
from hst.engine.train import train
from hst.metrics import chance_map

SUBSET = 400


def _subset_manifest(tmp_path: Path) -> Path:
    """The first ``SUBSET`` VOC images as a CSV manifest in ``tmp_path`` (image paths made absolute)."""
    out = tmp_path / "voc-subset.csv"
    write_manifest_head(real_data("voc2007-train", "labels.csv"), SUBSET, out)
    return out


def _config(tmp_path: Path, manifest: Path, *extra: str) -> TrainConfig:
    return resolve_config(
        TrainConfig,
        None,
        [
            f"data.train=csv:{manifest}",
            "data.proportion=0.3",
            "data.image_size=224",
            "data.val_fraction=0.2",
            "data.test_fraction=0.25",
            f"data.cache_dir={tmp_path / 'cache'}",
            "model.trainable=none",
            "model.feature_dim=64",
            "model.hidden_dim=32",
            "optim.lr=1e-3",
            "optim.weight_decay=1e-2",
            "trainer.epochs=8",
            "trainer.progress_bar=false",
            f"trainer.output_dir={tmp_path / 'runs'}",
            *extra,
        ],
    )


@pytest.mark.slow
def test_assume_negative_and_hst_on_real_features(tmp_path: Path) -> None:
    manifest = _subset_manifest(tmp_path)
    config = _config(tmp_path, manifest, "method.name=assume_negative", "trainer.run_name=an")
    chance = chance_map(prepare_splits(config.data).test.labels)
    negative = train(config)
    # Before class biases started at the prior, assume-negative SARL saturated its tanh units and scored every
    # image alike (15 mAP at 10% known on VOC); chance here is about 10.
    assert negative.test_metrics["mAP"] > chance + 30

    hst = train(_config(tmp_path, manifest, "method.name=hst", "trainer.run_name=hst"))
    assert hst.test_metrics["mAP"] > chance + 30
    rows = list(csv.DictReader((hst.run_dir / "csv" / "metrics.csv").open()))
    last = [row for row in rows if row.get("method/pseudo_all_pos_count")][-1]
    hidden_pos = float(last["method/pseudo_all_pos_possible"])
    base_rate = hidden_pos / (hidden_pos + float(last["method/pseudo_all_neg_possible"]))
    assert float(last["method/pseudo_all_pos_count"]) > 0.1 * hidden_pos
    assert float(last["method/pseudo_all_pos_precision"]) > base_rate + 0.5
    # The round says what it rests on: the classes it calibrated and the precision it measured on their known entries.
    assert float(last["method/calibrated_positive_classes"]) >= 1
    assert float(last["method/calibrated_positive_known_precision"]) >= 0.9
