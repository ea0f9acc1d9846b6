"""The one label representation used everywhere: an int8 matrix with +1 / -1 / 0.

+1 = known positive, -1 = known negative, 0 = unknown. Rows are images, columns are classes.
Other code bases use 1 / 0 / -1 (positive / negative / unknown); convert at the edges with
:func:`from_pos1_neg0_unk_minus1` and :func:`to_pos1_neg0_unk_minus1`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

POSITIVE = 1
NEGATIVE = -1
UNKNOWN = 0
LABEL_DTYPE = np.int8


def as_label_matrix(values: np.ndarray | Sequence[Sequence[int]]) -> np.ndarray:
    """Validate and return an int8 N×C matrix whose entries are all in {-1, 0, +1}."""
    array = np.asarray(values)
    if array.ndim != 2:
        raise ValueError(f"a label matrix must be 2-D (images × classes), got shape {array.shape}")
    if array.size and not np.isin(array, (-1, 0, 1)).all():
        bad = np.argwhere(~np.isin(array, (-1, 0, 1)))[0]
        raise ValueError(
            f"label matrix entry (row {bad[0]}, column {bad[1]}) is {array[tuple(bad)]!r}; "
            "allowed values are 1 (positive), -1 (negative), 0 (unknown)"
        )
    return array.astype(LABEL_DTYPE, copy=False)


def from_pos1_neg0_unk_minus1(values: np.ndarray) -> np.ndarray:
    """Convert the 1 = positive / 0 = negative / -1 = unknown convention to ours."""
    array = np.asarray(values)
    if array.size and not np.isin(array, (-1, 0, 1)).all():
        raise ValueError("values must be in {1, 0, -1} (positive, negative, unknown)")
    out = np.zeros(array.shape, dtype=LABEL_DTYPE)
    out[array == 1] = POSITIVE
    out[array == 0] = NEGATIVE
    return out


def to_pos1_neg0_unk_minus1(labels: np.ndarray) -> np.ndarray:
    """Convert our labels to the 1 = positive / 0 = negative / -1 = unknown convention."""
    labels = as_label_matrix(labels)
    out = np.full(labels.shape, -1, dtype=LABEL_DTYPE)
    out[labels == POSITIVE] = 1
    out[labels == NEGATIVE] = 0
    return out


def known_fraction(labels: np.ndarray) -> float:
    """Fraction of entries that are known (positive or negative)."""
    return float((labels != UNKNOWN).mean()) if labels.size else 0.0


def classes_without_negatives(labels: np.ndarray) -> np.ndarray:
    """bool C: the classes with no known negative (single-positive labels), whose precision cannot be measured."""
    return ~(np.asarray(labels) == NEGATIVE).any(axis=0)


def cooccurrence_counts(labels: np.ndarray) -> np.ndarray:
    """C×C counts of images in which both classes are known positive (diagonal = class counts)."""
    positive = (np.asarray(labels) == POSITIVE).astype(np.int64)
    return positive.T @ positive
