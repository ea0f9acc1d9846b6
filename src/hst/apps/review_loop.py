"""The review loop: ask, take answers, update the model, ask again; what the review page and the simulator share.

A :class:`ReviewLoop` holds the training images' pooled features, the labels as they were before the review (they
alone calibrate, :mod:`hst.methods.review_update`), the current labels (those plus every answer), the answers in
the order given, and the latest model. ``questions`` ranks the open entries with a question policy
(:mod:`hst.methods.question_policy`); ``answer`` records answers at once; ``update`` refits the model from a
snapshot of the labels, so answers given while an update runs are kept and learnt by the next one; ``retract``
takes answers back (a page's undo). A lock guards the labels, so a page may call ``answer`` from one thread while
``update`` runs in another.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from hst.labels import LABEL_DTYPE, UNKNOWN, as_label_matrix
from hst.methods.pseudo_label_round import RoundSettings
from hst.methods.question_policy import DEFAULT_POLICY, POLICIES, ask
from hst.methods.review_update import ReviewModel, update_review_model


@dataclass(frozen=True)
class Answer:
    image: int
    label: int
    value: int
    """+1, −1, or 0 for "cannot tell" (the entry stays unknown and is not asked again)."""
    version: int
    """The model version that ranked the question."""


class ReviewLoop:
    def __init__(
        self,
        pooled: np.ndarray,
        labels: np.ndarray,
        settings: RoundSettings,
        policy: str = DEFAULT_POLICY,
        seed: int = 0,
        model: ReviewModel | None = None,
        skip_filled: bool = False,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown question policy {policy!r}; expected one of {', '.join(POLICIES)}")
        self.pooled = np.asarray(pooled)
        self.before = as_label_matrix(labels).copy()
        """The labels before the review: the only ones that calibrate."""
        self.labels = self.before.copy()
        self.asked = np.zeros(self.labels.shape, dtype=bool)
        self.answers: list[Answer] = []
        self.settings = settings
        self.policy = policy
        self.rng = np.random.default_rng(seed)
        self.model = model
        """The latest model (None before the first update); one computed on ``labels`` can be passed in."""
        self.skip_filled = skip_filled
        """Ask only entries the calibrated rule leaves unknown (an answer to a filled entry adds no label)."""
        self.learnt = 0
        """How many answers the latest model learnt from (those given before its update began)."""
        self._version = -1
        """The latest model's version when no model is held (see ``resume``)."""
        self._lock = threading.Lock()

    @property
    def version(self) -> int:
        return self._version if self.model is None else self.model.version

    def resume(self, version: int, learnt: int) -> None:
        """Go on from a model kept elsewhere (a review page's saved ranking): the next update is ``version + 1``."""
        with self._lock:
            self.model, self._version, self.learnt = None, version, learnt

    def update(self) -> ReviewModel:
        """Refit the model on the labels as they are now; answers given meanwhile wait for the next update."""
        with self._lock:
            labels, learnt = self.labels.copy(), len(self.answers)
        model = update_review_model(self.pooled, labels, self.before, self.settings, self.version + 1)
        with self._lock:
            self.model, self.learnt = model, learnt
        return model

    def questions(self, k: int) -> np.ndarray:
        """The next ``k`` (image, class) entries to ask, most wanted first, never one asked before."""
        if self.model is None:
            raise RuntimeError("update the model before asking")
        with self._lock:
            labels, open_entries = self.labels.copy(), ~self.asked
        if self.skip_filled:
            open_entries &= self.model.round.targets == 0
        return ask(self.policy, self.model.probability, labels, k, self.rng, open_entries)

    def answer(self, entries: np.ndarray, values: np.ndarray, version: int | None = None) -> None:
        """Record answers to ``entries`` (k×2 image, class): +1, −1 or 0 (cannot tell)."""
        entries = np.asarray(entries, dtype=np.int64).reshape(-1, 2)
        values = np.asarray(values, dtype=np.int64).reshape(-1)
        if len(values) != len(entries) or not np.isin(values, (-1, 0, 1)).all():
            raise ValueError("one answer per entry, each +1, -1 or 0")
        with self._lock:
            rows, cols = entries[:, 0], entries[:, 1]
            if (self.before[rows, cols] != UNKNOWN).any():
                raise ValueError("an answered entry was known before the review")
            self._forget(rows, cols)  # a changed mind replaces the earlier answer
            self.labels[rows, cols] = values.astype(LABEL_DTYPE)
            self.asked[rows, cols] = True
            ranked_by = self.version if version is None else version
            self.answers.extend(
                Answer(int(i), int(c), int(v), ranked_by) for i, c, v in zip(rows, cols, values, strict=True)
            )

    def retract(self, entries: np.ndarray) -> None:
        """Take back the answers to ``entries`` (k×2): they are open and unknown again, and no update learns them."""
        entries = np.asarray(entries, dtype=np.int64).reshape(-1, 2)
        with self._lock:
            rows, cols = entries[:, 0], entries[:, 1]
            self._forget(rows, cols)
            self.labels[rows, cols] = self.before[rows, cols]
            self.asked[rows, cols] = False

    def _forget(self, rows: np.ndarray, cols: np.ndarray) -> None:
        if not self.asked[rows, cols].any():
            return
        gone = set(zip(rows.tolist(), cols.tolist(), strict=True))
        self.answers = [a for a in self.answers if (a.image, a.label) not in gone]

    def completed(self) -> np.ndarray:
        """Known labels + answers + the latest model's calibrated fills of the entries still unknown."""
        if self.model is None:
            raise RuntimeError("update the model before completing")
        with self._lock:
            labels = self.labels.copy()
        return self.model.completed(labels)
