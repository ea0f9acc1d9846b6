"""The loop behind the review page: every round of answers updates the model in the background and re-ranks.

A :class:`LiveLoop` wraps the :class:`~hst.apps.review_loop.ReviewLoop` that ``hst simulate-review`` measures (the
same update, :mod:`hst.methods.review_update`, and the same question policy), on the pooled features of the
label-free backbone of the review's images. The page's decisions become the loop's answers as they are saved;
once ``round_size`` answers have come since the last update began, a background thread refits the model on a
snapshot of the labels and ranks the questions still open with the policy. Requests never wait for it: answers
keep being taken (and saved by the session before the loop hears of them) while it runs.

Files beside the reviewed manifest ``OUT``: ``OUT.features.npz`` (the pooled features, computed once per
checkpoint and image list) and ``OUT.model.json`` (the latest completed ranking: model version, answers it learnt,
the open entries most wanted first), rewritten atomically (temporary file, fsync, rename) after each update, so a
server stopped at any moment leaves the previous complete ranking. Reopening serves that ranking at once and starts
an update when a round of answers is waiting. A failed update is logged, shown on the page, and changes nothing:
the previous ranking keeps serving and the next round tries again.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hst.apps.review_loop import ReviewLoop
from hst.data.base import MultiLabelData
from hst.io import atomic_path, fields_key, sidecar_path, write_text_atomic
from hst.labels import UNKNOWN
from hst.methods.question_policy import DEFAULT_POLICY

if TYPE_CHECKING:
    from typing_extensions import Unpack  # in typing from Python 3.11 only

    from hst.apps.inference import RunOptions
    from hst.review.session import ReviewSession

log = logging.getLogger(__name__)

ROUND_SIZE = 130
"""Answers per update: the round size ``hst simulate-review`` measured with (docs/review-loop.md)."""
DEFAULT_PRECISION = 0.9
"""The precision of the model's calibrated fills without ``--precision`` (``hst simulate-review``'s default)."""
MODEL_FORMAT = 1


MODEL_SUFFIX = "model.json"
"""``OUT.model.json``: the latest completed ranking."""
FEATURES_SUFFIX = "features.npz"
"""``OUT.features.npz``: the pooled features the loop learns from."""


def model_path(out_csv: Path) -> Path:
    return sidecar_path(out_csv, MODEL_SUFFIX)


def features_path(out_csv: Path) -> Path:
    return sidecar_path(out_csv, FEATURES_SUFFIX)


@dataclass(frozen=True)
class Ranking:
    """What one completed update gives the page."""

    version: int
    learnt: int
    """Answers the model learnt from."""
    order: list[tuple[int, int]]
    """The entries (manifest row, class) open when it ranked them, most wanted first."""
    seconds: float
    finished: float
    """When it was completed (Unix time)."""


def read_features(path: Path, key: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(rows, pooled) saved under ``key``, or None (no file, another key, unreadable)."""
    try:
        with np.load(path, allow_pickle=False) as saved:
            if str(saved["key"]) != key:
                return None
            return saved["rows"].astype(np.int64), saved["pooled"].astype(np.float32)
    except (OSError, KeyError, ValueError):
        return None


def write_features(path: Path, key: str, rows: np.ndarray, pooled: np.ndarray) -> None:
    with atomic_path(path) as tmp, tmp.open("wb") as handle:
        np.savez(handle, key=np.array(key), rows=np.asarray(rows, dtype=np.int64), pooled=pooled.astype(np.float32))


