"""Per-class decision thresholds tuned on the validation split after training, stored in the checkpoints."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hst.checkpoint import read_checkpoint, save_checkpoint
from hst.config import TrainConfig
from hst.engine.datamodule import PartialLabelDataModule
from hst.engine.module import PartialLabelModule
from hst.engine.trained_model import DEFAULT_THRESHOLD
from hst.engine.trainer import build_trainer
from hst.io import write_text_atomic


@dataclass
class ThresholdTuning:
    """Per-class thresholds maximising F1 over the known validation labels of each class."""

    thresholds: np.ndarray
    """C float64; ``default`` for classes with too few known positives."""
    f1: np.ndarray
    """C float64, F1 (in [0, 1]) at the chosen threshold; NaN where not tuned."""
    known: np.ndarray
    """C int, known entries per class."""
    positives: np.ndarray
    """C int, known positives per class."""

    @property
    def tuned(self) -> np.ndarray:
        return ~np.isnan(self.f1)


def tune_thresholds(
    probabilities: np.ndarray, labels: np.ndarray, default: float = DEFAULT_THRESHOLD, min_positives: int = 1
) -> ThresholdTuning:
    """Per class, the threshold τ (predict positive when p ≥ τ) with the best F1 on the known entries.

    Only cuts between distinct probabilities are candidates; τ is the midpoint between the lowest
    probability kept and the highest one left out (the lowest probability when all are kept). Among
    equal F1 the highest τ wins. Classes with fewer than ``min_positives`` known positives (at least one)
    keep ``default``: a threshold fitted to one or two examples is noise.
    """
    probs = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels)
    if probs.shape != labels.shape or probs.ndim != 2:
        raise ValueError(f"probabilities {probs.shape} and labels {labels.shape} must be the same N×C shape")
    num_classes = probs.shape[1]
    thresholds = np.full(num_classes, float(default))
    f1 = np.full(num_classes, np.nan)
    known_counts = (labels != 0).sum(axis=0)
    positive_counts = (labels > 0).sum(axis=0)
    for c in range(num_classes):
        known = labels[:, c] != 0
        if positive_counts[c] < max(1, min_positives):
            continue
        order = np.argsort(-probs[known, c], kind="stable")
        scores = probs[known, c][order]
        positive = labels[known, c][order] > 0
        true_pos = np.cumsum(positive)
        predicted = np.arange(1, len(scores) + 1)
        values = 2 * true_pos / (predicted + positive_counts[c])
        # Only cut where the next probability is strictly lower: equal probabilities share one decision.
        cut = np.append(scores[:-1] > scores[1:], True)
        best = int(np.flatnonzero(cut)[np.argmax(values[cut])])
        below = scores[best + 1] if best + 1 < len(scores) else scores[best]
        thresholds[c] = (scores[best] + below) / 2
        f1[c] = values[best]
    return ThresholdTuning(thresholds, f1, known_counts, positive_counts)


def tune_checkpoints(
    config: TrainConfig,
    run_dir: Path,
    module: PartialLabelModule,
    datamodule: PartialLabelDataModule,
    paths: list[Path],
    best: Path | None,
) -> list[str]:
    """Tune each written checkpoint's thresholds on the validation split and store them in the file.

    The best checkpoint's thresholds also go to ``run_dir/thresholds.json``. The validation pass runs on
    the trainer's accelerator, without loggers, on the validation split even under ``select_on=test``.
    """
    paths = sorted(set(paths), key=lambda p: p == best)  # the best one last, so the module ends with it
    if not paths:
        return []
    # The class attribute, not the instance's: under select_on=test the instance's loader is the test split.
    loader = PartialLabelDataModule.val_dataloader(datamodule)
    trainer = build_trainer(config, run_dir, [], log=False)
    lines: list[str] = []
    done: dict[tuple[int, int], ThresholdTuning] = {}
    for path in paths:
        payload = read_checkpoint(path)
        # best.ckpt and last.ckpt of the same step hold the same weights: one validation pass serves both.
        step = (int(payload.get("epoch", -1)), int(payload.get("global_step", -1)))
        if step not in done:
            trainer.validate(module, dataloaders=loader, ckpt_path=str(path), verbose=False)
            logits, labels = module.last_scores["val"]
            probs = torch.sigmoid(torch.from_numpy(logits).double()).numpy()
            done[step] = tune_thresholds(probs, labels, min_positives=config.trainer.threshold_min_positives)
        tuning = done[step]
        module.decision_thresholds = [float(t) for t in tuning.thresholds]
        module.thresholds_tuned = True
        if not trainer.is_global_zero:
            continue
        payload["hst_thresholds"] = list(module.decision_thresholds)
        payload["hst_thresholds_tuned"] = True
        save_checkpoint(payload, path)
        if best is not None and path == best:
            _write_thresholds_json(run_dir / "thresholds.json", config, module.class_names, tuning, path, run_dir)
            lines.append(
                f"per-class thresholds tuned on validation F1 for {int(tuning.tuned.sum())}/{len(tuning.tuned)} "
                "classes (the rest keep 0.5): thresholds.json"
            )
    return lines


def _write_thresholds_json(
    path: Path,
    config: TrainConfig,
    class_names: list[str],
    tuning: ThresholdTuning,
    checkpoint: Path,
    run_dir: Path,
) -> None:
    classes = {
        name: {
            "threshold": float(tuning.thresholds[c]),
            "f1": None if np.isnan(tuning.f1[c]) else float(tuning.f1[c]),
            "known": int(tuning.known[c]),
            "known_positives": int(tuning.positives[c]),
            "tuned": bool(tuning.tuned[c]),
        }
        for c, name in enumerate(class_names)
    }
    write_json(
        path,
        {
            "checkpoint": Path(os.path.relpath(checkpoint.resolve(), run_dir.resolve())).as_posix(),
            "split": "val",
            "val_labels": config.data.val_labels,
            "rule": "per class, the probability threshold with the best F1 over the known validation labels; "
            f"classes with fewer than {config.trainer.threshold_min_positives} known validation positives keep "
            f"{DEFAULT_THRESHOLD}",
            "classes": classes,
        },
    )


def write_json(path: Path, payload: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2))
