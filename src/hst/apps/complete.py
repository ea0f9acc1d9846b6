"""``hst complete``: fill the unknown labels of a partially labelled dataset with a trained checkpoint.

The rule, for every unknown entry (image i, class c):

1. Decision from the classifier: ``p = σ(logit)``; positive (+1) when ``p ≥ τ_c``, else negative (−1).
   ``τ_c`` is the checkpoint's per-class threshold tuned on validation F1 (``threshold="auto"``), or a number.
2. Base confidence: ``p`` mapped piecewise-linearly so that 0 → 0, ``τ_c`` → 0.5, 1 → 1 (call it ``q``);
   confidence ``max(q, 1 − q)`` in [0.5, 1]. With ``τ_c = 0.5`` this is ``max(p, 1 − p)``.
3. HST evidence (checkpoints of HST-like methods), positive-only like HST's own pseudo labels:
   IST votes for "positive" when the class's mean co-occurrence with the image's known positives
   (``intra_scores`` of the IST head's pair logits) exceeds the learned IST threshold; CST votes when the
   mean cosine to the class's saved prototypes (``inter_scores``) exceeds the learned CST threshold.
   A vote for a positive fill halves the doubt ``1 − confidence``; a vote against a negative fill doubles
   it, up to 0.5 (a coin flip). No vote changes nothing. Images without a known positive get no IST vote,
   classes without prototypes no CST vote.
4. Entries whose confidence reaches ``min_confidence`` are written; the others stay unknown (0).
   Known entries are never changed.

Outputs: ``OUT.csv``, a CSV manifest in the format of ``hst make-partial`` (``image,<classes…>`` with
1 / -1 / 0, same image cells and row order as the partial-labels input), usable as
``data.partial_labels`` for another training run; and ``OUT.confidence.csv`` beside it, one row per filled
entry: ``image,label,value,confidence,probability,threshold,ist,cst`` (``ist``/``cst`` empty when that
source gave no score). When the data spec carries ground truth, precision and recall of the filled
positives and negatives are reported at several confidence levels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from hst.apps.inference import RunOptions, csv_text, load_module, resolve_threshold, run_network
from hst.config import ConfigError
from hst.data.base import DataError, MultiLabelData
from hst.engine.trained_model import TrainedModel
from hst.io import write_text_atomic
from hst.labels import LABEL_DTYPE, NEGATIVE, POSITIVE, UNKNOWN
from hst.methods.base import Evidence
from hst.models.network import NetworkOutput

if TYPE_CHECKING:
    from typing_extensions import Unpack  # in typing from Python 3.11 only

DEFAULT_LEVELS = (0.5, 0.7, 0.9, 0.95, 0.99)
DEFAULT_MIN_CONFIDENCE = 0.9
# Keeps the piecewise map finite for thresholds at 0 or 1.
_EDGE = 1e-6


@dataclass
class CompletionLevel:
    """Filled entries with confidence ≥ ``min_confidence``, scored against the ground truth.

    Precision counts filled entries whose true label is known; recall is over the unknown entries whose
    true label is positive (negative). None where the denominator is 0.
    """

    min_confidence: float
    filled: int
    positives: int
    positive_precision: float | None
    positive_recall: float | None
    negatives: int
    negative_precision: float | None
    negative_recall: float | None


@dataclass
class CompletionResult:
    images: list[str]
    """Image cells of the written manifest, in its row order."""
    class_names: list[str]
    partial: np.ndarray
    """N×C int8 input labels."""
    completed: np.ndarray
    """N×C int8 written labels: ``partial`` with the confident unknown entries filled."""
    probabilities: np.ndarray
    """N×C classifier probabilities (NaN for skipped images)."""
    decisions: np.ndarray
    """N×C int8: the classifier's ±1 for unknown entries, 0 for known entries and skipped images."""
    confidence: np.ndarray
    """N×C float64 in [0.5, 1] where ``decisions`` is non-zero, 0 elsewhere."""
    thresholds: np.ndarray
    """C decision thresholds ``τ_c`` used."""
    min_confidence: float
    evidence: list[str]
    """Sources used: ``classifier`` plus ``IST`` and/or ``CST``."""
    out_csv: Path
    confidence_csv: Path
    ist_scores: np.ndarray | None = None
    cst_scores: np.ndarray | None = None
    evaluation: list[CompletionLevel] | None = None
    """Precision / recall per confidence level when ground truth was given."""
    skipped: list[tuple[str, str]] = field(default_factory=list)
    read_rows: list[int] | None = None
    """With ``keep_pooled``: the rows whose images were read, in the order of ``pooled``."""
    pooled: np.ndarray | None = None
    """With ``keep_pooled``: the network's pooled features of ``read_rows`` (what the review loop learns from)."""

    @property
    def filled(self) -> np.ndarray:
        """N×C bool: entries this completion wrote."""
        return self.completed != self.partial

    def lines(self) -> list[str]:
        unknown = int((self.partial == UNKNOWN).sum())
        filled = self.filled
        positives = int((filled & (self.completed == POSITIVE)).sum())
        lines = [
            f"filled {int(filled.sum())} of {unknown} unknown entries with confidence ≥ {self.min_confidence:g}: "
            f"{positives} positive, {int(filled.sum()) - positives} negative "
            f"(evidence: {' + '.join(self.evidence)})",
            f"wrote {self.out_csv} (CSV manifest) and {self.confidence_csv} (one row per filled entry)",
        ]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} unreadable images (their labels are unchanged)")
        if self.evaluation is not None:
            lines.append("against the ground truth:")
            lines.extend(table_lines(self.evaluation))
        return lines


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def combine_confidence(
    probabilities: np.ndarray, thresholds: np.ndarray, votes: Sequence[np.ndarray] = ()
) -> tuple[np.ndarray, np.ndarray]:
    """Decisions (±1, int8) and confidences in [0.5, 1] of every entry, by the rule of this module.

    ``votes``: N×C bool arrays, True where an evidence source says "positive".
    """
    p = np.asarray(probabilities, dtype=np.float64)
    tau = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), p.shape)
    positive = p >= tau
    t = np.clip(tau, _EDGE, 1 - _EDGE)
    q = np.where(positive, 0.5 + 0.5 * (p - t) / (1 - t), 0.5 * p / t)
    q = np.clip(q, 0.0, 1.0)
    doubt = 1.0 - np.maximum(q, 1.0 - q)
    for vote in votes:
        vote = np.asarray(vote, dtype=bool)
        doubt = np.where(vote & positive, doubt / 2, doubt)
        doubt = np.where(vote & ~positive, np.minimum(doubt * 2, 0.5), doubt)
    decisions = np.where(positive, POSITIVE, NEGATIVE).astype(LABEL_DTYPE)
    return decisions, 1.0 - doubt


