"""Multi-label evaluation: mAP (VOC all-point interpolated and non-interpolated), OP/OR/OF1, CP/CR/CF1.

Labels follow :mod:`hst.labels` (+1 positive, -1 negative, 0 unknown). Unknown entries are ignored per
class. Classes without a known positive are left out of mAP and of the per-class averages (CP, CR) with a
warning, so no reported value is ever NaN. Reported values are percentages in [0, 100]; the low-level
:func:`average_precision` and :func:`per_class_average_precision` return fractions in [0, 1].

Interpolated AP follows the VOC 2010+ devkit: sort by score (ties keep their input order), take the
right-to-left running maximum of precision and sum it over the recall steps. Non-interpolated AP puts
thresholds at distinct scores, as scikit-learn's ``average_precision_score`` does, so tied items share one
precision value.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from hst.labels import NEGATIVE, POSITIVE, UNKNOWN, as_label_matrix, classes_without_negatives

# Upper bound on elements per sorted block, to keep peak memory modest on large test sets.
_BLOCK_ELEMENTS = 1 << 21


@dataclass
class MultiLabelMetrics:
    """All metrics in percent; the ``*_top3`` fields use the ``top_k`` highest scores of each image."""

    mAP: float  # noqa: N815
    mAP_noninterp: float  # noqa: N815
    OP: float
    OR: float
    OF1: float
    CP: float
    CR: float
    CF1: float
    OP_top3: float
    OR_top3: float
    OF1_top3: float
    CP_top3: float
    CR_top3: float
    CF1_top3: float
    per_class_AP: dict[str, float] = field(default_factory=dict)  # noqa: N815
    skipped_classes: list[str] = field(default_factory=list)
    top_k: int = 3

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, (float, np.floating)):
                out[key] = float(value)
        out["per_class_AP"] = {str(k): float(v) for k, v in self.per_class_AP.items()}
        out["skipped_classes"] = [str(name) for name in self.skipped_classes]
        out["top_k"] = int(self.top_k)
        return out


def _to_numpy(values: Any) -> np.ndarray:
    """numpy view of an array-like or a torch tensor (floating tensors become float64)."""
    if hasattr(values, "detach") and hasattr(values, "cpu"):
        tensor = values.detach().cpu()
        # numpy has no bfloat16, so floating tensors are widened first.
        if tensor.is_floating_point():
            tensor = tensor.double()
        return np.asarray(tensor)
    return np.asarray(values)


def _as_scores(scores: Any, ndim: int) -> np.ndarray:
    array = _to_numpy(scores)
    if array.ndim != ndim:
        raise ValueError(f"scores must be {ndim}-D, got shape {array.shape}")
    if array.dtype.kind not in "biuf":
        raise ValueError(f"scores must be numeric, got dtype {array.dtype}")
    array = array.astype(np.float64, copy=False)
    if np.isnan(array).any():
        bad = np.argwhere(np.isnan(array))[0]
        raise ValueError(f"scores contain NaN (first at index {tuple(int(i) for i in bad)})")
    return array


def _validate(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    score_array = _as_scores(scores, 2)
    label_array = as_label_matrix(_to_numpy(labels))
    if score_array.shape != label_array.shape:
        raise ValueError(f"scores shape {score_array.shape} != labels shape {label_array.shape}")
    if label_array.size and not (label_array == NEGATIVE).any():
        # A 0/1 target matrix would silently read as "all known entries positive" and give AP = 100.
        warnings.warn(
            "labels contain no negative (-1) entries; labels must use +1 positive / -1 negative / "
            "0 unknown, not 0/1 targets",
            stacklevel=3,
        )
    return score_array, label_array


def _class_names(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    if class_names is None:
        return [str(i) for i in range(num_classes)]
    names = [str(name) for name in class_names]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for {num_classes} score columns")
    return names


def _sort_rows_descending(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order, sorted scores) per row by descending score, ties kept in input order."""
    order = np.argsort(-scores, axis=1)
    sorted_scores = np.take_along_axis(scores, order, axis=1)
    same_as_previous = sorted_scores[:, 1:] == sorted_scores[:, :-1]
    tied = same_as_previous.any(axis=1)
    if tied.any():
        # The fast sort is not stable: re-sort tied rows by the unique key (tie group, input index).
        n = scores.shape[1]
        group = np.zeros((int(tied.sum()), n), dtype=np.int64)
        np.cumsum(~same_as_previous[tied], axis=1, out=group[:, 1:])
        tied_order = order[tied]
        order[tied] = np.take_along_axis(tied_order, np.argsort(group * n + tied_order, axis=1), axis=1)
    # Reordering within a tie group leaves the sorted scores unchanged.
    return order, sorted_scores


