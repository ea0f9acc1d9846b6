"""Which (image, class) entries to ask a person next, from the current model's probabilities and labels.

Every policy has the same signature: ``policy(probability, labels, k, rng, askable)`` returns at most ``k`` rows
of ``(image, class)``, most wanted first, drawn from the ``askable`` entries (default: the unknown ones).
``probability`` is the model's out-of-fold probability that the entry is positive (the probe never saw the entry's
own label), ``labels`` the current +1/−1/0 matrix (known labels and answers so far). The review page and
``hst simulate-review`` both call :func:`ask`, so the order a person sees is the order that was measured.

Policies:

- ``random``: uniformly at random (the reference every other policy must beat);
- ``uncertain``: probability closest to 0.5 (2D active learning's most informative pair, Qi et al. 2008);
- ``positive``: most likely positive first (positives are the scarce labels);
- ``rarest``: classes with the fewest known positives first, taking turns, each its most likely positive;
- ``image``: whole images, all their askable classes together, images with the most total uncertainty first;
- ``mix``: ``uncertain``, ``positive`` and ``rarest`` taking turns, without repeats.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from hst.labels import POSITIVE, UNKNOWN

Policy = Callable[[np.ndarray, np.ndarray, int, np.random.Generator, np.ndarray], np.ndarray]
NO_ENTRIES = np.zeros((0, 2), dtype=np.int64)


def _top(priority: np.ndarray, askable: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` askable entries of highest ``priority`` (ties: lower image, then lower class first)."""
    rows, cols = np.nonzero(askable)
    if len(rows) == 0 or k <= 0:
        return NO_ENTRIES
    order = np.argsort(-priority[rows, cols], kind="stable")[:k]
    return np.stack([rows[order], cols[order]], axis=1).astype(np.int64)


def uncertainty(probability: np.ndarray) -> np.ndarray:
    """0.5 at probability 0.5, 0 at 0 or 1: how little the model knows about the entry."""
    return 0.5 - np.abs(np.asarray(probability, dtype=np.float64) - 0.5)


def random_questions(
    probability: np.ndarray, labels: np.ndarray, k: int, rng: np.random.Generator, askable: np.ndarray
) -> np.ndarray:
    return _top(rng.random(askable.shape), askable, k)


def uncertain_questions(
    probability: np.ndarray, labels: np.ndarray, k: int, rng: np.random.Generator, askable: np.ndarray
) -> np.ndarray:
    return _top(uncertainty(probability), askable, k)


def positive_questions(
    probability: np.ndarray, labels: np.ndarray, k: int, rng: np.random.Generator, askable: np.ndarray
) -> np.ndarray:
    return _top(np.asarray(probability, dtype=np.float64), askable, k)


def rarest_questions(
    probability: np.ndarray, labels: np.ndarray, k: int, rng: np.random.Generator, askable: np.ndarray
) -> np.ndarray:
    """Classes ordered by known positives (fewest first) take turns; each gives its most likely positive."""
    known_positives = (np.asarray(labels) == POSITIVE).sum(axis=0)
    class_order = np.argsort(known_positives, kind="stable")
    queues = []
    for c in class_order:
        rows = np.flatnonzero(askable[:, c])
        queues.append((c, rows[np.argsort(-probability[rows, c], kind="stable")]))
    picked: list[tuple[int, int]] = []
    depth = 0
    while len(picked) < k and any(depth < len(rows) for _, rows in queues):
        for c, rows in queues:
            if depth < len(rows) and len(picked) < k:
                picked.append((int(rows[depth]), int(c)))
        depth += 1
    return np.asarray(picked, dtype=np.int64).reshape(-1, 2)


def image_questions(
    probability: np.ndarray, labels: np.ndarray, k: int, rng: np.random.Generator, askable: np.ndarray
) -> np.ndarray:
    """All askable classes of one image at a time, as a person labels; the image whose askable entries hold the
    most uncertainty first, its classes most uncertain first (the last image may be cut at ``k``)."""
    doubt = np.where(askable, uncertainty(probability), 0.0)
    image_order = np.argsort(-doubt.sum(axis=1), kind="stable")
    picked: list[np.ndarray] = []
    count = 0
    for i in image_order:
        if count >= k:
            break
        cols = np.flatnonzero(askable[i])
        if len(cols) == 0:
            continue
        cols = cols[np.argsort(-doubt[i, cols], kind="stable")][: k - count]
        picked.append(np.stack([np.full(len(cols), i), cols], axis=1))
        count += len(cols)
    return np.concatenate(picked).astype(np.int64) if picked else NO_ENTRIES


def mix_questions(
    probability: np.ndarray, labels: np.ndarray, k: int, rng: np.random.Generator, askable: np.ndarray
) -> np.ndarray:
    """``uncertain``, ``positive`` and ``rarest`` take turns, each giving its best entry not yet picked."""
    lists = [policy(probability, labels, k, rng, askable) for policy in MIXED]
    seen: set[tuple[int, int]] = set()
    picked: list[tuple[int, int]] = []
    for depth in range(k):
        for entries in lists:
            if depth < len(entries) and len(picked) < k:
                entry = (int(entries[depth, 0]), int(entries[depth, 1]))
                if entry not in seen:
                    seen.add(entry)
                    picked.append(entry)
    return np.asarray(picked, dtype=np.int64).reshape(-1, 2)


MIXED: tuple[Policy, ...] = (uncertain_questions, positive_questions, rarest_questions)
POLICIES: dict[str, Policy] = {
    "random": random_questions,
    "uncertain": uncertain_questions,
    "positive": positive_questions,
    "rarest": rarest_questions,
    "image": image_questions,
    "mix": mix_questions,
}
DEFAULT_POLICY = "rarest"
"""The policy a review starts with: the best of a pilot on a split the measurements do not use (docs/review-loop.md)."""


def ask(
    policy: str,
    probability: np.ndarray,
    labels: np.ndarray,
    k: int,
    rng: np.random.Generator,
    askable: np.ndarray | None = None,
) -> np.ndarray:
    """The next ``k`` (image, class) entries to ask under ``policy``, most wanted first (k×2 int64, fewer when
    fewer entries are askable). ``askable`` (N×C bool) defaults to the unknown entries of ``labels``."""
    if policy not in POLICIES:
        raise ValueError(f"unknown question policy {policy!r}; expected one of {', '.join(POLICIES)}")
    labels = np.asarray(labels)
    probability = np.asarray(probability, dtype=np.float64)
    if probability.shape != labels.shape:
        raise ValueError(f"probabilities {probability.shape} and labels {labels.shape} differ in shape")
    mask = labels == UNKNOWN if askable is None else np.asarray(askable, dtype=bool) & (labels == UNKNOWN)
    return POLICIES[policy](probability, labels, int(k), rng, mask)