def completion_table(
    decisions: np.ndarray,
    confidence: np.ndarray,
    partial: np.ndarray,
    truth: np.ndarray,
    levels: Sequence[float] = DEFAULT_LEVELS,
) -> list[CompletionLevel]:
    """Precision and recall of the entries a completion would fill at each confidence level."""
    unknown = partial == UNKNOWN
    candidates = unknown & (decisions != 0)
    hidden_positive = int((unknown & (truth == POSITIVE)).sum())
    hidden_negative = int((unknown & (truth == NEGATIVE)).sum())
    rows: list[CompletionLevel] = []
    for level in levels:
        chosen = candidates & (confidence >= level)
        pos, neg = chosen & (decisions == POSITIVE), chosen & (decisions == NEGATIVE)
        pos_right = int((pos & (truth == POSITIVE)).sum())
        neg_right = int((neg & (truth == NEGATIVE)).sum())
        rows.append(
            CompletionLevel(
                min_confidence=float(level),
                filled=int(chosen.sum()),
                positives=int(pos.sum()),
                positive_precision=_ratio(pos_right, int((pos & (truth != UNKNOWN)).sum())),
                positive_recall=_ratio(pos_right, hidden_positive),
                negatives=int(neg.sum()),
                negative_precision=_ratio(neg_right, int((neg & (truth != UNKNOWN)).sum())),
                negative_recall=_ratio(neg_right, hidden_negative),
            )
        )
    return rows


def table_lines(levels: Sequence[CompletionLevel]) -> list[str]:
    """A fixed-width table of :class:`CompletionLevel` rows (precision / recall in %)."""

    def pct(value: float | None) -> str:
        return "—" if value is None else f"{100 * value:.1f}"

    header = (
        f"{'confidence':>10}  {'filled':>7}  {'pos':>6}  {'pos P%':>6}  {'pos R%':>6}  "
        f"{'neg':>6}  {'neg P%':>6}  {'neg R%':>6}"
    )
    lines = [header]
    for row in levels:
        lines.append(
            f"{'≥ ' + format(row.min_confidence, 'g'):>10}  {row.filled:>7}  {row.positives:>6}  "
            f"{pct(row.positive_precision):>6}  {pct(row.positive_recall):>6}  {row.negatives:>6}  "
            f"{pct(row.negative_precision):>6}  {pct(row.negative_recall):>6}"
        )
    return lines


