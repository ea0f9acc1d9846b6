"""The state of one review: suggestions from ``hst complete``'s rule, the person's decisions, and their files.

Suggestions: every unknown entry (image, class) of a readable image, with the checkpoint's decision (±1), its
confidence and its evidence (classifier probability and threshold, IST and CST scores and votes), computed by
:func:`hst.apps.complete.complete_module` at ``min_confidence=0.5`` so every unknown entry gets one.

Order (most informative first): an entry's *doubt* is ``1 − confidence`` in [0, 0.5], the chance that the
suggestion is wrong under the confidence rule. Reviewing an entry the model is sure of mostly confirms what
``hst complete`` would fill anyway; reviewing a doubtful one corrects an error with probability ``doubt``, so
ordering by doubt gives the most corrections (and the most information: the entropy of a ±1 label grows with
its doubt) per click. Images come in the order of their most doubtful suggestion, and within an image its
suggestions by doubt; ties put suggested positives first (they are rarer and matter more for training), then
row and class order.

Decisions: ``accept`` writes the suggested value, ``reject`` the opposite one, ``unknown`` leaves the entry
unknown (0) but marks it reviewed. Every decision (and every ``undo``, which reverts the latest decision not yet
undone) is appended to the decision log (``OUT.decisions.jsonl``, one JSON object a line, fsynced) and the
reviewed manifest ``OUT`` is rewritten atomically (a uniquely named temporary file in the same folder, fsync,
rename). The log is the record: opening a review whose log exists replays it, so a killed server or a closed
browser loses nothing. Entries known in the input are never changed and the input file is never written.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hst.config import ConfigError
from hst.data.base import DataError, MultiLabelData
from hst.labels import LABEL_DTYPE, NEGATIVE, POSITIVE, UNKNOWN

ACTIONS = ("accept", "reject", "unknown")
UNDO = "undo"


def log_path(out_csv: Path) -> Path:
    """``reviewed.csv`` → ``reviewed.decisions.jsonl``."""
    return out_csv.with_name(f"{out_csv.stem}.decisions.jsonl")


@dataclass(frozen=True)
class Suggestion:
    """One unknown entry and what the checkpoint says about it."""

    image: int
    label: int
    value: int
    """The suggested label, +1 or −1."""
    confidence: float
    probability: float
    threshold: float
    ist: float | None = None
    ist_vote: bool | None = None
    cst: float | None = None
    cst_vote: bool | None = None

    @property
    def doubt(self) -> float:
        return 1.0 - self.confidence

    def row(self) -> list[Any]:
        """Compact JSON form: the page receives thousands of these."""
        return [
            self.image,
            self.label,
            self.value,
            round(self.confidence, 4),
            round(self.probability, 4),
            round(self.threshold, 4),
            None if self.ist is None else round(self.ist, 4),
            self.ist_vote,
            None if self.cst is None else round(self.cst, 4),
            self.cst_vote,
        ]


def order(suggestions: Sequence[Suggestion]) -> list[int]:
    """Indices of ``suggestions`` in review order (see the module docstring)."""

    def entry_key(k: int) -> tuple[int, bool, int, int]:
        s = suggestions[k]
        # doubt in units of 1e-4 from the confidence the page receives (4 decimals): the page sorts identically
        return (-round(1e4 * (1 - round(s.confidence, 4))), s.value != POSITIVE, s.image, s.label)

    by_image: dict[int, list[int]] = {}
    for k in sorted(range(len(suggestions)), key=entry_key):
        by_image.setdefault(suggestions[k].image, []).append(k)
    images = sorted(by_image, key=lambda i: (entry_key(by_image[i][0]), i))
    return [k for i in images for k in by_image[i]]


def value_of(action: str, suggested: int) -> int:
    """The label a decision writes."""
    if action == "accept":
        return suggested
    if action == "reject":
        return -suggested
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
    ) -> None:
        self.data = data
        self.cells = list(cells)
        self.partial = data.labels.copy()
        self.suggestions = list(suggestions)
        self.order = order(self.suggestions)
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
        # Same folder: the input's cells verbatim (image ids stay the same); elsewhere: paths relative to OUT.
        same_folder = out.parent.resolve() == self.input_csv.parent.resolve()
        column = self.cells if same_folder or self.data.image_paths is None else None
        write_csv_manifest(self.data.with_labels(self.labels()), out, image_column=column)
        _fsync_dir(out.parent)

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
            return {"image": where[0], "label": where[1], "action": action, "value": value, **self.progress()}

    def undo(self) -> dict[str, Any]:
        """Revert the latest decision not yet undone; ``image``/``label`` are None when there is none."""
        with self._lock:
            if not self._stack:
                return {"image": None, "label": None, "action": None, "value": None, **self.progress()}
            self._append({"event": UNDO})
            where = self._pop()
            assert where is not None
            self._write_manifest()
            action, value = self._decisions.get(where, (None, UNKNOWN))
            return {"image": where[0], "label": where[1], "action": action, "value": value, **self.progress()}

    def decisions(self) -> dict[tuple[int, int], tuple[str, int]]:
        with self._lock:
            return dict(self._decisions)

    def progress(self) -> dict[str, Any]:
        counts = {action: 0 for action in ACTIONS}
        for action, _ in self._decisions.values():
            counts[action] += 1
        return {"decided": len(self._decisions), "total": len(self.suggestions), "counts": counts}

    # ---- page data -----------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything the page shows, as JSON-ready values."""
        with self._lock:
            decisions = dict(self._decisions)
            progress = self.progress()
            undoable = bool(self._stack)
        known = [
            [[int(c), int(self.partial[i, c])] for c in np.nonzero(self.partial[i] != UNKNOWN)[0]]
            for i in range(len(self.cells))
        ]
        return {
            "classes": list(self.data.class_names),
            "images": self.cells,
            "known": known,
            "suggestions": [self.suggestions[k].row() for k in self.order],
            "decisions": [[i, c, action, value] for (i, c), (action, value) in decisions.items()],
            "evidence": self.evidence,
            "progress": progress,
            "undoable": undoable,
            "output": str(self.out_csv),
            "log": str(self.log_path),
        }

    def image_path(self, row: int) -> Path | None:
        """The file of image ``row`` (None when the data has no files or the row does not exist)."""
        if self.data.image_paths is None or not 0 <= row < len(self.cells):
            return None
        return Path(self.data.image_paths[row])


