"""Calibration: per class, the score threshold whose labels reach a target precision, measured where it is applied.

One score per entry, one threshold per class, and the precision of exactly that rule is estimated on the known
entries of the class. This is valid when two things hold, and the callers make sure they do:

- the score of a known entry was computed without that entry's label (out-of-fold, leave-one-out), so known and
  unknown entries are scored the same way (:mod:`hst.methods.cross_fitted_evidence`);
- the known entries are a uniform random sample of the class's entries (the partial-label protocol). When the
  known entries include no negative at all (single-positive labels) or too few, the precision cannot be measured
  and the class gets no threshold, with the reason given; the same when positives are too few.

The precision at a cut is a Wilson lower bound at ``z`` standard deviations. The cuts are walked in a fixed
sequence (``sequential``, the default): from the highest score down, from the first cut that passes to the last one
before the first that fails. Taking instead the lowest of all passing cuts (``sequential=False``) picks the luckiest
dip of the precision curve: on a known-answer simulation (tests/test_calibration.py) 14% of its thresholds fall
below the target against the 10% a one-sided 90% bound allows, and 3-8% of the sequential scan's. (The walk starts
where the labels first pass, so the fixed-sequence guarantee is not exact; starting at the first cut an all-right
sample could pass instead refuses classes whose top entries hold one early miss, for the same level.) After a
review the lowest passing cut is used (see :func:`class_threshold`).

**After a review** some once-unknown entries were answered by a person, who chose them (e.g. the most likely
positives first). The answers never calibrate, and the entries still unknown are no longer a random sample of the
once-unknown ones: the precision on the known entries overstates them. What stays valid is the count: above a cut,
the once-unknown entries hold about ``precision × U`` wanted labels (``U`` of them above the cut, a random sample
when the review began), the answers account for ``A⁺`` of those exactly, so the ``U − A`` still unknown hold
``precision × U − A⁺``. A cut passes when that share reaches the target (with the Wilson bound for the
precision); without answers it is the plain rule. A class that cannot be calibrated never borrows another class's
threshold: it gets none, and the reason is logged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hst.methods.thresholds import precision_bound

NO_THRESHOLD = np.inf
"""A threshold nothing reaches: the class gets no labels of this polarity."""


@dataclass
class Calibration:
    """Per-class thresholds of one score for one polarity, with what they rest on.

    Labels are given where ``score ≥ threshold`` (positive) or ``−score ≥ threshold`` (negative: the caller
    passes negated scores and swapped labels).
    """

    threshold: np.ndarray
    """C thresholds (``inf``: none)."""
    known_above: np.ndarray
    """C known entries at or above the threshold (the sample the precision is measured on)."""
    correct_above: np.ndarray
    """C of them with the wanted label."""
    reason: list[str]
    """Per class: empty when calibrated, otherwise why not (e.g. 'no known negatives')."""

    @property
    def calibrated(self) -> np.ndarray:
        return np.isfinite(self.threshold)

    def measured_precision(self) -> np.ndarray:
        """Per class, the precision of the rule on its known entries (NaN without a threshold)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.calibrated, self.correct_above / self.known_above, np.nan)

    def summary(self, class_names: list[str] | None = None) -> list[str]:
        """One line per class that got no threshold, naming the class and the reason."""
        names = class_names or [str(c) for c in range(len(self.threshold))]
        return [f"{names[c]}: {why}" for c, why in enumerate(self.reason) if why]


