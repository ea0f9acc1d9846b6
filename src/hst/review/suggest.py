"""Where a review's suggestions come from, and opening a review from a checkpoint.

Two rules, each the one ``hst complete`` applies, called here rather than copied:

- the checkpoint's confidence rule (the default): every unknown entry (image, class) of a readable image, with the
  checkpoint's decision (±1), its confidence and its evidence (classifier probability and threshold, IST and CST
  scores and votes), from :func:`hst.apps.complete.complete` at ``min_confidence=0.5`` so every entry gets one;
- ``precision=P`` (``hst review --precision P``): :func:`hst.apps.complete_at_precision.complete_at_precision` on
  the input file, so an entry's suggested value is the label ``hst complete --precision P --on-error skip`` fills
  there, and an entry it leaves unknown (between the two thresholds, or in a class refused) is still reviewable,
  with no suggestion at P (value 0). A suggestion's confidence is the precision its class's threshold measured on
  the known entries (k of n, at least P by the Wilson bound the rule is calibrated with); the page states the
  promise per class and polarity (:func:`promise_of`): target, threshold, k of n, or why the class was refused.

The rule is calibrated on the input file's known labels only (or on ``calibrate_on``, the file as it was before an
earlier review): the suggestions are computed when the review opens, from the input file, which the review never
writes, and a resumed review computes them again from the same file. No decision of this review calibrates the
rule: a person's answers are the entries the page ranked first, not a random sample of the hidden ones.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hst.config import ConfigError
from hst.data.base import DataError, MultiLabelData
from hst.labels import POSITIVE, UNKNOWN
from hst.methods.question_policy import DEFAULT_POLICY
from hst.review.session import ReviewSession, Suggestion, log_path

if TYPE_CHECKING:
    from typing_extensions import Unpack  # in typing from Python 3.11 only

    from hst.apps.complete_at_precision import PrecisionCompletion
    from hst.apps.inference import RunOptions

NO_SUGGESTION_CONFIDENCE = 0.5
"""What an entry with no suggestion counts as in the page's confidence filter: no better than a guess."""


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
        # the same votes complete counted
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


def precision_suggestions(completion: PrecisionCompletion) -> list[Suggestion]:
    """Every unknown entry of a read image: the calibrated rule's fill as the suggestion, or none (value 0).

    ``rank``: a fill's distance past its threshold (nearest first: the least sure of its class); an entry with no
    suggestion, minus its score (likeliest present first: positives are rarer and the rule fills fewer of them).
    """
    rule = completion.round
    score = completion.score
    measured = {1: rule.positive.measured_precision()}
    bound = {1: rule.positive.threshold}
    if rule.negative is not None:
        measured[-1], bound[-1] = rule.negative.measured_precision(), rule.negative.threshold
    rows = range(len(completion.partial)) if completion.rows is None else completion.rows
    read = np.zeros(len(completion.partial), dtype=bool)
    read[list(rows)] = True
    out: list[Suggestion] = []
    for i, c in zip(*np.nonzero((completion.partial == UNKNOWN) & read[:, None]), strict=True):
        s = float(score[i, c])
        value = int(completion.completed[i, c]) if completion.filled[i, c] else UNKNOWN
        if value != UNKNOWN:
            confidence, rank = float(measured[value][c]), value * s - float(bound[value][c])
        else:
            confidence, rank = NO_SUGGESTION_CONFIDENCE, -s if np.isfinite(s) else np.inf
        finite = s if np.isfinite(s) else None
        out.append(Suggestion(int(i), int(c), value, confidence, None, None, score=finite, rank=rank))
    return out


def promise_of(completion: PrecisionCompletion, calibrated_on: Path, suggestions: list[Suggestion]) -> dict[str, Any]:
    """What the page states: per class and polarity, the threshold on the score (``score ≥`` it for present,
    ``≤`` for absent; None when refused), the known entries past it (``known``) and the correct ones among them
    (``correct``), the suggestions it gives, and why the class was refused (empty when it was not)."""
    rule = completion.round
    count: dict[tuple[int, int], int] = {}
    for s in suggestions:
        count[s.label, s.value] = count.get((s.label, s.value), 0) + 1
    classes = []
    for c, name in enumerate(completion.class_names):
        entry: dict[str, Any] = {"name": name}
        for key, sign, calibration in (("positive", 1, rule.positive), ("negative", -1, rule.negative)):
            if calibration is None:
                entry[key] = None
                continue
            calibrated = bool(calibration.calibrated[c])
            entry[key] = {
                "threshold": sign * float(calibration.threshold[c]) if calibrated else None,
                "known": int(calibration.known_above[c]),
                "correct": int(calibration.correct_above[c]),
                "suggested": count.get((c, sign), 0),
                "reason": calibration.reason[c],
            }
        classes.append(entry)
    return {
        "precision": completion.precision,
        "calibrated_on": str(calibrated_on),
        "note": completion.note,
        "unsuggested": sum(s.value == UNKNOWN for s in suggestions),
        "classes": classes,
    }


