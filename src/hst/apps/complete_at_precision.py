"""``hst complete --precision P``: fill unknown labels with the cross-fitted rule, calibrated per class to P.

The rule is the one HST's pseudo labels use (:mod:`hst.methods.pseudo_label_round`), run on the dataset being
completed: its own known entries calibrate it, with scores that never saw their own label, from the label-free
pooled features of the checkpoint's backbone (its pretrained weights when the checkpoint trained the backbone,
since trained features were fit to labels). Positives and negatives are each calibrated to P. A class that cannot
reach P on its known entries, or cannot be measured (too few known positives or negatives), gets no fill of that
polarity, and the output says why.

The promise holds when the known entries are a random sample of the entries (the partial-label protocol). Labels
chosen by a person (``hst review``) are not: pass ``--calibrate-on`` with the manifest as it was before the review,
and only those labels calibrate; the reviewed ones are still used as neighbours and probe targets.

Outputs: ``OUT.csv`` (the completed manifest), ``OUT.confidence.csv`` (one row per filled entry: image, label,
value, score, threshold) and ``OUT.classes.csv`` (per class and polarity: threshold, known entries above it, their
precision, fills, and the reason where there are none).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from hst.apps.complete import confidence_path, load_partial
from hst.apps.inference import csv_text, run_network
from hst.config import ConfigError
from hst.data.base import DataError, MultiLabelData
from hst.engine.trained_model import TrainedModel
from hst.io import write_text_atomic
from hst.labels import LABEL_DTYPE, UNKNOWN
from hst.methods.calibration import Calibration, clopper_pearson
from hst.methods.pseudo_label_round import PseudoLabelRound, completion_settings, pseudo_label_round


@dataclass
class PrecisionCompletion:
    class_names: list[str]
    partial: np.ndarray
    completed: np.ndarray
    precision: float
    round: PseudoLabelRound
    out_csv: Path
    truth: np.ndarray | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    note: str = ""
    """Why the promise may not hold (empty when it should)."""
    rows: list[int] | None = None
    """The rows whose images were read and scored (None: every row)."""
    pooled: np.ndarray | None = None
    """The label-free backbone's pooled features of ``rows``: what the rule scored (and the review loop learns)."""

    @property
    def score(self) -> np.ndarray:
        """N×C: the score the rule applied (``round.evidence.joint``), NaN on rows that were not read."""
        read = np.arange(len(self.partial)) if self.rows is None else np.asarray(self.rows, dtype=np.int64)
        score = np.full(self.partial.shape, np.nan)
        score[read] = self.round.evidence.joint
        return score

    @property
    def filled(self) -> np.ndarray:
        return self.completed != self.partial

    def evaluation(self, sign: int) -> dict[str, float]:
        """Against the ground truth: fills of ``sign``, correct ones, precision with its 95% Clopper–Pearson
        interval, and the recall of the hidden entries of that sign."""
        assert self.truth is not None
        chosen = self.filled & (self.completed == sign)
        known_truth = self.truth != UNKNOWN
        count, correct = int((chosen & known_truth).sum()), int((chosen & (self.truth == sign)).sum())
        hidden = int(((self.partial == UNKNOWN) & (self.truth == sign)).sum())
        low, high = clopper_pearson(correct, max(count, 1))
        return {
            "count": count,
            "correct": correct,
            "precision": correct / count if count else float("nan"),
            "low": float(low),
            "high": float(high),
            "recall": correct / hidden if hidden else float("nan"),
        }

    def lines(self) -> list[str]:
        out: list[str] = []
        for name, sign, calibration in self._polarities():
            count = int((self.filled & (self.completed == sign)).sum())
            out.append(
                f"filled {count} {name} labels at precision {self.precision:g} "
                f"({int(calibration.calibrated.sum())} of {len(self.class_names)} classes calibrated)"
            )
            out.extend(f"  no {name} fills for {line}" for line in calibration.summary(self.class_names))
        out.append(f"wrote {self.out_csv}, {confidence_path(self.out_csv)} and {classes_path(self.out_csv)}")
        if self.skipped:
            out.append(f"skipped {len(self.skipped)} unreadable images (their labels are unchanged)")
        if self.note:
            out.append(f"warning: {self.note}")
        if self.truth is not None:
            for name, sign, _ in self._polarities():
                e = self.evaluation(sign)
                out.append(
                    f"against the ground truth, {name}: {e['correct']} of {e['count']} correct, precision "
                    f"{100 * e['precision']:.1f}% (95% CI {100 * e['low']:.1f}–{100 * e['high']:.1f}), "
                    f"recall of hidden {name}s {100 * e['recall']:.1f}%"
                )
        return out

    def _polarities(self) -> list[tuple[str, int, Calibration]]:
        found = [("positive", 1, self.round.positive)]
        if self.round.negative is not None:
            found.append(("negative", -1, self.round.negative))
        return found


