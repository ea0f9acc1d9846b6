"""The state of one review: suggestions from ``hst complete``'s rule, the person's decisions, and their files.

Suggestions: every unknown entry (image, class) of a readable image, from one of ``hst complete``'s rules
(:mod:`hst.review.suggest`): the checkpoint's confidence rule, or with ``--precision P`` the calibrated rule, which
leaves some entries with no suggestion (value 0).

Order (most informative first): an entry's *doubt* is ``1 − confidence`` in [0, 0.5], the chance that the
suggestion is wrong (the confidence rule's confidence; at ``--precision``, the precision its class's threshold
measured on the known entries). Reviewing an entry the model is sure of mostly confirms what ``hst complete``
would fill anyway; reviewing a doubtful one corrects an error with probability ``doubt``, so ordering by doubt
gives the most corrections (and the most information: the entropy of a ±1 label grows with its doubt) per click.
Equal doubts go by the suggestion's ``rank`` (at ``--precision``: nearest its threshold first), then suggested
positives first (they are rarer and matter more for training), then row and class order. An entry with no
suggestion ranks after every suggestion: the suggestions are the labels ``hst complete --precision P`` would
write, so checking them first catches the promise's errors before they train, while the rest stay unknown unless
a person labels them. Images come in the order of their first entry (so images with no suggestion come last),
and within an image its entries in that order.

Decisions: ``accept`` writes the suggested value, ``reject`` the opposite one, ``unknown`` leaves the entry
unknown (0) but marks it reviewed. An entry with no suggestion asks "present?": ``accept`` writes present (+1),
``reject`` absent (−1). Every decision (and every ``undo``, which reverts the latest decision not yet
undone) is appended to the decision log (``OUT.decisions.jsonl``, one JSON object a line, fsynced) and the
reviewed manifest ``OUT`` is rewritten atomically (a uniquely named temporary file in the same folder, fsync,
rename). The log is the record: opening a review whose log exists replays it, so a killed server or a closed
browser loses nothing. Entries known in the input are never changed and the input file is never written.

With a loop attached (:mod:`hst.review.loop`, ``hst review --round-size``), each decision reaches the loop only
after it is saved, and the page's order is the loop's latest ranking: the open entries most wanted first, one by
one, then the rest in the order above.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hst.config import ConfigError
from hst.data.base import MultiLabelData
from hst.io import sidecar_path
from hst.labels import LABEL_DTYPE, NEGATIVE, POSITIVE, UNKNOWN

if TYPE_CHECKING:
    from hst.review.loop import LiveLoop, Ranking

ACTIONS = ("accept", "reject", "unknown")
UNDO = "undo"


def log_path(out_csv: Path) -> Path:
    """``reviewed.csv`` → ``reviewed.decisions.jsonl``."""
    return sidecar_path(out_csv, "decisions.jsonl")


@dataclass(frozen=True)
class Suggestion:
    """One unknown entry and what the checkpoint says about it."""

    image: int
    label: int
    value: int
    """The suggested label, +1 or −1; 0: no suggestion (the calibrated rule fills nothing here)."""
    confidence: float
    probability: float | None
    """The classifier's probability and threshold (None at ``--precision``, whose rule does not use them)."""
    threshold: float | None
    ist: float | None = None
    ist_vote: bool | None = None
    cst: float | None = None
    cst_vote: bool | None = None
    score: float | None = None
    """The calibrated rule's score (``--precision`` only)."""
    rank: float = 0.0
    """Among equal doubts, lower comes first."""

    @property
    def doubt(self) -> float:
        return 1.0 - self.confidence

    def row(self) -> list[Any]:
        """Compact JSON form: the page receives thousands of these."""

        def number(x: float | None) -> float | None:
            return None if x is None else round(x, 4)

        return [
            self.image,
            self.label,
            self.value,
            round(self.confidence, 4),
            number(self.probability),
            number(self.threshold),
            number(self.ist),
            self.ist_vote,
            number(self.cst),
            self.cst_vote,
            number(self.score),
        ]


