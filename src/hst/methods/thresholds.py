"""Pseudo-label threshold helpers: precision bounds, per-class thresholds as saved, oracle bounds, quality logs.

The calibration itself (one cross-fitted score, one threshold per class, measured where it is applied) is
:mod:`hst.methods.calibration`; the round that applies it is :mod:`hst.methods.pseudo_label_round`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NO_THRESHOLD_LOW = -np.inf
"""A negative threshold nothing stays under (the class gets no pseudo negatives)."""


def precision_bound(correct: np.ndarray, count: np.ndarray, z: float) -> np.ndarray:
    """Lower confidence bound of a precision ``correct / count``: the Wilson score bound at ``z`` standard
    deviations, or ``correct / (count + 1)`` (one unseen miss assumed) when ``z`` is 0.

    Either way a handful of lucky hits does not pass a high target; the Wilson bound also widens with fewer
    entries, which counters picking the luckiest of many cut points on a small calibration set.
    """
    correct, count = np.asarray(correct, dtype=float), np.asarray(count, dtype=float)
    if z <= 0:
        return correct / (count + 1)
    n = np.maximum(count, 1.0)
    p = correct / n
    z2 = z * z
    centre = p + z2 / (2 * n)
    spread = z * np.sqrt(np.maximum(p * (1 - p) / n + z2 / (4 * n * n), 0.0))
    return (centre - spread) / (1 + z2 / n)


@dataclass
class ClassThresholds:
    """Per-class positive (``≥``) and negative (``≤``) thresholds of one evidence source."""

    positive: np.ndarray
    negative: np.ndarray

    def to_dict(self) -> dict[str, list[float]]:
        return {"positive": self.positive.tolist(), "negative": self.negative.tolist()}


def expected_hidden_positives(labels: np.ndarray) -> np.ndarray:
    """Per class, the number of positives expected among its unknown entries: unknown count × the positive
    rate of its known entries (the two are the same in expectation when labels are hidden uniformly)."""
    known = (labels != 0).sum(0)
    rate = np.divide((labels > 0).sum(0), known, out=np.zeros(labels.shape[1]), where=known > 0)
    return (labels == 0).sum(0) * rate


ORACLES = ("none", "hidden", "clean")


def oracle_targets(targets: np.ndarray, labels: np.ndarray, full: np.ndarray, oracle: str) -> np.ndarray:
    """Pseudo labels replaced from the full training labels, to bound what pseudo labels can give.

    'hidden': every hidden positive becomes a pseudo positive (nothing else); 'clean': the wrong pseudo labels of
    ``targets`` are dropped (left unknown), the correct ones kept; 'none': ``targets`` unchanged.
    """
    if oracle == "none":
        return targets
    if oracle not in ORACLES:
        raise ValueError(f"method.pseudo_label_oracle must be one of {ORACLES}, got {oracle!r}")
    if not (full != 0).any():
        raise ValueError(f"method.pseudo_label_oracle={oracle} needs the full training labels, which this data lacks")
    if oracle == "hidden":
        return ((labels == 0) & (full > 0)).astype(np.int8)
    correct = ((targets > 0) & (full > 0)) | ((targets < 0) & (full < 0))
    return np.where(correct, targets, 0).astype(np.int8)


def quality(pseudo: np.ndarray, labels: np.ndarray, full: np.ndarray | None) -> dict[str, float]:
    """Count, precision and recall of pseudo positives and negatives against the full labels (if known).

    Recall is over the unknown entries of that polarity (the hidden positives, the hidden negatives).
    Precision counts the chosen entries that have a true label; one without any, or a recall without hidden entries,
    is left out rather than NaN.
    """
    unknown = labels == 0
    out: dict[str, float] = {}
    for name, sign in (("pos", 1), ("neg", -1)):
        chosen = unknown & (pseudo == sign)
        out[f"{name}_count"] = float(chosen.sum())
        if full is None:
            continue
        truth = full == sign
        correct = float((chosen & truth).sum())
        hidden = float((unknown & truth).sum())
        # Entries without a true label (VOC's "difficult" ones) are neither right nor wrong.
        judged = float((chosen & (full != 0)).sum())
        out[f"{name}_correct"] = correct
        out[f"{name}_possible"] = hidden
        if judged:
            out[f"{name}_precision"] = correct / judged
        if hidden:
            out[f"{name}_recall"] = correct / hidden
    return out