def classes_path(out_csv: Path) -> Path:
    return out_csv.with_name(out_csv.stem + ".classes.csv")


def is_its_own_label_free_module(module: TrainedModel) -> bool:
    """True when :func:`label_free_module` gives ``module`` itself: a frozen backbone, or one trained from random
    weights (nothing to go back to)."""
    return module.config.model.trainable == "none" or getattr(module, "pretrained_weights", "none") == "none"


def label_free_module(module: TrainedModel) -> tuple[TrainedModel, str]:
    """The checkpoint's module with its backbone back at its pretrained weights when training changed them, and a
    note when that is impossible (a backbone trained from random weights)."""
    if is_its_own_label_free_module(module):
        if module.config.model.trainable == "none":
            return module, ""
        return module, "the checkpoint's backbone was trained from random weights: its features saw training labels"
    import copy

    from hst.models.backbone import create_backbone

    fresh = create_backbone(module.config.model.backbone, module.pretrained_weights, "none")
    label_free = copy.deepcopy(module)
    label_free.network.backbone.load_state_dict(fresh.state_dict())
    return label_free, ""


def _cached_pooled(
    module: TrainedModel,
    images: MultiLabelData,
    image_size: int | None,
    batch_size: int,
    progress: bool | None,
    cache_dir: str | Path | None = None,
) -> tuple[list[int], np.ndarray, list[tuple[str, str]]]:
    """Pooled features of every image from the frozen-backbone feature cache (``data.cache_dir``), so that a second
    completion of the same images (another precision, other labels) does not run the backbone again."""
    import sys

    from hst.feature_cache import extract_features

    config = module.config
    cache = extract_features(
        module.network.backbone,
        images,
        image_size or config.data.image_size,
        Path(cache_dir or config.data.cache_dir),
        batch_size=batch_size,
        progress=sys.stderr.isatty() if progress is None else progress,
        channels_last=config.model.channels_last,
    )
    # The network averages the backbone map over space; a 2×2-pooled map has the same mean.
    maps = cache.pooled() if cache.poolable() else torch.from_numpy(np.asarray(cache.features))
    pooled = torch.cat([maps[i : i + 256].float().mean(dim=(2, 3)) for i in range(0, len(maps), 256)])
    return list(range(len(images))), pooled.numpy(), []