def _ap_rows(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(interpolated, non-interpolated) AP fractions per row (class × items); NaN for rows without a positive."""
    n = scores.shape[1]
    order, sorted_scores = _sort_rows_descending(scores)
    sorted_labels = np.take_along_axis(labels, order, axis=1)
    pos = sorted_labels == POSITIVE
    # Unknown entries add to neither count, so they only repeat the previous point of the PR curve.
    tp = np.cumsum(pos, axis=1, dtype=np.int64)
    fp = np.cumsum(sorted_labels == NEGATIVE, axis=1, dtype=np.int64)
    n_pos = tp[:, -1].astype(np.float64) if n else np.zeros(scores.shape[0])
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = tp / np.maximum(tp + fp, 1)
        envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
        interp = (envelope * pos).sum(axis=1) / n_pos
        # Each item takes the counts at the end of its tie group (thresholds at distinct scores).
        is_last = np.ones(scores.shape, dtype=bool)
        is_last[:, :-1] = sorted_scores[:, :-1] != sorted_scores[:, 1:]
        columns = np.broadcast_to(np.arange(n), scores.shape)
        group_end = np.minimum.accumulate(np.where(is_last, columns, n - 1)[:, ::-1], axis=1)[:, ::-1]
        tp_end = np.take_along_axis(tp, group_end, axis=1)
        fp_end = np.take_along_axis(fp, group_end, axis=1)
        noninterp = (tp_end / np.maximum(tp_end + fp_end, 1) * pos).sum(axis=1) / n_pos
    interp[n_pos == 0] = np.nan
    noninterp[n_pos == 0] = np.nan
    return interp, noninterp


def _ap_both(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(interpolated, non-interpolated) AP fractions per class of an N×C problem."""
    n, c = scores.shape
    width = max(1, _BLOCK_ELEMENTS // max(n, 1))
    interp = np.full(c, np.nan)
    noninterp = np.full(c, np.nan)
    for start in range(0, c, width):
        stop = min(c, start + width)
        # Class-major contiguous copies make the per-class sorts and scans much faster.
        block_scores = np.ascontiguousarray(scores[:, start:stop].T)
        block_labels = np.ascontiguousarray(labels[:, start:stop].T)
        interp[start:stop], noninterp[start:stop] = _ap_rows(block_scores, block_labels)
    return interp, noninterp


def average_precision(scores: np.ndarray, targets: np.ndarray, interpolated: bool = True) -> float:
    """AP of one class as a fraction in [0, 1]; ``targets`` are 0/1 (or bool) for all items."""
    score_array = _as_scores(scores, 1)
    target_array = _to_numpy(targets)
    if target_array.shape != score_array.shape:
        raise ValueError(f"targets shape {target_array.shape} != scores shape {score_array.shape}")
    if target_array.size and not np.isin(target_array, (0, 1)).all():
        raise ValueError("targets must be 0/1 (negative/positive) for average_precision")
    if not (target_array == 1).any():
        raise ValueError("average precision is undefined without a positive target")
    labels = np.where(target_array == 1, POSITIVE, NEGATIVE).astype(np.int8)[:, None]
    interp, noninterp = _ap_both(score_array[:, None], labels)
    return float(interp[0] if interpolated else noninterp[0])


def per_class_average_precision(scores: np.ndarray, labels: np.ndarray, interpolated: bool = True) -> np.ndarray:
    """Per-class AP fractions in [0, 1], ignoring unknown entries; NaN for classes without a positive."""
    score_array, label_array = _validate(scores, labels)
    interp, noninterp = _ap_both(score_array, label_array)
    return interp if interpolated else noninterp


def _kept_classes(ap: np.ndarray, names: list[str]) -> tuple[np.ndarray, list[str]]:
    keep = ~np.isnan(ap)
    if not keep.any():
        raise ValueError("no class has a known positive label; mAP is undefined")
    skipped = [name for name, kept in zip(names, keep, strict=True) if not kept]
    if skipped:
        warnings.warn(
            f"{len(skipped)} class(es) without a known positive left out of mAP: {', '.join(skipped)}",
            stacklevel=3,
        )
    return keep, skipped


def mean_average_precision(scores: np.ndarray, labels: np.ndarray, class_names: Sequence[str] | None = None) -> float:
    """Interpolated mAP in percent over the classes with at least one known positive."""
    score_array, label_array = _validate(scores, labels)
    names = _class_names(class_names, label_array.shape[1])
    interp, _ = _ap_both(score_array, label_array)
    keep, _ = _kept_classes(interp, names)
    return float(100.0 * interp[keep].mean())


def positives_only_labels(labels: np.ndarray) -> np.ndarray:
    """Labels for model selection when some classes have no known negative (single-positive labels).

    In such a class every known entry is positive, so AP over known entries is 100 for any scorer. There the unknown
    entries are taken as negatives: how far the known positives rank above the unlabelled images, which orders
    scorers like the true AP when the known positives are a random sample of the positives. Other classes keep
    their labels.
    """
    labels = np.asarray(labels)
    no_negative = classes_without_negatives(labels)
    if not no_negative.any():
        return labels
    return np.where((labels == UNKNOWN) & no_negative[None, :], NEGATIVE, labels).astype(labels.dtype)


def chance_map(labels: np.ndarray) -> float:
    """Expected mAP (percent) of an uninformative scorer: mean known-positive rate over classes with a positive."""
    label_array = as_label_matrix(_to_numpy(labels))
    n_pos = (label_array == POSITIVE).sum(axis=0)
    n_known = (label_array != UNKNOWN).sum(axis=0)
    keep = n_pos > 0
    if not keep.any():
        raise ValueError("no class has a known positive label; chance mAP is undefined")
    return float(100.0 * (n_pos[keep] / n_known[keep]).mean())


def _f1(precision: float, recall: float) -> float:
    total = precision + recall
    return 2.0 * precision * recall / total if total > 0 else 0.0


def _precision_recall(
    predicted: np.ndarray, labels: np.ndarray, keep: np.ndarray, suffix: str = ""
) -> dict[str, float]:
    """OP, OR, OF1, CP, CR, CF1 (each name + ``suffix``) in percent; unknown entries are excluded from every count."""
    pos = labels == POSITIVE
    n_correct = (predicted & pos).sum(axis=0)
    n_predicted = (predicted & (labels != UNKNOWN)).sum(axis=0)
    n_positive = pos.sum(axis=0)
    op = float(n_correct.sum() / max(int(n_predicted.sum()), 1))
    orc = float(n_correct.sum() / max(int(n_positive.sum()), 1))
    cp = float((n_correct[keep] / np.maximum(n_predicted[keep], 1)).mean())
    cr = float((n_correct[keep] / np.maximum(n_positive[keep], 1)).mean())
    # CF1 is the F1 of the averaged CP and CR, not the mean of per-class F1 values.
    rates = (100 * op, 100 * orc, 100 * _f1(op, orc), 100 * cp, 100 * cr, 100 * _f1(cp, cr))
    return {name + suffix: rate for name, rate in zip(("OP", "OR", "OF1", "CP", "CR", "CF1"), rates, strict=True)}


def evaluate(
    scores: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str] | None = None,
    threshold: float = 0.5,
    scores_are_probabilities: bool = False,
    top_k: int = 3,
) -> MultiLabelMetrics:
    """All metrics in percent. Scores are logits unless ``scores_are_probabilities``.

    An entry is predicted positive when its probability is >= ``threshold``; the top-k variants also
    require it to be among the image's ``top_k`` highest scores (ties go to the lower class index).
    OP/OR count all classes; CP/CR and mAP average over the classes with a known positive.
    """
    score_array, label_array = _validate(scores, labels)
    n, c = label_array.shape
    names = _class_names(class_names, c)
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    threshold = float(threshold)
    if scores_are_probabilities:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        cut = threshold
    else:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1) for logit scores, got {threshold}")
        # Compare logits against logit(threshold); this is exactly 0 for 0.5, so logit >= 0 ⇔ p >= 0.5.
        cut = math.log(threshold) - math.log1p(-threshold)

    interp, noninterp = _ap_both(score_array, label_array)
    keep, skipped = _kept_classes(interp, names)

    predicted = score_array >= cut
    in_top = np.ones((n, c), dtype=bool)
    if top_k < c:
        in_top[:] = False
        top_idx = np.argsort(-score_array, axis=1, kind="stable")[:, :top_k]
        np.put_along_axis(in_top, top_idx, True, axis=1)
    overall = _precision_recall(predicted, label_array, keep)
    top = _precision_recall(predicted & in_top, label_array, keep, suffix="_top3")

    return MultiLabelMetrics(
        mAP=float(100.0 * interp[keep].mean()),
        mAP_noninterp=float(100.0 * noninterp[keep].mean()),
        **overall,
        **top,
        per_class_AP={name: float(100.0 * interp[i]) for i, name in enumerate(names) if keep[i]},
        skipped_classes=skipped,
        top_k=int(top_k),
    )
