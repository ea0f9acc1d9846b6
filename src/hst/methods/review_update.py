"""One model update of a review: refit the cheap model on the known labels and answers, from frozen features.

The model is the cross-fitted linear probe of the pseudo-label round (:mod:`hst.methods.pseudo_label_round`) on the
pooled features of the pretrained backbone: seconds on a CPU for a few thousand images, so it can follow a person's
answers round after round. One update gives

- the out-of-fold probability of every training entry (what the question policies rank; no entry is scored by a
  probe that saw its label);
- the completed labels: the rule of ``hst complete --precision P`` applied to the entries still unknown;
- a probe fit to every known entry, to score other images (test mAP).

Answers are not a random sample of the hidden entries (a policy chose them), so they never calibrate: the thresholds
are measured on ``calibration_labels``, the labels as they were before the review, which the protocol hid at random.
The answers are still probe targets and neighbours.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from hst.labels import LABEL_DTYPE, UNKNOWN
from hst.methods.cross_fitted_evidence import fit_probe  # the probe the round cross-fits, fit once to all entries
from hst.methods.pseudo_label_round import PseudoLabelRound, RoundSettings, pseudo_label_round

PROBE_STEPS = 100
"""L-BFGS iterations of the probe fit to all known entries (the cross-fitted probes use as many)."""


@dataclass
class ReviewModel:
    version: int
    """0 before any answer, then one more per update."""
    probability: np.ndarray
    """N×C out-of-fold probability that each training entry is positive."""
    round: PseudoLabelRound
    """The calibrated fills of the entries still unknown (``round.targets``) and their calibrations."""
    weight: np.ndarray
    bias: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    """The probe fit to every known entry, on features standardised by the training images' mean and std."""
    seconds: float

    def completed(self, labels: np.ndarray) -> np.ndarray:
        """``labels`` with their unknown entries filled where the calibrated rule labels them."""
        labels = np.asarray(labels)
        targets = self.round.targets
        return np.where((labels == UNKNOWN) & (targets != 0), targets, labels).astype(LABEL_DTYPE)

    def scores(self, pooled: np.ndarray) -> np.ndarray:
        """Probe logits (M×C) of other images' pooled features (M×F)."""
        x = (np.asarray(pooled, dtype=np.float32) - self.mean) / self.std
        return x @ self.weight + self.bias


def check_calibration_labels(labels: np.ndarray, calibration_labels: np.ndarray) -> None:
    """Every known entry of ``calibration_labels`` must be known in ``labels`` with the same value."""
    if calibration_labels.shape != labels.shape:
        raise ValueError(f"calibration labels {calibration_labels.shape} and labels {labels.shape} differ in shape")
    changed = (calibration_labels != UNKNOWN) & (calibration_labels != labels)
    if changed.any():
        raise ValueError(f"{int(changed.sum())} labels known before the review differ from the current labels")


def update_review_model(
    pooled: np.ndarray,
    labels: np.ndarray,
    calibration_labels: np.ndarray,
    settings: RoundSettings,
    version: int = 0,
) -> ReviewModel:
    """The model of the training images ``pooled`` (N×F) after learning ``labels`` (N×C, known + answers),
    calibrated on ``calibration_labels`` (the labels before the review)."""
    start = time.perf_counter()
    labels = np.asarray(labels)
    calibration_labels = np.asarray(calibration_labels)
    check_calibration_labels(labels, calibration_labels)
    if not settings.probe:
        raise ValueError("the review model is the probe: settings.probe must be true")
    result = pseudo_label_round(pooled, labels, settings, calibration_labels)
    x = np.asarray(pooled, dtype=np.float32)
    mean, std = x.mean(0), np.maximum(x.std(0), 1e-6)
    with torch.random.fork_rng():
        torch.manual_seed(settings.seed)
        weight, bias = fit_probe(
            torch.from_numpy((x - mean) / std),
            torch.as_tensor(labels.astype(np.int64)),
            result.evidence.probe_decay,
            PROBE_STEPS,
        )
    probability = 1.0 / (1.0 + np.exp(-np.asarray(result.evidence.probe, dtype=np.float64)))
    return ReviewModel(
        version=version,
        probability=probability,
        round=result,
        weight=weight.numpy(),
        bias=bias.numpy(),
        mean=mean,
        std=std,
        seconds=time.perf_counter() - start,
    )