class LiveLoop:
    """The review loop of one page: answers in, background updates, the latest completed ranking out.

    ``rows``: the manifest rows of the loop's rows (the images whose features were read); ``shape``: the
    manifest's (images, classes).
    """

    def __init__(
        self,
        loop: ReviewLoop,
        rows: np.ndarray,
        shape: tuple[int, int],
        out_csv: Path,
        round_size: int = ROUND_SIZE,
        key: str = "",
    ) -> None:
        if round_size < 1:
            raise ValueError(f"round_size must be at least 1, got {round_size}")
        self.loop = loop
        self.rows = np.asarray(rows, dtype=np.int64)
        self._row_of = {int(r): k for k, r in enumerate(self.rows)}
        self.shape = shape
        self.path = model_path(Path(out_csv))
        self.round_size = round_size
        self.key = key
        self.on_ranking: Callable[[Ranking], object] | None = None
        """Called with each new ranking before it serves (the session prepares the page's order)."""
        self.ranking: Ranking | None = None
        self.error: str | None = None
        """Why the latest update failed (None when it did not)."""
        self._attempted = 0
        """Answers there were when the latest update began: the next round counts from there."""
        self._thread: threading.Thread | None = None
        self._started: float | None = None
        self._lock = threading.Lock()

    # ---- answers -------------------------------------------------------------------------------------
    def record(self, where: tuple[int, int], value: int | None) -> bool:
        """The page's decision on entry ``where`` (manifest row, class): +1/−1/0, or None when undone; False when
        the entry is not the loop's (its image's features could not be read)."""
        row = self._row_of.get(int(where[0]))
        if row is None:
            return False
        entry = np.array([[row, int(where[1])]])
        if value is None:
            self.loop.retract(entry)
        else:
            self.loop.answer(entry, np.array([value]), self.version)
        return True

    @property
    def version(self) -> int:
        return self.ranking.version if self.ranking is not None else self.loop.version

    # ---- updates -------------------------------------------------------------------------------------
    def start(self) -> None:
        """Serve the saved ranking when there is one of these features, else fit the first model now; then start an
        update if a round of answers is waiting."""
        saved = self._read()
        if saved is not None:
            self.ranking = saved
            self.loop.resume(saved.version, saved.learnt)
            self._attempted = saved.learnt
        else:
            # versions only grow, also when the features changed under a saved ranking
            self.loop.resume(self._saved_version(), 0)
            self._attempted = len(self.loop.answers)
            self._run()
            if self.ranking is None:
                raise RuntimeError(f"the review model could not be fit: {self.error}")
        self.maybe_update()

    def maybe_update(self) -> bool:
        """Start a background update when ``round_size`` answers came since the latest one began; True if started."""
        with self._lock:
            return self._start_if_due()

    def _start_if_due(self) -> bool:
        if self._thread is not None or len(self.loop.answers) - self._attempted < self.round_size:
            return False
        self._attempted = len(self.loop.answers)
        self._started = time.time()
        self._thread = threading.Thread(target=self._background, name="hst-review-update", daemon=True)
        self._thread.start()
        return True

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the running update (and those it chains); True when none runs any more."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                thread = self._thread
            if thread is None:
                return True
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            thread.join(left)

    def _background(self) -> None:
        try:
            self._run()
        finally:
            with self._lock:
                self._thread, self._started = None, None
                self._start_if_due()  # answers given meanwhile may fill the next round already

    def _run(self) -> None:
        previous, learnt = self.loop.model, self.loop.learnt
        try:
            model = self.loop.update()
            found = self.loop.questions(self.loop.labels.size)
            order = [(int(self.rows[i]), int(c)) for i, c in found]
            ranking = Ranking(model.version, self.loop.learnt, order, model.seconds, time.time())
            if self.on_ranking is not None:
                self.on_ranking(ranking)
            self._write(ranking)  # on disk before it serves: a restart finds what the page showed
        except Exception as error:
            # the next update's version follows the one that serves
            self.loop.model, self.loop.learnt = previous, learnt
            message = f"{type(error).__name__}: {error}"
            log.exception("review model update failed; model v%d keeps ranking", self.version)
            with self._lock:
                self.error = message
            return
        with self._lock:
            self.ranking, self.error = ranking, None
        log.info("model v%d learnt %d answers in %.1f s", ranking.version, ranking.learnt, ranking.seconds)

    # ---- the saved ranking ---------------------------------------------------------------------------
    def _write(self, ranking: Ranking) -> None:
        record = {
            "format": MODEL_FORMAT,
            "version": ranking.version,
            "answers": ranking.learnt,
            "seconds": round(ranking.seconds, 3),
            "finished": round(ranking.finished, 3),
            "policy": self.loop.policy,
            "features": self.key,
            "shape": list(self.shape),
            "order": [x for entry in ranking.order for x in entry],
        }
        write_text_atomic(self.path, json.dumps(record, separators=(",", ":")) + "\n")

    def _load(self) -> dict[str, Any] | None:
        try:
            record = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) and record.get("format") == MODEL_FORMAT else None

    def _saved_version(self) -> int:
        record = self._load()
        return int(record["version"]) if record is not None else -1

    def _read(self) -> Ranking | None:
        record = self._load()
        if record is None or record.get("features") != self.key or record.get("shape") != list(self.shape):
            return None
        if record.get("policy") != self.loop.policy:
            return None
        flat = record["order"]
        order = [(int(flat[k]), int(flat[k + 1])) for k in range(0, len(flat), 2)]
        return Ranking(int(record["version"]), int(record["answers"]), order, record["seconds"], record["finished"])

    # ---- page data -----------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """What the page shows about the model: its version, the answers it learnt, the next update, any failure."""
        return self.current()[1]

    def current(self) -> tuple[Ranking | None, dict[str, Any]]:
        """The ranking that serves and the status that describes it, read together."""
        with self._lock:
            ranking, error, started = self.ranking, self.error, self._started
            answers = len(self.loop.answers)
            pending = answers - self._attempted
        return ranking, {
            "version": ranking.version if ranking else None,
            "learnt": ranking.learnt if ranking else 0,
            "answers": answers,
            "round_size": self.round_size,
            "next_in": max(0, self.round_size - pending),
            "policy": self.loop.policy,
            "updating": started is not None,
            "started": started,
            "finished": ranking.finished if ranking else None,
            "seconds": round(ranking.seconds, 3) if ranking else None,
            "error": error,
        }


