"""Calibrated pseudo-label thresholds: per class, from the known entries, to a target precision.

Labels are hidden uniformly at random (the partial-label protocol), so among the entries a module scores,
the known ones are a fair sample of the unknown ones: the precision a threshold reaches on known entries
estimates the precision it reaches on unknown ones. The scores used for calibration must not have seen the
entry they score, nor features fit to that entry's label (IST leaves the entry's own label out; CST compares
with prototypes of the other half of the images and, since the category features of known training entries were
fit to their labels, is calibrated on validation images, like the classifier).

A threshold is recomputed at every pseudo-label epoch from the current scores, so it does not depend on how
many optimizer steps a run takes (the learned DTL scalars do; see ``docs/method.md``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

NO_THRESHOLD_HIGH = np.inf
"""A positive threshold nothing reaches (the class gets no pseudo positives)."""
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


def positive_threshold(
    scores: np.ndarray, positive: np.ndarray, target: float, min_positives: int, z: float = 0.0
) -> float:
    """The lowest score ``t`` such that the known entries scoring ``≥ t`` are at least ``target`` precise.

    ``scores``/``positive``: the scored known entries of one class (NaN scores are ignored). Precision over
    the top ``k`` entries is estimated by :func:`precision_bound` (``z``), and at least ``min_positives`` true
    positives must lie above ``t``. Returns ``inf`` when no threshold qualifies.
    """
    scored = ~np.isnan(scores)
    s, pos = scores[scored], positive[scored].astype(bool)
    if int(pos.sum()) < max(1, min_positives):
        return NO_THRESHOLD_HIGH
    order = np.argsort(-s, kind="stable")
    s, pos = s[order], pos[order]
    true_pos = np.cumsum(pos)
    precision = precision_bound(true_pos, np.arange(1, len(s) + 1), z)
    # Only cut between distinct scores: equal scores share one decision.
    cut = np.append(s[:-1] > s[1:], True)
    ok = cut & (precision >= target) & (true_pos >= min_positives)
    if not ok.any():
        return NO_THRESHOLD_HIGH
    return float(s[np.flatnonzero(ok)[-1]])


def negative_threshold(
    scores: np.ndarray, positive: np.ndarray, target: float, min_negatives: int = 20, z: float = 0.0
) -> float:
    """The highest score ``t`` such that the known entries scoring ``≤ t`` are at least ``target`` negative.

    Precision of negatives over the lowest ``k`` entries is estimated by :func:`precision_bound` (``z``), with
    at least ``min_negatives`` of them. Returns ``-inf`` when no threshold qualifies.
    """
    scored = ~np.isnan(scores)
    s, neg = scores[scored], ~positive[scored].astype(bool)
    if int(neg.sum()) < min_negatives:
        return NO_THRESHOLD_LOW
    order = np.argsort(s, kind="stable")
    s, neg = s[order], neg[order]
    true_neg = np.cumsum(neg)
    precision = precision_bound(true_neg, np.arange(1, len(s) + 1), z)
    cut = np.append(s[:-1] < s[1:], True)
    ok = cut & (precision >= target) & (true_neg >= min_negatives)
    if not ok.any():
        return NO_THRESHOLD_LOW
    return float(s[np.flatnonzero(ok)[-1]])


@dataclass
class ClassThresholds:
    """Per-class positive (``≥``) and negative (``≤``) thresholds of one evidence source."""

    positive: np.ndarray
    negative: np.ndarray

    def to_dict(self) -> dict[str, list[float]]:
        return {"positive": self.positive.tolist(), "negative": self.negative.tolist()}


def calibrate(
    scores: np.ndarray,
    labels: np.ndarray,
    target_precision: float,
    negative_precision: float,
    min_positives: int,
    pooled: bool = False,
    z: float = 0.0,
) -> ClassThresholds:
    """Thresholds per class from the known entries of ``labels`` (N×C, +1/−1/0) and their ``scores`` (N×C,
    NaN = not scored).

    ``pooled``: one threshold for all classes from the known entries of all classes together (for scores
    on a common scale, such as probabilities, when each class has too few known entries on its own); a class
    with enough known positives still gets its own. ``z``: see :func:`precision_bound`.
    """
    num_classes = scores.shape[1]
    known = labels != 0
    positive = np.full(num_classes, NO_THRESHOLD_HIGH)
    negative = np.full(num_classes, NO_THRESHOLD_LOW)
    for c in range(num_classes):
        rows = known[:, c]
        positive[c] = positive_threshold(scores[rows, c], labels[rows, c] > 0, target_precision, min_positives, z=z)
        negative[c] = negative_threshold(scores[rows, c], labels[rows, c] > 0, negative_precision, z=z)
    if pooled:
        all_scores, all_positive = scores[known], labels[known] > 0
        shared_pos = positive_threshold(all_scores, all_positive, target_precision, min_positives, z=z)
        shared_neg = negative_threshold(all_scores, all_positive, negative_precision, z=z)
        few = (labels > 0).sum(0) < min_positives
        positive = np.where(few & np.isinf(positive), shared_pos, positive)
        negative = np.where(few & np.isinf(negative), shared_neg, negative)
    return ClassThresholds(positive, negative)


def expected_hidden_positives(labels: np.ndarray) -> np.ndarray:
    """Per class, the number of positives expected among its unknown entries: unknown count × the positive
    rate of its known entries (the two are the same in expectation when labels are hidden uniformly)."""
    known = (labels != 0).sum(0)
    rate = np.divide((labels > 0).sum(0), known, out=np.zeros(labels.shape[1]), where=known > 0)
    return (labels == 0).sum(0) * rate


@dataclass
class PseudoLabelDecision:
    """The pseudo labels of one epoch (N×C, +1/−1/0 on unknown entries only) and what each source did."""

    targets: np.ndarray
    """int8 N×C: +1 pseudo positive, −1 pseudo negative, 0 none (always 0 on known entries)."""
    sources: dict[str, np.ndarray] = field(default_factory=dict)
    """Per evidence source, int8 N×C: +1 / −1 where that source alone would assign a pseudo label."""
    thresholds: dict[str, ClassThresholds] = field(default_factory=dict)


def decide(
    labels: np.ndarray,
    scores: dict[str, np.ndarray],
    thresholds: dict[str, ClassThresholds],
    rank_by: np.ndarray,
    negatives: bool,
    cap_share: float = 1.0,
) -> PseudoLabelDecision:
    """Combine the calibrated sources into one pseudo-label matrix for the unknown entries of ``labels``.

    A positive: any source scores the entry at or above its class's positive threshold; per class at most
    ``cap_share`` × the expected number of hidden positives are kept, highest ``rank_by`` first. A negative (when
    ``negatives``): not a positive, and every source that scores the entry is at or below its negative
    threshold, at least one of them scoring it.
    """
    unknown = labels == 0
    num, num_classes = labels.shape
    votes_pos = np.zeros((num, num_classes), dtype=bool)
    neg_ok = np.ones((num, num_classes), dtype=bool)
    scored_any = np.zeros((num, num_classes), dtype=bool)
    sources: dict[str, np.ndarray] = {}
    for name, score in scores.items():
        t = thresholds[name]
        scored = ~np.isnan(score)
        with np.errstate(invalid="ignore"):
            pos = scored & (score >= t.positive[None, :]) & unknown
            neg = scored & (score <= t.negative[None, :]) & unknown
        sources[name] = pos.astype(np.int8) - (neg & ~pos).astype(np.int8)
        votes_pos |= pos
        neg_ok &= ~scored | neg
        scored_any |= scored
    cap = np.floor(cap_share * expected_hidden_positives(labels)).astype(int)
    keep = np.zeros_like(votes_pos)
    for c in range(num_classes):
        rows = np.flatnonzero(votes_pos[:, c])
        if len(rows) > cap[c]:
            rows = rows[np.argsort(-rank_by[rows, c], kind="stable")[: cap[c]]]
        keep[rows, c] = True
    targets = keep.astype(np.int8)
    if negatives:
        targets -= (neg_ok & scored_any & unknown & ~keep).astype(np.int8)
    return PseudoLabelDecision(targets, sources, dict(thresholds))


def by_agreement(decision: PseudoLabelDecision) -> dict[str, np.ndarray]:
    """The pseudo positives split by how many sources voted for them: ``agreed`` (two or more) and ``single``.

    On VOC at 10% known the two differ far more in precision than any threshold setting moves it, so the run
    logs both (docs/results.md).
    """
    votes = sum((source > 0).astype(np.int8) for source in decision.sources.values())
    positive = decision.targets > 0
    return {
        "agreed": (positive & (votes >= 2)).astype(np.int8),
        "single": (positive & (votes == 1)).astype(np.int8),
    }


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
    A precision without pseudo labels, or a recall without hidden entries, is left out rather than NaN.
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
        out[f"{name}_correct"] = correct
        out[f"{name}_possible"] = hidden
        if out[f"{name}_count"]:
            out[f"{name}_precision"] = correct / out[f"{name}_count"]
        if hidden:
            out[f"{name}_recall"] = correct / hidden
    return out