def confidence_path(out_csv: Path) -> Path:
    """``filled.csv`` → ``filled.confidence.csv``."""
    return out_csv.with_name(f"{out_csv.stem}.confidence.csv")


def _is_csv_file(spec: str | Path) -> Path | None:
    text = str(spec)
    if text.startswith("csv:"):
        return Path(text[4:])
    path = Path(text)
    return path if path.suffix.lower() == ".csv" else None


def _align(data: MultiLabelData, given: MultiLabelData, where: str) -> np.ndarray:
    """Row of ``data`` for every row of ``given``: by image id, else by the resolved image file."""
    row_of = {image_id: row for row, image_id in enumerate(data.image_ids)}
    if data.image_paths is not None and given.image_paths is not None:
        by_file = {path.resolve(): row for row, path in enumerate(data.image_paths)}
    else:
        by_file = {}
    rows: list[int] = []
    for index, image_id in enumerate(given.image_ids):
        row = row_of.get(image_id)
        if row is None and by_file and given.image_paths is not None:
            row = by_file.get(given.image_paths[index].resolve())
        if row is None:
            raise DataError(f"{where}: image {image_id!r} (data row {index + 1}) is not an image of {data.source}")
        rows.append(row)
    return np.asarray(rows, dtype=np.int64)


def load_partial(
    partial_labels: str | Path, data: str | MultiLabelData | None = None
) -> tuple[MultiLabelData, np.ndarray | None, list[str] | None]:
    """(images with the partial labels, ground truth or None, image cells to write or None).

    ``partial_labels``: a CSV manifest (``FILE.csv`` or ``csv:FILE``) or, without ``data``, any data spec.
    ``data``: a data spec (or loaded data) holding the images and, where known, their true labels; the
    manifest's rows are matched to it by image id or image file.
    """
    from hst.data.readers import read_csv_manifest
    from hst.data.spec import load_dataset

    csv_path = _is_csv_file(partial_labels)
    if data is None:
        if csv_path is not None:
            given = read_csv_manifest(csv_path)
            return given, None, list(given.image_ids)
        return load_dataset(str(partial_labels)), None, None
    if csv_path is None:
        raise ConfigError(f"with a data spec, the partial labels must be a CSV manifest; got {partial_labels}")
    source = load_dataset(data) if isinstance(data, str) else data
    given = read_csv_manifest(csv_path)
    if given.class_names != source.class_names:
        raise DataError(f"{csv_path}: class columns differ from those of {source.source}")
    rows = _align(source, given, str(csv_path))
    images = source.subset(rows).with_labels(given.labels)
    truth = source.labels[rows]
    return images, (truth if np.any(truth != UNKNOWN) else None), list(given.image_ids)


def evidence_sources(module: TrainedModel) -> list[Evidence]:
    """The evidence sources the checkpoint's method provides, with the thresholds it was trained with."""
    return module.method.evidence(set(module.method_keys_missing))