def loop_features(
    module: Any,
    data: MultiLabelData,
    out_csv: Path,
    checkpoint: Path,
    computed: tuple[Sequence[int], np.ndarray] | None = None,
    **run: Unpack[RunOptions],
) -> tuple[np.ndarray, np.ndarray, str]:
    """(rows read, their pooled features, the features' key) of ``data``'s images under the label-free backbone
    ``hst complete --precision`` scores with; computed once and kept in ``OUT.features.npz``.

    ``computed``: (rows, pooled features) of this backbone on these images that the caller has already read (the
    pass that made the page's suggestions), so that opening a review reads the images once."""
    from hst.apps.complete_at_precision import label_free_module  # the backbone the calibrated rule reads
    from hst.apps.inference import run_network

    stat = Path(checkpoint).stat()
    paths = [str(p) for p in data.image_paths] if data.image_paths is not None else list(data.image_ids)
    key = fields_key(
        {"checkpoint": str(Path(checkpoint).resolve()), "bytes": stat.st_size, "mtime": stat.st_mtime_ns}
        | {"images": paths, "image_size": run.get("image_size")}
    )
    path = features_path(Path(out_csv))
    found = read_features(path, key)
    if found is not None:
        return (*found, key)
    if computed is not None:
        rows_read, pooled_read = np.asarray(computed[0], dtype=np.int64), np.asarray(computed[1], dtype=np.float32)
        write_features(path, key, rows_read, pooled_read)
        return rows_read, pooled_read, key
    label_free, note = label_free_module(module)
    if note:
        log.warning("the review loop's features: %s", note)
    options: RunOptions = {**run, "on_error": "skip"}
    rows, collected, _ = run_network(label_free, data, lambda output, _rows: {"pooled": output.pooled}, **options)
    pooled = collected["pooled"]
    write_features(path, key, np.asarray(rows), pooled)
    return np.asarray(rows, dtype=np.int64), pooled.astype(np.float32), key


def open_loop(
    session: ReviewSession,
    module: Any,
    checkpoint: Path,
    round_size: int = ROUND_SIZE,
    policy: str = DEFAULT_POLICY,
    precision: float | None = None,
    calibration_labels: np.ndarray | None = None,
    computed: tuple[Sequence[int], np.ndarray] | None = None,
    **run: Any,
) -> LiveLoop:
    """Attach the loop to ``session`` and start it (the first model is fit now unless a saved ranking serves).

    ``calibration_labels``: the labels before any review when the input was itself reviewed (default: the
    input's); only they calibrate. ``computed`` and ``run``: the features already read, and how to read the images
    otherwise (see :func:`loop_features`)."""
    from hst.methods.pseudo_label_round import completion_settings

    rows, pooled, key = loop_features(module, session.data, session.out_csv, checkpoint, computed, **run)
    given = session.partial[rows]
    before = given if calibration_labels is None else np.asarray(calibration_labels)[rows]
    settings = completion_settings(module.config.method, precision if precision is not None else DEFAULT_PRECISION)
    loop = ReviewLoop(pooled, before, settings, policy)
    # the input's labels beyond the calibration file: a person's earlier answers, learnt but never calibrating
    earlier = np.argwhere((given != UNKNOWN) & (before == UNKNOWN))
    if len(earlier):
        loop.answer(earlier, given[earlier[:, 0], earlier[:, 1]])
    live = LiveLoop(loop, rows, session.partial.shape, session.out_csv, round_size, key)
    session.attach(live)
    return live


__all__ = [
    "ROUND_SIZE",
    "LiveLoop",
    "Ranking",
    "features_path",
    "loop_features",
    "model_path",
    "open_loop",
    "read_features",
]
