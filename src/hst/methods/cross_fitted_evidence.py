"""Cross-fitted evidence: one score per (image, class) that never saw the label it scores.

Two parts, both from label-free image features (the pooled features of the pretrained backbone, before any
training step), standardised per class and summed:

- the classifier part: a linear probe of the pooled features, trained with BCE on the known entries, K-fold:
  each image is scored by the probe fit to the other folds (its weight decay chosen by the out-of-fold loss
  of the known entries);
- the CST part: image-level cross-image transfer, the margin of the image's nearest training images with a known
  positive of the class over those with a known negative, the image never its own neighbour
  (:func:`hst.models.cst.neighbour_margin`).

Known and unknown entries are scored by the same rule, so the known entries calibrate it
(:mod:`hst.methods.calibration`). The category features and the classifier of the network being trained are not
used here: they are fit to the known training labels, and calibrating on them overstates the precision.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from hst.methods.neighbour_evidence import NeighbourIndex, standardised

PROBE_DECAYS = (1e-3, 1e-2, 1e-1)
"""Weight decays (on the mean BCE) the probe chooses from by the out-of-fold BCE of the known entries."""


@dataclass
class CrossFittedEvidence:
    joint: np.ndarray
    """N×C standardised probe logit + standardised neighbour margin (the score that is calibrated and applied)."""
    probe: np.ndarray
    """N×C out-of-fold probe logits."""
    margin: np.ndarray
    """N×C leave-one-out neighbour margins (NaN: the class has no known positive or negative to compare with)."""
    probe_decay: float


def _folds(num: int, folds: int, seed: int) -> np.ndarray:
    """Fold of every image, balanced and seeded."""
    order = np.random.default_rng(seed).permutation(num)
    fold = np.empty(num, dtype=np.int64)
    fold[order] = np.arange(num) % folds
    return fold


def fit_probe(x: torch.Tensor, labels: torch.Tensor, decay: float, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and biases of a linear probe fit by L-BFGS to the known entries of ``labels`` (mean BCE + decay)."""
    known = labels != 0
    target = (labels > 0).float()
    counts = known.sum(0).clamp(min=1)
    prior = ((labels > 0).sum(0) + 1) / (counts + 2)
    weight = torch.zeros(x.shape[1], labels.shape[1], requires_grad=True)
    bias = torch.log(prior / (1 - prior)).clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = x @ weight + bias
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
        loss = (bce * known).sum() / known.sum().clamp(min=1) + decay * (weight * weight).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach(), bias.detach()


def cross_fitted_probe(
    pooled: np.ndarray,
    labels: np.ndarray,
    folds: int = 5,
    seed: int = 0,
    steps: int = 100,
    decays: tuple[float, ...] = PROBE_DECAYS,
) -> tuple[np.ndarray, float]:
    """Out-of-fold logits (N×C) of a linear probe of standardised ``pooled`` features, and the decay chosen."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        x = torch.as_tensor(np.asarray(pooled, dtype=np.float32))
        x = (x - x.mean(0)) / x.std(0).clamp(min=1e-6)
        y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
        fold = torch.from_numpy(_folds(len(x), folds, seed))
        best: tuple[float, np.ndarray, float] | None = None
        for decay in decays:
            logits = torch.zeros(y.shape, dtype=torch.float32)
            for f in range(folds):
                held = fold == f
                weight, bias = fit_probe(x[~held], y[~held], decay, steps)
                logits[held] = x[held] @ weight + bias
            known = y != 0
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits[known], (y[known] > 0).float()).item()
            if best is None or loss < best[0]:
                best = (loss, logits.numpy(), decay)
    assert best is not None
    return best[1], best[2]


def _standardised_over_images(values: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a class without any margin has an all-NaN column
        mean, std = np.nanmean(values, 0), np.nanstd(values, 0)
    return standardised(values, mean, std)


def cross_fitted_evidence(
    pooled: np.ndarray,
    labels: np.ndarray,
    neighbours: int = 20,
    probe: bool = True,
    folds: int = 5,
    seed: int = 0,
    bank_limit: int = 0,
) -> CrossFittedEvidence:
    """The cross-fitted scores of every entry of the images ``pooled`` (N×F), from their known ``labels`` (N×C).

    ``neighbours`` 0 leaves the CST part out, ``probe`` False the classifier part (one must stay).
    """
    if neighbours <= 0 and not probe:
        raise ValueError("cross-fitted evidence needs the probe, the neighbours, or both")
    labels = np.asarray(labels)
    shape = labels.shape
    nan = np.full(shape, np.nan, dtype=np.float32)
    logits, decay = cross_fitted_probe(pooled, labels, folds, seed) if probe else (nan, float("nan"))
    margin = NeighbourIndex(pooled, labels, bank_limit).margins(None, neighbours) if neighbours > 0 else nan
    joint = np.zeros(shape, dtype=np.float64)
    if probe:
        joint += _standardised_over_images(logits)
    if neighbours > 0:
        joint += _standardised_over_images(margin)
    return CrossFittedEvidence(joint, logits, margin, decay)