# ---- building a session from a checkpoint ------------------------------------------------------------
def suggestions_from(result: Any, module: Any) -> list[Suggestion]:
    """Every unknown, read entry of a :class:`~hst.apps.complete.CompletionResult` as a suggestion."""
    from hst.apps.complete import evidence_sources

    thresholds = {source.name: source for source in evidence_sources(module)}
    partial = result.partial
    has_positive = (partial == POSITIVE).any(axis=1)
    ist, cst = result.ist_scores, result.cst_scores
    out: list[Suggestion] = []
    for i, c in zip(*np.nonzero(result.decisions != 0), strict=True):
        # without a known positive an image has no co-occurrence evidence (its IST scores are all 0)
        ist_ok = ist is not None and has_positive[i] and np.isfinite(ist[i, c])
        ist_score = float(ist[i, c]) if ist_ok else None  # type: ignore[index]
        cst_score = None if cst is None or not np.isfinite(cst[i, c]) else float(cst[i, c])
        # the same votes complete_module counted
        ist_vote = None
        if ist_score is not None and "IST" in thresholds:
            ist_vote = bool(thresholds["IST"].votes(np.asarray(ist_score), int(c)))
        cst_vote = None
        if cst_score is not None and "CST" in thresholds:
            cst_vote = bool(thresholds["CST"].votes(np.asarray(cst_score), int(c)))
        out.append(
            Suggestion(
                image=int(i),
                label=int(c),
                value=int(result.decisions[i, c]),
                confidence=float(result.confidence[i, c]),
                probability=float(result.probabilities[i, c]),
                threshold=float(result.thresholds[c]),
                ist=ist_score,
                ist_vote=ist_vote,
                cst=cst_score,
                cst_vote=cst_vote,
            )
        )
    return out


def _read_manifest(path: Path) -> MultiLabelData:
    from hst.data.readers import read_csv_manifest

    if not path.is_file():
        raise FileNotFoundError(f"partial-label manifest {path} does not exist")
    if path.suffix.lower() != ".csv":
        raise ConfigError(f"the partial labels must be a CSV manifest (as hst make-partial writes), got {path}")
    data = read_csv_manifest(path)
    if data.image_paths is None:
        raise DataError(f"{path}: the review page shows images, but this manifest names none")
    return data


def open_review(
    checkpoint: str | Path,
    partial_csv: str | Path,
    out_csv: str | Path,
    threshold: float | str = "auto",
    evidence: bool = True,
    batch_size: int = 32,
    on_error: str = "skip",
    device: str = "cpu",
    progress: bool | None = None,
) -> ReviewSession:
    """Run ``checkpoint`` over the images of ``partial_csv`` and open (or resume) the review writing ``out_csv``."""
    from hst.apps.complete import complete_module
    from hst.engine.module import PartialLabelModule

    given = Path(partial_csv.removeprefix("csv:") if isinstance(partial_csv, str) else partial_csv)
    out = Path(out_csv)
    if out.suffix.lower() != ".csv":
        raise ConfigError(f"--out must be a .csv file (a CSV manifest), got {out}")
    data = _read_manifest(given)
    module = PartialLabelModule.from_checkpoint(Path(checkpoint))
    with tempfile.TemporaryDirectory(prefix="hst-review-") as scratch:
        # complete_module writes its own filled manifest; the review keeps only the numbers.
        result = complete_module(
            module,
            given,
            Path(scratch) / "filled.csv",
            min_confidence=0.5,
            threshold=threshold,
            evidence=evidence,
            batch_size=batch_size,
            on_error=on_error,
            device=device,
            progress=progress,
        )
    suggestions = suggestions_from(result, module)
    meta = {"checkpoint": str(checkpoint), "input": str(given), "suggestions": len(suggestions)}
    return ReviewSession(data, result.images, suggestions, out, given, result.evidence, meta, result.skipped)


__all__ = [
    "ACTIONS",
    "ReviewSession",
    "Suggestion",
    "log_path",
    "open_review",
    "order",
    "suggestions_from",
    "value_of",
]