def complete(
    checkpoint: str | Path | TrainedModel,
    partial_labels: str | Path,
    out_csv: str | Path,
    data: str | MultiLabelData | None = None,
    min_confidence: float = DEFAULT_MIN_CONFIDENCE,
    threshold: float | str = "auto",
    evidence: bool = True,
    levels: Sequence[float] = DEFAULT_LEVELS,
    keep_pooled: bool = False,
    **run: Unpack[RunOptions],
) -> CompletionResult:
    """Fill the unknown entries of ``partial_labels`` with ``checkpoint`` and write ``out_csv``.

    ``checkpoint``: a checkpoint file or a module already loaded (see ``TrainedModel.from_checkpoint``).
    ``partial_labels``: a CSV manifest (as written by ``hst make-partial``) whose images are read from
    the paths in it, or any data spec; with ``data`` (a data spec holding the images and their full
    labels) the CSV's rows are matched to it and precision / recall are reported at ``levels``.
    ``threshold``: ``"auto"`` (tuned per-class thresholds when the checkpoint has them, else 0.5),
    ``"tuned"`` or a probability. ``evidence=False`` uses the classifier alone. ``keep_pooled``: also return the
    pooled features (the review loop's, when the backbone is label-free, so it need not read the images again).
    ``run``: how the images are read (:func:`run_network`). See the module docstring for the confidence rule and
    the output files.
    """
    from hst.data.readers import write_csv_manifest

    module = load_module(checkpoint)
    if not 0.0 <= min_confidence <= 1.0:
        raise ConfigError(f"min_confidence must be in [0, 1], got {min_confidence}")
    value, per_class = resolve_threshold(threshold, module)
    class_names = list(module.class_names)
    thresholds = per_class if per_class is not None else np.full(len(class_names), value)
    images, truth, cells = load_partial(partial_labels, data)
    if images.class_names != class_names:
        raise DataError(f"{images.source}: classes differ from the checkpoint's {len(class_names)} classes")
    partial = images.labels.copy()
    sources = evidence_sources(module) if evidence else []
    known = torch.from_numpy(partial.astype(np.int64))

    def outputs(output: NetworkOutput, rows: list[int]) -> dict[str, torch.Tensor]:

        out = {"probabilities": torch.sigmoid(output.logits.float())}
        for source in sources:
            out[source.name] = source.score(output, known[rows])
        if keep_pooled:
            out["pooled"] = output.pooled
        return out

    rows, collected, skipped = run_network(module, images, outputs, **run)
    shape = partial.shape
    read = np.zeros(shape[0], dtype=bool)
    read[rows] = True
    probabilities = np.full(shape, np.nan)
    probabilities[rows] = collected["probabilities"]
    scores: dict[str, np.ndarray] = {}
    votes: list[np.ndarray] = []
    for source in sources:
        full = np.full(shape, np.nan)
        full[rows] = collected[source.name]
        scores[source.name] = full
        vote = np.zeros(shape, dtype=bool)
        vote[rows] = source.votes(collected[source.name])
        votes.append(vote)

    decisions, confidence = combine_confidence(np.nan_to_num(probabilities), thresholds, votes)
    candidates = (partial == UNKNOWN) & read[:, None]
    decisions = np.where(candidates, decisions, 0).astype(LABEL_DTYPE)
    confidence = np.where(candidates, confidence, 0.0)
    fill = candidates & (confidence >= min_confidence)
    completed = partial.copy()
    completed[fill] = decisions[fill]

    out = Path(out_csv)
    side = confidence_path(out)
    write_csv_manifest(images.with_labels(completed), out, image_column=cells)
    written = cells if cells is not None else _written_cells(out)
    header = ["image", "label", "value", "confidence", "probability", "threshold", "ist", "cst"]
    table = [header]
    for i, c in zip(*np.nonzero(fill), strict=True):
        table.append(
            [
                written[i],
                class_names[c],
                str(int(decisions[i, c])),
                f"{confidence[i, c]:.6g}",
                f"{probabilities[i, c]:.6g}",
                f"{thresholds[c]:.6g}",
                *(_cell(scores[name][i, c]) if name in scores else "" for name in ("IST", "CST")),
            ]
        )
    write_text_atomic(side, csv_text(table), newline="")

    evaluation = None
    if truth is not None:
        chosen_levels = sorted({*(float(level) for level in levels), float(min_confidence)})
        evaluation = completion_table(decisions, confidence, partial, truth, chosen_levels)
    return CompletionResult(
        images=list(written),
        class_names=class_names,
        partial=partial,
        completed=completed,
        probabilities=probabilities,
        decisions=decisions,
        confidence=confidence,
        thresholds=np.asarray(thresholds, dtype=np.float64),
        min_confidence=float(min_confidence),
        evidence=["classifier", *(source.name for source in sources)],
        out_csv=out,
        confidence_csv=side,
        ist_scores=scores.get("IST"),
        cst_scores=scores.get("CST"),
        evaluation=evaluation,
        skipped=skipped,
        read_rows=list(rows) if keep_pooled else None,
        pooled=collected["pooled"] if keep_pooled else None,
    )


def _cell(value: float) -> str:
    return f"{value:.6g}" if np.isfinite(value) else ""


def _written_cells(path: Path) -> list[str]:
    """The image column of a manifest just written (the writer chose the cells)."""
    import csv

    with path.open(newline="", encoding="utf-8") as handle:
        return [row[0] for row in list(csv.reader(handle))[1:] if row]


# The name callers holding a loaded module have used; complete takes a module as well as a checkpoint.
complete_module = complete


__all__ = [
    "DEFAULT_LEVELS",
    "DEFAULT_MIN_CONFIDENCE",
    "CompletionLevel",
    "CompletionResult",
    "combine_confidence",
    "complete",
    "complete_module",
    "completion_table",
    "confidence_path",
    "load_partial",
    "table_lines",
]