def complete_at_precision(
    module: TrainedModel,
    partial_labels: str | Path,
    out_csv: str | Path,
    precision: float,
    data: str | None = None,
    calibrate_on: str | Path | None = None,
    negatives: bool = True,
    batch_size: int = 32,
    on_error: str = "error",
    device: str = "cpu",
    progress: bool | None = None,
    image_size: int | None = None,
    cache_dir: str | Path | None = None,
    num_workers: int = 0,
) -> PrecisionCompletion:
    """Fill the unknown entries of ``partial_labels`` at ``precision`` and write ``out_csv`` and its side files.

    The pooled features come from the feature cache in ``cache_dir`` (default: the checkpoint's ``data.cache_dir``)
    when every image must be read on the CPU; otherwise (``on_error="skip"``, another device) from the network."""
    from hst.data.readers import write_csv_manifest

    if not 0.5 <= precision < 1.0:
        raise ConfigError(f"--precision must be in [0.5, 1), got {precision}")
    images, truth, cells = load_partial(partial_labels, data)
    class_names = list(module.class_names)
    if images.class_names != class_names:
        raise DataError(f"{images.source}: classes differ from the checkpoint's {len(class_names)} classes")
    partial = images.labels.copy()
    calibration_labels = partial
    if calibrate_on is not None:
        before, _, _ = load_partial(calibrate_on)
        if before.class_names != class_names or len(before) != len(images):
            raise DataError(f"{calibrate_on}: must have the rows and classes of {partial_labels}")
        changed = (before.labels != UNKNOWN) & (before.labels != partial)
        if changed.any():
            raise DataError(f"{calibrate_on}: {int(changed.sum())} known labels differ from {partial_labels}")
        calibration_labels = before.labels
    network_module, note = label_free_module(module)
    if on_error == "error" and device == "cpu":
        rows, pooled, skipped = _cached_pooled(network_module, images, image_size, batch_size, progress, cache_dir)
    else:
        rows, collected, skipped = run_network(
            network_module,
            images,
            lambda output, _rows: {"pooled": output.pooled},
            batch_size,
            on_error,
            image_size,
            device,
            num_workers,
            progress,
        )
        pooled = collected["pooled"]
    settings = completion_settings(module.config.method, precision, negatives)
    read = np.asarray(rows)
    result = pseudo_label_round(pooled, partial[read], settings, calibration_labels[read])
    completed = partial.copy()
    targets = np.zeros_like(partial)
    targets[read] = result.targets
    fill = (partial == UNKNOWN) & (targets != 0)
    completed[fill] = targets[fill]
    completed = completed.astype(LABEL_DTYPE)
    out = Path(out_csv)
    write_csv_manifest(images.with_labels(completed), out, image_column=cells)
    written = cells if cells is not None else list(images.image_ids)
    completion = PrecisionCompletion(
        class_names, partial, completed, precision, result, out, truth, skipped, note, rows=list(rows), pooled=pooled
    )
    _write_side_files(out, written, class_names, completed, fill, completion.score, result)
    return completion


def _write_side_files(
    out: Path,
    written: list[str],
    class_names: list[str],
    completed: np.ndarray,
    fill: np.ndarray,
    score: np.ndarray,
    result: PseudoLabelRound,
) -> None:
    entries = [["image", "label", "value", "score", "threshold"]]
    for i, c in zip(*np.nonzero(fill), strict=True):
        sign = int(completed[i, c])
        calibration = result.positive if sign > 0 else result.negative
        assert calibration is not None
        threshold = calibration.threshold[c] * sign
        entries.append([written[i], class_names[c], str(sign), f"{score[i, c]:.6g}", f"{threshold:.6g}"])
    write_text_atomic(confidence_path(out), csv_text(entries), newline="")
    table = [["class", "polarity", "threshold", "known_above", "known_precision", "filled", "reason"]]
    for name, sign, calibration in (("positive", 1, result.positive), ("negative", -1, result.negative)):
        if calibration is None:
            continue
        measured = calibration.measured_precision()
        for c, class_name in enumerate(class_names):
            calibrated = bool(calibration.calibrated[c])
            table.append(
                [
                    class_name,
                    name,
                    f"{calibration.threshold[c] * sign:.6g}" if calibrated else "",
                    str(int(calibration.known_above[c])),
                    f"{measured[c]:.4f}" if calibrated else "",
                    str(int((fill[:, c] & (completed[:, c] == sign)).sum())),
                    calibration.reason[c],
                ]
            )
    write_text_atomic(classes_path(out), csv_text(table), newline="")
