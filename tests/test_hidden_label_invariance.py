"""Training never sees the hidden training labels: with no oracle, changing them changes nothing but diagnostics.

The full labels of the training images travel with every batch (``StepContext.full_labels``,
``FeatureBatch.full_labels``) so that methods can log how good their pseudo labels are. Here HST trains twice on
the same partial labels, once with the true full labels and once with every hidden entry flipped; the trained
parameters, the pseudo labels and every logged loss must come out bit for bit the same.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import hst.engine.train as engine_train
from hst.config import TrainConfig, resolve_config
from hst.data.splits import Splits
from hst.engine.train import train
from tiny_run import TINY

# Enough images and lenient calibration for the pseudo-label round to give pseudo positives and negatives.
INVARIANCE = [
    "data.train=synthetic:400",
    "model.trainable=none",
    "method.name=hst",
    "method.pseudo_label_epoch=1",
    "method.target_precision=0.6",
    "method.negative_precision=0.9",
    "method.calibration_min_positives=2",
    "method.pseudo_negatives=true",
    "trainer.epochs=3",
]
TRUTH_SUFFIXES = ("_correct", "_possible", "_precision", "_recall")
"""Logged values measured against the full labels: they may (and should) change with them."""


def flip_hidden(splits: Splits) -> Splits:
    """The same splits with every hidden entry of the training images' full labels negated."""
    hidden = splits.train.labels == 0
    assert hidden.any() and (splits.train_full[hidden] != 0).all()
    splits.train_full = np.where(hidden, -splits.train_full, splits.train_full).astype(splits.train_full.dtype)
    return splits


def config_for(tmp_path: Path, name: str) -> TrainConfig:
    return resolve_config(
        TrainConfig,
        None,
        [
            *TINY,
            *INVARIANCE,
            f"data.cache_dir={tmp_path / 'cache'}",
            f"trainer.output_dir={tmp_path}",
            f"trainer.run_name={name}",
        ],
    )


def run(tmp_path: Path, name: str, corrupt: Callable[[Splits], Splits] | None = None) -> tuple[dict, list[dict]]:
    """Train; the last checkpoint and the rows of the run's CSV log."""
    config = config_for(tmp_path, name)
    assert config.method.pseudo_label_oracle == "none"
    with pytest.MonkeyPatch.context() as patch:
        if corrupt is not None:
            prepare = engine_train.prepare_splits
            patch.setattr(engine_train, "prepare_splits", lambda data: corrupt(prepare(data)))
        result = train(config)
    checkpoint = torch.load(result.run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    with (result.run_dir / "csv" / "metrics.csv").open(newline="") as handle:
        return checkpoint, list(csv.DictReader(handle))


def column(rows: list[dict], name: str) -> list[str]:
    return [row.get(name) or "" for row in rows]


def test_hidden_training_labels_do_not_change_training(tmp_path: Path, one_thread: None) -> None:
    # The first run builds the feature cache and the second reads it: building it must not move torch's global
    # generator (data loaders draw from it), or the two runs would differ whatever the labels.
    honest, honest_log = run(tmp_path, "true-labels")
    flipped, flipped_log = run(tmp_path, "flipped-hidden-labels", flip_hidden)

    pseudo = honest["hst_method_state"]["pseudo_targets"]
    assert (pseudo > 0).any() and (pseudo < 0).any(), "the pseudo-label round must act for the test to mean much"
    assert torch.equal(pseudo, flipped["hst_method_state"]["pseudo_targets"])
    assert honest["state_dict"].keys() == flipped["state_dict"].keys()
    changed = [k for k, v in honest["state_dict"].items() if not torch.equal(v, flipped["state_dict"][k])]
    assert changed == [], f"parameters that depend on the hidden labels: {changed}"

    columns = set(honest_log[0]) | set(flipped_log[0])
    losses = sorted(c for c in columns if c.startswith(("train/", "val/")) and not c.endswith(TRUTH_SUFFIXES))
    assert "train/loss_step" in losses and "train/loss_epoch" in losses
    for name in losses:
        assert column(honest_log, name) == column(flipped_log, name), name
    # The flipped labels did reach the method: its pseudo-label diagnostics, measured against them, moved.
    truth = sorted(c for c in columns if c.endswith(TRUTH_SUFFIXES))
    assert any(column(honest_log, name) != column(flipped_log, name) for name in truth), truth
