"""Partial-label protocols: the published recipe bit for bit, nesting, and the other schemes."""

from __future__ import annotations

import numpy as np
import pytest

from hst.data.partial import make_partial, partial_stats
from hst.labels import NEGATIVE, POSITIVE, UNKNOWN


def full_labels(n: int = 300, c: int = 20, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.where(rng.random((n, c)) < 0.2, POSITIVE, NEGATIVE).astype(np.int8)


def published_recipe(labels: np.ndarray, proportion: float, seed: int) -> np.ndarray:
    # Written out exactly as in the published code: reseed the legacy global RNG, one draw per entry.
    np.random.seed(seed)
    mask = np.random.random(labels.shape)
    mask = (mask < proportion).astype(labels.dtype)
    return (mask * labels).astype(np.int8)


@pytest.mark.parametrize("proportion", [0.1, 0.3, 0.5, 0.7, 0.9])
def test_entry_scheme_is_the_published_recipe(proportion: float) -> None:
    labels = full_labels()
    np.random.seed(12345)  # unrelated global state must not matter
    assert np.array_equal(make_partial(labels, "entry", proportion, seed=0), published_recipe(labels, proportion, 0))


def test_entry_scheme_is_nested_across_proportions() -> None:
    labels = full_labels()
    previous = np.zeros(labels.shape, dtype=bool)
    for proportion in np.round(np.arange(0.1, 1.0, 0.1), 1):
        known = make_partial(labels, "entry", float(proportion), seed=0) != UNKNOWN
        assert np.all(known[previous]), f"known set at {proportion} does not contain the smaller one"
        assert abs(known.mean() - proportion) < 0.03
        previous = known


def test_known_entries_keep_their_values_and_unknowns_stay_unknown() -> None:
    labels = full_labels()
    labels[0, :5] = UNKNOWN
    for scheme in ("entry", "image-count", "class", "single-positive"):
        partial = make_partial(labels, scheme, 0.5, seed=3)
        known = partial != UNKNOWN
        assert np.array_equal(partial[known], labels[known]), scheme
        assert np.all(partial[0, :5] == UNKNOWN), scheme


def test_image_count_scheme_keeps_the_same_count_per_image() -> None:
    labels = full_labels(c=20)
    partial = make_partial(labels, "image-count", 0.3, seed=0)
    assert set(((partial != UNKNOWN).sum(axis=1)).tolist()) == {6}


def test_class_scheme_keeps_the_same_count_per_class() -> None:
    labels = full_labels(n=300)
    partial = make_partial(labels, "class", 0.25, seed=0)
    assert set(((partial != UNKNOWN).sum(axis=0)).tolist()) == {75}


def test_single_positive_scheme() -> None:
    labels = full_labels()
    labels[7] = NEGATIVE  # an image with no positive keeps nothing
    partial = make_partial(labels, "single-positive", seed=0)
    per_image = (partial == POSITIVE).sum(axis=1)
    has_positive = (labels == POSITIVE).any(axis=1)
    assert np.all(per_image[has_positive] == 1) and np.all(per_image[~has_positive] == 0)
    assert not np.any(partial == NEGATIVE)
    # The chosen positive varies with the seed: it is drawn, not the first one.
    other = make_partial(labels, "single-positive", seed=1)
    assert not np.array_equal(partial, other)


@pytest.mark.parametrize("scheme", ["entry", "image-count", "class", "single-positive"])
def test_schemes_are_deterministic_when_seeded(scheme: str) -> None:
    labels = full_labels()
    assert np.array_equal(make_partial(labels, scheme, 0.4, seed=5), make_partial(labels, scheme, 0.4, seed=5))


def test_bad_scheme_and_proportion() -> None:
    with pytest.raises(ValueError, match="unknown partial-label scheme"):
        make_partial(full_labels(), "nope", 0.5)
    with pytest.raises(ValueError, match="proportion"):
        make_partial(full_labels(), "entry", 1.5)


def test_partial_stats_counts() -> None:
    labels = np.array([[1, -1, 0], [0, 0, 0], [1, 1, -1]], dtype=np.int8)
    stats = partial_stats(labels, ["a", "b", "c"], full=np.array([[1, -1, 1], [1, -1, -1], [1, 1, -1]]))
    assert stats.known_positives == 3 and stats.positives_total == 5 and stats.known_negatives == 2
    assert stats.images_without_known_label == 1 and stats.images_without_known_positive == 1
    assert stats.classes_without_known_positive == ["c"]
    assert abs(stats.known_fraction - 5 / 9) < 1e-12
