"""Weak negatives withheld: in classes without a known negative, the unknown entries most like a positive are not
taken as negatives.

With positives only (single-positive labels) no precision can be measured, so no pseudo positive is given
(:mod:`hst.methods.calibration` refuses such a class) and the unknown entries are taken as negatives, as
assume-negative does. Some of them are the image's other objects. The cross-fitted evidence of
:mod:`hst.methods.cross_fitted_evidence`, with the unknown entries standing in as negatives (positive-unlabelled
learning), ranks them: in every such class the ``share × known positives`` best-ranked unknown entries are left out
of the loss. Nothing is labelled: a withheld entry claims no label, so there is no precision to promise, and a true
negative withheld costs one negative of many.
"""

from __future__ import annotations

import numpy as np

from hst.methods.cross_fitted_evidence import cross_fitted_evidence
from hst.metrics import positives_only_labels


def withheld_counts(labels: np.ndarray, share: float) -> np.ndarray:
    """Per class, how many unknown entries a class without a known negative has withheld: ``round(share × known
    positives)``, at most its unknown entries."""
    labels = np.asarray(labels)
    if share <= 0:
        return np.zeros(labels.shape[1], dtype=np.int64)
    wanted = np.round(share * (labels > 0).sum(0)).astype(np.int64)
    return np.minimum(wanted, (labels == 0).sum(0))


def withheld_weak_negatives(
    pooled: np.ndarray,
    labels: np.ndarray,
    weak: np.ndarray,
    share: float,
    neighbours: int = 20,
    probe: bool = True,
    seed: int = 0,
    bank_limit: int = 0,
) -> np.ndarray:
    """bool N×C: the unknown entries of the ``weak`` classes (bool C) left out of their negatives.

    Per weak class, ``round(share × its known positives)`` unknown entries, the highest cross-fitted scores first
    (ties by row); ``share`` 0 or no weak class withholds nothing.
    """
    labels = np.asarray(labels)
    withheld = np.zeros(labels.shape, dtype=bool)
    columns = np.flatnonzero(weak)
    if share <= 0 or len(columns) == 0:
        return withheld
    sub = labels[:, columns]
    # Positive-unlabelled: the unknown entries stand in as the negatives the score is fit against, as in model
    # selection for these classes.
    stand_in = positives_only_labels(sub)
    score = cross_fitted_evidence(pooled, stand_in, neighbours, probe, seed=seed, bank_limit=bank_limit).joint
    counts = withheld_counts(sub, share)
    for position, column in enumerate(columns):
        rows = np.flatnonzero(sub[:, position] == 0)
        count = int(counts[position])
        ranked = np.nan_to_num(score[rows, position], nan=-np.inf)
        withheld[rows[np.argsort(-ranked, kind="stable")[:count]], column] = True
    return withheld