def entry_ranks(suggestions: Sequence[Suggestion]) -> list[int]:
    """Per suggestion, its place when entries are ranked one by one (no grouping by image); the page groups its
    filtered entries by image with these, so it orders them as :func:`order` does."""

    def entry_key(k: int) -> tuple[bool, int, float, bool, int, int]:
        s = suggestions[k]
        # doubt in units of 1e-4 from the confidence the page receives (4 decimals), as the page shows it
        doubt = -round(1e4 * (1 - round(s.confidence, 4)))
        return (s.value == UNKNOWN, doubt, s.rank, s.value != POSITIVE, s.image, s.label)

    ranks = [0] * len(suggestions)
    for place, k in enumerate(sorted(range(len(suggestions)), key=entry_key)):
        ranks[k] = place
    return ranks


def order(suggestions: Sequence[Suggestion], ranks: Sequence[int] | None = None) -> list[int]:
    """Indices of ``suggestions`` in review order (see the module docstring); ``ranks``: their entry_ranks."""
    ranks = entry_ranks(suggestions) if ranks is None else ranks
    by_image: dict[int, list[int]] = {}
    for k in sorted(range(len(suggestions)), key=ranks.__getitem__):
        by_image.setdefault(suggestions[k].image, []).append(k)
    return [k for i in sorted(by_image, key=lambda i: ranks[by_image[i][0]]) for k in by_image[i]]


def value_of(action: str, suggested: int) -> int:
    """The label a decision writes (with no suggestion, ``accept`` means present and ``reject`` absent)."""
    if action == "accept":
        return suggested if suggested != UNKNOWN else POSITIVE
    if action == "reject":
        return -suggested if suggested != UNKNOWN else NEGATIVE
    return UNKNOWN


def _fsync_dir(folder: Path) -> None:
    # the rename is durable only once the folder entry is on disk (not available on every platform)
    with contextlib.suppress(OSError):
        handle = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)