@dataclass(frozen=True)
class ReviewedPool:
    """One class's once-unknown entries (unknown in the calibration labels) after a review: their scores, which of
    them were answered, and which answers carry the label being given."""

    scores: np.ndarray
    answered: np.ndarray
    wanted: np.ndarray

    def above(self, cuts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per cut ``t``: once-unknown entries scoring ``≥ t``, answered ones among them, wanted answers among those."""
        scored = ~np.isnan(self.scores)
        s = self.scores[scored]
        counts = []
        for members in (np.ones(len(s), dtype=bool), self.answered[scored], (self.answered & self.wanted)[scored]):
            ordered = np.sort(s[members])
            counts.append(len(ordered) - np.searchsorted(ordered, cuts, side="left"))
        return counts[0], counts[1], counts[2]


def class_threshold(
    scores: np.ndarray,
    wanted: np.ndarray,
    target: float,
    min_wanted: int,
    min_other: int,
    z: float,
    reviewed: ReviewedPool | None = None,
    sequential: bool = True,
) -> tuple[float, int, int, str]:
    """Threshold ``t``: the lowest score whose known entries scoring ``≥ t`` reach ``target`` precision (Wilson
    bound at ``z``), among the cuts walked from the top down to the first failure (``sequential``) or among all.

    ``scores``: the known entries of one class (NaN = not scored, ignored); ``wanted``: which of them carry the
    label being given. Returns ``(t, entries ≥ t, wanted ones among them, reason)``; ``t = inf`` with a reason when
    there are fewer than ``min_wanted`` wanted or ``min_other`` other scored entries, or no cut reaches ``target``.
    ``reviewed``: the class's once-unknown entries after a review; the target then holds for those still unknown.
    """
    scored = ~np.isnan(scores)
    s, good = scores[scored], np.asarray(wanted, dtype=bool)[scored]
    num_good, num_other = int(good.sum()), int((~good).sum())
    if num_good < max(1, min_wanted):
        return NO_THRESHOLD, 0, 0, f"{num_good} known entries with this label (needs {max(1, min_wanted)})"
    if num_other < min_other:
        # Without entries of the other label, precision cannot be measured (e.g. single-positive labels).
        return NO_THRESHOLD, 0, 0, f"{num_other} known entries with the other label (needs {min_other})"
    order = np.argsort(-s, kind="stable")
    s, good = s[order], good[order]
    hits = np.cumsum(good)
    count = np.arange(1, len(s) + 1)
    bound = precision_bound(hits, count, z)
    where = "on its known entries"
    if reviewed is not None and reviewed.answered.any():
        # Near the top most once-unknown entries are answered and the bound's slack falls on the few left, so the
        # corrected bound dips at once there: a walk would stop before the entries left; the lowest passing cut is
        # kept after a review.
        sequential = False
        where = "on the entries a review left unknown"
        pool, asked, asked_wanted = reviewed.above(s)
        left = pool - asked
        with np.errstate(invalid="ignore", divide="ignore"):
            # nothing left to label above a cut: whatever the bound says, it fills nothing wrong
            bound = np.where(left > 0, (bound * pool - asked_wanted) / np.maximum(left, 1), bound)
    # Cut only between distinct scores: equal scores share one decision.
    cut = np.append(s[:-1] > s[1:], True)
    passes = (bound >= target) & (hits >= min_wanted)
    ok = cut & passes
    if sequential:
        position = np.arange(len(s))
        first_pass = np.flatnonzero(ok)
        walked = cut & (position >= (first_pass[0] if len(first_pass) else len(s)))
        failed = np.flatnonzero(walked & ~passes)
        ok &= position < (failed[0] if len(failed) else len(s))
    if not ok.any():
        return NO_THRESHOLD, 0, 0, f"no threshold reaches {target:g} precision {where}"
    last = int(np.flatnonzero(ok)[-1])
    return float(s[last]), int(count[last]), int(hits[last]), ""


def calibrate_scores(
    scores: np.ndarray,
    labels: np.ndarray,
    target: float,
    polarity: int = 1,
    min_wanted: int = 5,
    min_other: int = 5,
    z: float = 1.0,
    reviewed_labels: np.ndarray | None = None,
    sequential: bool = True,
) -> Calibration:
    """Per-class thresholds from the known entries of ``labels`` (N×C, +1/−1/0) and their ``scores`` (N×C).

    ``polarity`` +1 calibrates positives (``score ≥ t``), −1 negatives (``score ≤ −t``: pass the same scores,
    the returned thresholds apply to ``−score``). ``reviewed_labels``: the labels after a review (those of
    ``labels`` plus the answers); the target then holds for the entries still unknown (see the module's notes).
    ``sequential``: test the cuts in a fixed sequence (see the module's notes); False takes the lowest passing cut.
    """
    num_classes = scores.shape[1]
    signed = scores if polarity > 0 else -scores
    threshold = np.full(num_classes, NO_THRESHOLD)
    known_above = np.zeros(num_classes, dtype=np.int64)
    correct_above = np.zeros(num_classes, dtype=np.int64)
    reasons: list[str] = []
    for c in range(num_classes):
        rows = labels[:, c] != 0
        reviewed = None
        if reviewed_labels is not None:
            pool = ~rows
            answers = reviewed_labels[pool, c]
            reviewed = ReviewedPool(signed[pool, c], answers != 0, answers == polarity)
        t, n, k, why = class_threshold(
            signed[rows, c], labels[rows, c] == polarity, target, min_wanted, min_other, z, reviewed, sequential
        )
        threshold[c], known_above[c], correct_above[c] = t, n, k
        reasons.append(why)
    return Calibration(threshold, known_above, correct_above, reasons)


def apply_thresholds(scores: np.ndarray, labels: np.ndarray, calibration: Calibration, polarity: int) -> np.ndarray:
    """N×C bool: the unknown entries the calibrated rule labels with ``polarity``."""
    signed = scores if polarity > 0 else -scores
    with np.errstate(invalid="ignore"):
        return (labels == 0) & ~np.isnan(signed) & (signed >= calibration.threshold[None, :])


def clopper_pearson(correct: np.ndarray | int, count: np.ndarray | int, confidence: float = 0.95) -> tuple:
    """Two-sided Clopper–Pearson interval of ``correct / count`` (arrays or numbers): ``(low, high)``."""
    from scipy.stats import beta

    k, n = np.asarray(correct, dtype=float), np.asarray(count, dtype=float)
    alpha = 1 - confidence
    with np.errstate(invalid="ignore"):
        low = np.where(k > 0, beta.ppf(alpha / 2, k, n - k + 1), 0.0)
        high = np.where(k < n, beta.ppf(1 - alpha / 2, k + 1, n - k), 1.0)
    return low, high
