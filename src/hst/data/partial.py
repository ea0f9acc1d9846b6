"""Partial-label protocols: which entries of a full label matrix stay known.

``entry`` is the published HST/SST protocol and must stay bit-for-bit identical to it:
``np.random.seed(seed)`` then ``np.random.random((N, C)) < P`` marks the known entries. Because the same
uniform draws are thresholded, the known sets are nested across proportions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hst.labels import LABEL_DTYPE, NEGATIVE, POSITIVE, UNKNOWN, as_label_matrix, known_fraction

SCHEMES = ("entry", "image-count", "class", "single-positive")


def _check_proportion(proportion: float) -> None:
    if not 0.0 <= proportion <= 1.0:
        raise ValueError(f"proportion must be in [0, 1], got {proportion}")


def entry_mask(shape: tuple[int, int], proportion: float, seed: int) -> np.ndarray:
    """Known-entry mask of the published protocol (legacy global NumPy RNG, reseeded every call)."""
    np.random.seed(seed)
    return np.random.random(shape) < proportion


def _same_count_mask(shape: tuple[int, int], proportion: float, seed: int, axis: int) -> np.ndarray:
    """Every line along ``axis`` (1: an image's row, 0: a class's column) keeps round(P·length), chosen uniformly."""
    keep = round(proportion * shape[axis])
    order = np.argsort(np.random.default_rng(seed).random(shape), axis=axis)
    mask = np.zeros(shape, dtype=bool)
    np.put_along_axis(mask, np.take(order, np.arange(keep), axis=axis), True, axis=axis)
    return mask


def image_count_mask(shape: tuple[int, int], proportion: float, seed: int) -> np.ndarray:
    """Every image keeps the same number round(P·C) of known labels, chosen uniformly."""
    return _same_count_mask(shape, proportion, seed, axis=1)


def class_mask(shape: tuple[int, int], proportion: float, seed: int) -> np.ndarray:
    """Every class keeps round(P·N) of its entries, chosen uniformly."""
    return _same_count_mask(shape, proportion, seed, axis=0)


def single_positive_mask(labels: np.ndarray, seed: int) -> np.ndarray:
    """One known positive per image (uniform among its positives); everything else unknown."""
    labels = as_label_matrix(labels)
    rng = np.random.default_rng(seed)
    positive = labels == POSITIVE
    # Random keys on positives only; argmax picks a uniformly random positive of each row.
    keys = np.where(positive, rng.random(labels.shape), -1.0)
    chosen = keys.argmax(axis=1)
    mask = np.zeros(labels.shape, dtype=bool)
    rows = np.flatnonzero(positive.any(axis=1))
    mask[rows, chosen[rows]] = True
    return mask


def make_partial(labels: np.ndarray, scheme: str = "entry", proportion: float = 0.5, seed: int = 0) -> np.ndarray:
    """Return a copy of ``labels`` with the entries the scheme hides set to 0 (unknown).

    Entries already unknown in ``labels`` stay unknown.
    """
    labels = as_label_matrix(labels)
    if scheme == "single-positive":
        mask = single_positive_mask(labels, seed)
    else:
        _check_proportion(proportion)
        if scheme == "entry":
            mask = entry_mask(labels.shape, proportion, seed)
        elif scheme == "image-count":
            mask = image_count_mask(labels.shape, proportion, seed)
        elif scheme == "class":
            mask = class_mask(labels.shape, proportion, seed)
        else:
            raise ValueError(f"unknown partial-label scheme {scheme!r}; expected one of {', '.join(SCHEMES)}")
    return np.where(mask, labels, UNKNOWN).astype(LABEL_DTYPE)


@dataclass(frozen=True)
class PartialStats:
    """What a partial-label matrix kept, for printing and logging."""

    images: int
    classes: int
    known_fraction: float
    known_positives: int
    known_negatives: int
    positives_total: int
    images_without_known_label: int
    images_without_known_positive: int
    classes_without_known_positive: list[str]

    def lines(self) -> list[str]:
        kept = f"{self.known_positives}/{self.positives_total}" if self.positives_total else "0"
        missing = ", ".join(self.classes_without_known_positive) or "none"
        return [
            f"images: {self.images}, classes: {self.classes}",
            f"known fraction: {self.known_fraction:.4f}",
            f"known positives: {kept}, known negatives: {self.known_negatives}",
            f"images with no known label: {self.images_without_known_label}",
            f"images with no known positive: {self.images_without_known_positive}",
            f"classes with no known positive ({len(self.classes_without_known_positive)}): {missing}",
        ]


def partial_stats(partial: np.ndarray, class_names: list[str], full: np.ndarray | None = None) -> PartialStats:
    partial = as_label_matrix(partial)
    known = partial != UNKNOWN
    positive = partial == POSITIVE
    return PartialStats(
        images=partial.shape[0],
        classes=partial.shape[1],
        known_fraction=known_fraction(partial),
        known_positives=int(positive.sum()),
        known_negatives=int((partial == NEGATIVE).sum()),
        positives_total=int((full == POSITIVE).sum()) if full is not None else 0,
        images_without_known_label=int((~known.any(axis=1)).sum()),
        images_without_known_positive=int((~positive.any(axis=1)).sum()),
        classes_without_known_positive=[
            name for name, has in zip(class_names, positive.any(axis=0), strict=True) if not has
        ],
    )