def promise_lines(promise: dict[str, Any]) -> list[str]:
    """The promise in words, as ``hst review`` prints it."""
    lines = [
        f"suggestions at precision {promise['precision']:g}, calibrated per class on the known labels of "
        f"{promise['calibrated_on']} (never on this review's decisions); {promise['unsuggested']} entries have no "
        "suggestion"
    ]
    for key, word in (("positive", "present"), ("negative", "absent")):
        given = [(c["name"], c[key]) for c in promise["classes"] if c[key] is not None]
        if not given:
            continue
        calibrated = sum(found["threshold"] is not None for _, found in given)
        total = sum(found["suggested"] for _, found in given)
        lines.append(f"  {total} '{word}' suggestions ({calibrated} of {len(given)} classes calibrated)")
        lines.extend(
            f"  no '{word}' suggestions for {name}: {found['reason']}" for name, found in given if found["reason"]
        )
    if promise["note"]:
        lines.append(f"warning: {promise['note']}")
    return lines


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
    precision: float | None = None,
    calibrate_on: str | Path | None = None,
    negatives: bool = True,
    round_size: int = 0,
    policy: str = DEFAULT_POLICY,
    **run: Unpack[RunOptions],
) -> ReviewSession:
    """Run ``checkpoint`` over the images of ``partial_csv`` and open (or resume) the review writing ``out_csv``.

    ``precision``: suggest with the calibrated rule at that precision (``threshold`` and ``evidence`` belong to the
    confidence rule and are then unused); ``calibrate_on`` and ``negatives`` as for ``hst complete --precision``.
    ``run``: how the images are read (:func:`hst.apps.inference.run_network`); unreadable ones are skipped unless
    ``on_error`` says otherwise. ``round_size`` > 0: attach the loop (:mod:`hst.review.loop`), which updates the
    model after every ``round_size`` decisions and ranks the page with ``policy``; ``calibrate_on`` calibrates it.
    """
    from hst.engine.trained_model import TrainedModel

    # A review page can go on without an unreadable image.
    run.setdefault("on_error", "skip")
    given = Path(partial_csv.removeprefix("csv:") if isinstance(partial_csv, str) else partial_csv)
    out = Path(out_csv)
    if out.suffix.lower() != ".csv":
        raise ConfigError(f"--out must be a .csv file (a CSV manifest), got {out}")
    data = _read_manifest(given)
    if (precision is not None or round_size > 0) and calibrate_on is None and log_path(given).exists():
        raise ConfigError(
            f"{given} was itself reviewed ({log_path(given)} exists): a person's answers are not a random sample, "
            "so they must not calibrate; pass --calibrate-on with the file as it was before that review"
        )
    module = TrainedModel.from_checkpoint(Path(checkpoint))
    meta: dict[str, Any] = {"checkpoint": str(checkpoint), "input": str(given)}
    if precision is not None:
        from hst.apps.complete_at_precision import complete_at_precision

        with tempfile.TemporaryDirectory(prefix="hst-review-") as scratch:
            # The rule writes its own filled manifest; the review keeps only the numbers.
            filled = Path(scratch) / "filled.csv"
            completion = complete_at_precision(
                module, given, filled, precision, calibrate_on=calibrate_on, negatives=negatives, **run
            )
        # the rule scored the label-free backbone's features: the loop learns from the same ones
        computed = (
            None if completion.rows is None or completion.pooled is None else (completion.rows, completion.pooled)
        )
        suggestions = precision_suggestions(completion)
        promise = promise_of(completion, Path(calibrate_on) if calibrate_on is not None else given, suggestions)
        meta.update(suggestions=len(suggestions), precision=precision, calibrated_on=promise["calibrated_on"])
        rule = [f"cross-fitted score calibrated to precision {precision:g}"]
        cells = list(data.image_ids)
        session = ReviewSession(data, cells, suggestions, out, given, rule, meta, completion.skipped, promise)
    else:
        from hst.apps.complete import complete
        from hst.apps.complete_at_precision import is_its_own_label_free_module

        # the loop learns from the label-free backbone's features: this pass gives them when they are the model's
        keep_pooled = round_size > 0 and is_its_own_label_free_module(module)
        with tempfile.TemporaryDirectory(prefix="hst-review-") as scratch:
            # complete writes its own filled manifest; the review keeps only the numbers.
            result = complete(
                module,
                given,
                Path(scratch) / "filled.csv",
                min_confidence=0.5,
                threshold=threshold,
                evidence=evidence,
                keep_pooled=keep_pooled,
                **run,
            )
        computed = (result.read_rows, result.pooled) if result.pooled is not None and result.read_rows else None
        suggestions = suggestions_from(result, module)
        meta["suggestions"] = len(suggestions)
        session = ReviewSession(data, result.images, suggestions, out, given, result.evidence, meta, result.skipped)
    if round_size > 0:
        from hst.review.loop import open_loop

        before = None
        if calibrate_on is not None:
            before = _read_manifest(Path(calibrate_on)).labels
            if before.shape != data.labels.shape:
                raise ConfigError(f"--calibrate-on {calibrate_on}: must have the rows and classes of {given}")
        reading = ("batch_size", "device", "image_size", "num_workers", "progress")
        options = {k: v for k, v in run.items() if k in reading}
        open_loop(session, module, Path(checkpoint), round_size, policy, precision, before, computed, **options)
    return session


__all__ = ["open_review", "precision_suggestions", "promise_lines", "promise_of", "suggestions_from"]
