"""The pseudo-label round: cross-fitted evidence, calibrated per class, applied to the unknown entries.

One rule decides every pseudo label HST adds and every label ``hst complete --precision`` fills: an unknown entry
(i, c) becomes positive when its cross-fitted score reaches class c's threshold, calibrated on the known entries
of c to the target precision (:mod:`hst.methods.calibration`); negatives likewise from the other end of the same
score, when asked for. The precision measured is the precision of exactly what is applied.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from hst.config import MethodConfig
from hst.methods.calibration import Calibration, apply_thresholds, calibrate_scores
from hst.methods.cross_fitted_evidence import CrossFittedEvidence, cross_fitted_evidence
from hst.methods.thresholds import expected_hidden_positives, quality


@dataclass
class RoundSettings:
    target_precision: float = 0.9
    negative_precision: float = 0.98
    negatives: bool = False
    min_positives: int = 5
    """A class is calibrated only with at least this many known positives above its threshold."""
    min_negatives: int = 5
    """... and at least this many known negatives scored (otherwise its precision cannot be measured)."""
    z: float = 1.28
    sequential: bool = True
    """Test the cuts in a fixed sequence from the top (:mod:`hst.methods.calibration`); False: the lowest passing."""
    neighbours: int = 20
    probe: bool = True
    folds: int = 5
    seed: int = 0
    positive_cap: float = 1.0
    bank_limit: int = 0

    @classmethod
    def from_method(cls, config: MethodConfig, **overrides: Any) -> RoundSettings:
        """The settings HST's keys of ``config`` give, with ``overrides``."""
        if config.calibration_scan not in ("sequential", "lowest"):
            raise ValueError(f"method.calibration_scan: {config.calibration_scan!r} is not 'sequential' or 'lowest'")
        settings = cls(
            target_precision=config.target_precision,
            negative_precision=config.negative_precision,
            negatives=config.pseudo_negatives,
            min_positives=config.calibration_min_positives,
            min_negatives=config.calibration_min_negatives,
            z=config.calibration_z,
            sequential=config.calibration_scan == "sequential",
            neighbours=config.cst_neighbours if config.use_cst else 0,
            probe=config.classifier_evidence,
            positive_cap=config.positive_cap,
            bank_limit=config.neighbour_bank,
        )
        return dataclasses.replace(settings, **overrides)


def completion_settings(method: MethodConfig, precision: float, negatives: bool = True) -> RoundSettings:
    """The settings of ``hst complete --precision P``: both parts of the score, both polarities at P, no cap,
    whatever ``method`` trained with."""
    return RoundSettings.from_method(
        method,
        target_precision=precision,
        negative_precision=precision,
        negatives=negatives,
        neighbours=method.cst_neighbours if method.cst_neighbours > 0 else RoundSettings.neighbours,
        probe=True,
        positive_cap=1.0,
    )


@dataclass
class PseudoLabelRound:
    targets: np.ndarray
    """int8 N×C: +1 / −1 on the unknown entries the rule labels, 0 elsewhere (always 0 on known entries)."""
    positive: Calibration
    negative: Calibration | None
    evidence: CrossFittedEvidence


def _cap(chosen: np.ndarray, labels: np.ndarray, rank_by: np.ndarray, share: float) -> np.ndarray:
    """At most ``share`` × the expected hidden positives per class, best ranked first (``share`` ≥ 1: no cap)."""
    if share >= 1.0:
        return chosen
    cap = np.floor(share * expected_hidden_positives(labels)).astype(int)
    kept = np.zeros_like(chosen)
    for c in range(labels.shape[1]):
        rows = np.flatnonzero(chosen[:, c])
        if len(rows) > cap[c]:
            rows = rows[np.argsort(-rank_by[rows, c], kind="stable")[: cap[c]]]
        kept[rows, c] = True
    return kept


def pseudo_label_round(
    pooled: np.ndarray, labels: np.ndarray, settings: RoundSettings, calibration_labels: np.ndarray | None = None
) -> PseudoLabelRound:
    """Pseudo labels of the unknown entries of ``labels`` (N×C) from the label-free features ``pooled`` (N×F).

    ``calibration_labels``: the known entries that calibrate the thresholds, a subset of those of ``labels``
    (default: all of them). Pass the randomly chosen ones when others were picked by a person, who does not pick
    at random; every known label is still evidence.
    """
    s = settings
    evidence = cross_fitted_evidence(pooled, labels, s.neighbours, s.probe, s.folds, s.seed, s.bank_limit)
    score = evidence.joint
    calibrate_on = labels if calibration_labels is None else calibration_labels
    # answers (known now, unknown in the calibration labels) correct the estimate for the entries left unknown
    reviewed = None if calibration_labels is None else labels
    positive = calibrate_scores(
        score, calibrate_on, s.target_precision, +1, s.min_positives, s.min_negatives, s.z, reviewed, s.sequential
    )
    chosen = _cap(apply_thresholds(score, labels, positive, +1), labels, score, s.positive_cap)
    targets = chosen.astype(np.int8)
    negative = None
    if s.negatives:
        negative = calibrate_scores(
            score, calibrate_on, s.negative_precision, -1, s.min_negatives, s.min_positives, s.z, reviewed, s.sequential
        )
        targets -= (apply_thresholds(score, labels, negative, -1) & ~chosen).astype(np.int8)
    return PseudoLabelRound(targets, positive, negative, evidence)


def round_logs(result: PseudoLabelRound, labels: np.ndarray, full: np.ndarray | None) -> dict[str, float]:
    """What the round did: counts (precision and recall against ``full`` where the data has full labels), the
    classes calibrated, and the precision the rule measured on the known entries."""
    logs = {f"pseudo_all_{key}": value for key, value in quality(result.targets, labels, full).items()}
    for name, calibration in (("positive", result.positive), ("negative", result.negative)):
        if calibration is None:
            continue
        logs[f"calibrated_{name}_classes"] = float(calibration.calibrated.sum())
        above, correct = calibration.known_above.sum(), calibration.correct_above.sum()
        if above:
            logs[f"calibrated_{name}_known_precision"] = float(correct / above)
    return logs