class ReviewSession:
    """Suggestions and decisions of one review, with the decision log and the reviewed manifest on disk.

    Thread-safe: decisions from concurrent requests are serialised by a lock, so the log and the manifest
    always agree.
    """

    def __init__(
        self,
        data: MultiLabelData,
        cells: list[str],
        suggestions: Sequence[Suggestion],
        out_csv: Path,
        input_csv: Path,
        evidence: Sequence[str] = ("classifier",),
        meta: dict[str, Any] | None = None,
        skipped: Sequence[tuple[str, str]] = (),
        promise: dict[str, Any] | None = None,
    ) -> None:
        self.data = data
        self.cells = list(cells)
        self.partial = data.labels.copy()
        self.suggestions = list(suggestions)
        self.ranks = entry_ranks(self.suggestions)
        self._rows = [s.row() for s in self.suggestions]  # the page's form, built once: state() sends them all
        self.order = order(self.suggestions, self.ranks)
        self.promise = promise
        """What ``--precision`` promises, per class (:func:`hst.review.suggest.promise_of`); None without it."""
        self.evidence = list(evidence)
        self.out_csv = Path(out_csv)
        self.input_csv = Path(input_csv)
        self.log_path = log_path(self.out_csv)
        self._index = {(s.image, s.label): k for k, s in enumerate(self.suggestions)}
        self._row_of_cell = {cell: row for row, cell in enumerate(self.cells)}
        self._class_of = {name: c for c, name in enumerate(data.class_names)}
        self._lock = threading.Lock()
        # (action, written value): the value is kept so a resumed review with another checkpoint keeps it
        self._decisions: dict[tuple[int, int], tuple[str, int]] = {}
        self.skipped = list(skipped)
        """Images the checkpoint could not read (no suggestions), with the reason."""
        self._stack: list[dict[str, Any]] = []
        self.ignored: list[str] = []
        """Log lines that were not applied on resume, with the reason."""
        self._page: tuple[int | None, str] | None = None
        """(ranking version, the suggestions' JSON in its order): the latest :meth:`page_json`."""
        self._known: list[list[list[int]]] | None = None
        self._column: list[str] | None = None
        """The reviewed manifest's image cells (computed at its first write)."""
        self.live: LiveLoop | None = None
        """The loop that learns from the decisions and ranks the page (None: the order above, fixed)."""
        self._check_paths()
        self._replay()
        self._append({"event": "open", **(meta or {})})
        self._write_manifest()

    # ---- files ---------------------------------------------------------------------------------------
    def _check_paths(self) -> None:
        out, given = self.out_csv.resolve(), self.input_csv.resolve()
        if out == given or self.log_path.resolve() == given:
            raise ConfigError(f"--out {self.out_csv} would overwrite the input {self.input_csv}; name another file")
        if self.out_csv.exists() and not self.log_path.exists():
            raise ConfigError(
                f"{self.out_csv} exists but its decision log {self.log_path} does not, so it is not a review to "
                "resume; name another --out or remove it"
            )

    def _append(self, record: dict[str, Any]) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"time": round(time.time(), 3), **record}, ensure_ascii=False) + "\n"
        with self.log_path.open("a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    def labels(self) -> np.ndarray:
        """N×C int8: the input labels with every decision applied."""
        labels = self.partial.copy()
        for (i, c), (_, value) in self._decisions.items():
            labels[i, c] = value
        return labels.astype(LABEL_DTYPE)

    def _write_manifest(self) -> None:
        from hst.data.readers import write_csv_manifest

        out = self.out_csv
        if self._column is None:
            from hst.data.readers.manifest import image_cells  # the cells write_csv_manifest would write

            # Same folder: the input's cells verbatim (image ids stay the same); elsewhere: paths relative to OUT.
            same_folder = out.parent.resolve() == self.input_csv.parent.resolve()
            given = self.cells if same_folder or self.data.image_paths is None else None
            # once: resolving thousands of image paths at every decision would cost most of its time
            self._column = image_cells(self.data, out, given)
        write_csv_manifest(self.data.with_labels(self.labels()), out, image_column=self._column)
        _fsync_dir(out.parent)

    def attach(self, live: LiveLoop) -> None:
        """Let ``live`` learn from every decision (those replayed first) and rank the page; starts it."""
        with self._lock:
            for where, (_, value) in self._decisions.items():
                live.record(where, value)
            live.on_ranking = self.page_json  # encoded in the update's thread, before the ranking serves
            self.live = live
        live.start()

    def _tell_loop(self, where: tuple[int, int]) -> None:
        # called once the decision is on disk: an update never holds an answer that is not saved
        if self.live is None:
            return
        found = self._decisions.get(where)
        self.live.record(where, None if found is None else found[1])
        self.live.maybe_update()

    def loop_status(self) -> dict[str, Any] | None:
        return None if self.live is None else self.live.status()

    # ---- decisions -----------------------------------------------------------------------------------
    def _replay(self) -> None:
        if not self.log_path.exists():
            return
        with self.log_path.open(encoding="utf-8") as handle:
            lines = handle.read().splitlines()
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                # a line cut short by a crash mid-write is the only way to get here; the ones before it stand
                self.ignored.append(f"{self.log_path}:{number}: not JSON (cut short?)")
                continue
            event = record.get("event")
            if event in ACTIONS:
                where = self._locate(record.get("image"), record.get("label"))
                if where is None:
                    self.ignored.append(
                        f"{self.log_path}:{number}: {record.get('image')!r}/{record.get('label')!r} is not a "
                        "suggestion of this review (known in the input, or another manifest)"
                    )
                    continue
                value = record.get("value")
                if value not in (POSITIVE, NEGATIVE, UNKNOWN) or (event == "unknown") != (value == UNKNOWN):
                    self.ignored.append(f"{self.log_path}:{number}: bad value {value!r} for {event!r}")
                    continue
                self._apply(where, event, int(value))
            elif event == UNDO:
                self._pop()

    def _locate(self, cell: object, label: object) -> tuple[int, int] | None:
        row, c = self._row_of_cell.get(str(cell)), self._class_of.get(str(label))
        if row is None or c is None or (row, c) not in self._index:
            return None
        return row, c

    def _apply(self, where: tuple[int, int], action: str, value: int) -> dict[str, Any]:
        record = {"where": where, "before": self._decisions.get(where)}
        self._decisions[where] = (action, value)
        self._stack.append(record)
        return record

    def _pop(self) -> tuple[int, int] | None:
        if not self._stack:
            return None
        record = self._stack.pop()
        where, before = record["where"], record["before"]
        if before is None:
            self._decisions.pop(where, None)
        else:
            self._decisions[where] = before
        return where

    def decide(self, image: int, label: int, action: str) -> dict[str, Any]:
        """Record one decision; returns the entry's new state and the progress."""
        if action not in ACTIONS:
            raise ValueError(f"action must be one of {', '.join(ACTIONS)}, got {action!r}")
        where = (int(image), int(label))
        if where not in self._index:
            raise KeyError(f"no suggestion for image {image}, class {label}")
        with self._lock:
            suggestion = self.suggestions[self._index[where]]
            value = value_of(action, suggestion.value)
            self._append(
                {
                    "event": action,
                    "image": self.cells[where[0]],
                    "label": self.data.class_names[where[1]],
                    "value": value,
                    "suggested": suggestion.value,
                    "confidence": round(suggestion.confidence, 6),
                }
            )
            self._apply(where, action, value)
            self._write_manifest()
            self._tell_loop(where)
            found = {"image": where[0], "label": where[1], "action": action, "value": value}
            return {**found, **self.progress(), "loop": self.loop_status()}

    def undo(self) -> dict[str, Any]:
        """Revert the latest decision not yet undone; ``image``/``label`` are None when there is none."""
        with self._lock:
            if not self._stack:
                return {"image": None, "label": None, "action": None, "value": None, **self.progress()}
            self._append({"event": UNDO})
            where = self._pop()
            assert where is not None
            self._write_manifest()
            self._tell_loop(where)
            action, value = self._decisions.get(where, (None, UNKNOWN))
            found = {"image": where[0], "label": where[1], "action": action, "value": value}
            return {**found, **self.progress(), "loop": self.loop_status()}

    def decisions(self) -> dict[tuple[int, int], tuple[str, int]]:
        with self._lock:
            return dict(self._decisions)

    def progress(self) -> dict[str, Any]:
        counts = {action: 0 for action in ACTIONS}
        for action, _ in self._decisions.values():
            counts[action] += 1
        return {"decided": len(self._decisions), "total": len(self.suggestions), "counts": counts}

    # ---- page data -----------------------------------------------------------------------------------
    def page_order(self, ranking: Ranking | None = None) -> list[int]:
        """Indices of the suggestions in the page's order: ``ranking`` (the loop's) first when there is one."""
        if ranking is None:
            return self.order
        ranked = [self._index[entry] for entry in ranking.order if entry in self._index]
        seen = set(ranked)
        return ranked + [k for k in self.order if k not in seen]

    def page_json(self, ranking: Ranking | None = None) -> str:
        """The suggestions in the page's order as JSON, each row ending with its entry rank (the page orders what
        its filters keep by it); built once per ranking, since thousands of rows take a while to encode."""
        version = None if ranking is None else ranking.version
        cached = self._page
        if cached is not None and cached[0] == version:
            return cached[1]
        if self.live is None:
            rows = [[*self._rows[k], self.ranks[k]] for k in self.order]
        else:
            rows = [[*self._rows[k], place] for place, k in enumerate(self.page_order(ranking))]
        text = json.dumps(rows, separators=(",", ":"))
        self._page = (version, text)
        return text

    def state(self) -> dict[str, Any]:
        """Everything the page shows, as JSON-ready values."""
        return dict(json.loads(self.state_json()))

    def state_json(self) -> str:
        """:meth:`state` as the JSON text the page receives."""
        with self._lock:
            decisions = dict(self._decisions)
            progress = self.progress()
            undoable = bool(self._stack)
            ranking, loop = (None, None) if self.live is None else self.live.current()
        if self._known is None:
            self._known = [
                [[int(c), int(self.partial[i, c])] for c in np.nonzero(self.partial[i] != UNKNOWN)[0]]
                for i in range(len(self.cells))
            ]
        found = {
            "classes": list(self.data.class_names),
            "images": self.cells,
            "known": self._known,
            "decisions": [[i, c, action, value] for (i, c), (action, value) in decisions.items()],
            "evidence": self.evidence,
            "promise": self.promise,
            "progress": progress,
            "undoable": undoable,
            "output": str(self.out_csv),
            "log": str(self.log_path),
            "loop": loop,
        }
        return json.dumps(found, separators=(",", ":"))[:-1] + ',"suggestions":' + self.page_json(ranking) + "}"

    def image_path(self, row: int) -> Path | None:
        """The file of image ``row`` (None when the data has no files or the row does not exist)."""
        if self.data.image_paths is None or not 0 <= row < len(self.cells):
            return None
        return Path(self.data.image_paths[row])


__all__ = ["ACTIONS", "ReviewSession", "Suggestion", "entry_ranks", "log_path", "order", "value_of"]
