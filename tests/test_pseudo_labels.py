"""Calibrated pseudo labels: thresholds against brute force, the combination rule, the leave-one-out IST score,
and the HST method fixing one epoch's pseudo labels from a feature source."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from hst.config import MethodConfig
from hst.methods import create
from hst.methods.base import FeatureBatch
from hst.methods.thresholds import (
    ClassThresholds,
    PseudoLabelDecision,
    by_agreement,
    calibrate,
    decide,
    expected_hidden_positives,
    negative_threshold,
    oracle_targets,
    positive_threshold,
    precision_bound,
    quality,
)
from hst.models.ist import cooccurrence_matrix, intra_scores_leave_one_out


def _brute_positive(scores: np.ndarray, positive: np.ndarray, target: float, min_positives: int) -> float:
    """The lowest candidate score whose kept set (score ≥ t) meets the smoothed precision and positive count."""
    best = np.inf
    for t in np.unique(scores):
        kept = scores >= t
        tp = int((kept & positive).sum())
        if tp >= min_positives and tp / (kept.sum() + 1) >= target:
            best = min(best, float(t))
    return best


def _brute_negative(scores: np.ndarray, positive: np.ndarray, target: float, min_negatives: int) -> float:
    best = -np.inf
    for t in np.unique(scores):
        kept = scores <= t
        tn = int((kept & ~positive).sum())
        if tn >= min_negatives and tn / (kept.sum() + 1) >= target:
            best = max(best, float(t))
    return best


@pytest.mark.parametrize("seed", range(12))
def test_thresholds_match_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 60))
    positive = rng.random(n) < 0.3
    # Rounded scores create ties, which must share one decision.
    scores = np.round(rng.random(n) + positive * rng.random() * 1.5, 1)
    for target, min_pos in itertools.product((0.5, 0.8, 0.9), (1, 3)):
        expected = _brute_positive(scores, positive, target, min_pos)
        assert positive_threshold(scores, positive, target, min_pos) == expected
    for target, min_neg in itertools.product((0.8, 0.95), (1, 5)):
        expected = _brute_negative(scores, positive, target, min_neg)
        assert negative_threshold(scores, positive, target, min_neg) == expected


def test_wilson_bound_matches_its_formula_and_tightens_thresholds() -> None:
    # Wilson lower bound at z = 1 for 9 of 10: (0.9 + 0.05 - sqrt(0.009 + 0.0025)) / 1.1, computed by hand.
    assert precision_bound(np.array([9]), np.array([10]), 1.0)[0] == pytest.approx(0.766147, abs=1e-6)
    assert precision_bound(np.array([9]), np.array([10]), 0.0)[0] == pytest.approx(9 / 11)
    # The bound rises towards the plain ratio as the same precision rests on more entries.
    bounds = precision_bound(np.array([9, 90, 900]), np.array([10, 100, 1000]), 1.0)
    assert np.all(np.diff(bounds) > 0) and bounds[-1] < 0.9
    rng = np.random.default_rng(0)
    positive = rng.random(400) < 0.3
    scores = rng.random(400) + positive * 0.8
    plain = positive_threshold(scores, positive, 0.85, 3, z=0.0)
    strict = positive_threshold(scores, positive, 0.85, 3, z=1.0)
    assert np.isfinite(plain) and strict > plain  # fewer, surer pseudo positives


def test_nan_scores_are_not_evidence() -> None:
    scores = np.array([0.9, np.nan, 0.8, 0.1, np.nan])
    positive = np.array([True, True, True, False, False])
    assert positive_threshold(scores, positive, 0.6, 2) == pytest.approx(0.8)
    assert positive_threshold(scores, positive, 0.6, 3) == np.inf  # only two scored positives


def test_pooled_calibration_serves_classes_with_few_positives() -> None:
    rng = np.random.default_rng(0)
    labels = np.where(rng.random((200, 3)) < 0.3, 1, -1).astype(np.int8)
    labels[:, 2] = -1
    labels[:2, 2] = 1  # class 2: two known positives only
    scores = np.where(labels > 0, 0.7 + 0.3 * rng.random((200, 3)), 0.6 * rng.random((200, 3)))
    own = calibrate(scores, labels, 0.9, 0.98, min_positives=5)
    pooled = calibrate(scores, labels, 0.9, 0.98, min_positives=5, pooled=True)
    assert np.isinf(own.positive[2]) and np.isfinite(pooled.positive[2])
    assert np.array_equal(own.positive[:2], pooled.positive[:2])  # classes with enough positives keep their own


def test_decide_fills_only_unknown_entries_caps_positives_and_needs_all_sources_for_negatives() -> None:
    labels = np.array([[1, 0, 0], [0, 0, -1], [0, 0, 0], [0, -1, 0], [1, 0, 0], [-1, 0, 0]], dtype=np.int8)
    a = np.array([[0.9, 0.9, 0.1], [0.95, 0.1, 0.1], [0.8, 0.9, 0.1], [0.1, 0.9, 0.05], [0.9, 0.2, 0.3], [0, 0, 0]])
    b = np.full_like(a, np.nan)
    b[2, 2] = 0.9  # a calls this entry negative, but b scores it high: it cannot become a negative
    thresholds = {
        "a": ClassThresholds(np.array([0.7, 0.7, 0.7]), np.array([0.15, 0.15, 0.15])),
        "b": ClassThresholds(np.array([np.inf] * 3), np.array([0.5] * 3)),
    }
    decision = decide(labels, {"a": a, "b": b}, thresholds, rank_by=a, negatives=True)
    known = labels != 0
    assert np.all(decision.targets[known] == 0)
    cap = np.floor(expected_hidden_positives(labels)).astype(int)
    assert np.all((decision.targets > 0).sum(0) <= cap)
    # Class 0: 2 of 3 known are positive, 3 unknown → at most 2 pseudo positives, the highest scored first.
    assert cap[0] == 2 and decision.targets[1, 0] == 1 and decision.targets[2, 0] == 1
    assert decision.targets[3, 0] == -1  # a scores it under the negative threshold, no other source scores it
    assert decision.targets[2, 2] == 0
    assert decision.targets[0, 2] == -1 and decision.targets[3, 2] == -1
    assert decision.sources["a"][1, 1] == -1 and decision.targets[1, 1] == -1
    without = decide(labels, {"a": a, "b": b}, thresholds, rank_by=a, negatives=False)
    assert not np.any(without.targets < 0)
    # Half the cap: class 0 keeps only its best-ranked pseudo positive, row 1 (0.95) before row 2 (0.8).
    half = decide(labels, {"a": a, "b": b}, thresholds, rank_by=a, negatives=False, cap_share=0.5)
    assert half.targets[1, 0] == 1 and half.targets[2, 0] == 0 and (half.targets[:, 0] > 0).sum() == 1


def test_quality_counts_precision_and_recall_against_full_labels() -> None:
    labels = np.array([[0, 0], [0, 1], [0, 0]], dtype=np.int8)
    full = np.array([[1, -1], [-1, 1], [1, -1]], dtype=np.int8)
    pseudo = np.array([[1, -1], [1, 0], [0, 1]], dtype=np.int8)
    q = quality(pseudo, labels, full)
    assert q["pos_count"] == 3 and q["pos_correct"] == 1 and q["pos_precision"] == pytest.approx(1 / 3)
    assert q["pos_possible"] == 2 and q["pos_recall"] == pytest.approx(0.5)
    assert q["neg_count"] == 1 and q["neg_precision"] == 1.0 and q["neg_recall"] == pytest.approx(1 / 3)


def test_pseudo_positives_split_by_how_many_sources_voted() -> None:
    targets = np.array([[1, 1, 0, -1]], dtype=np.int8)
    sources = {
        "joint": np.array([[1, 1, 1, -1]], dtype=np.int8),  # column 2: voted but not kept (the class cap)
        "neighbours": np.array([[1, 0, 1, -1]], dtype=np.int8),
        "cst": np.array([[1, -1, 0, -1]], dtype=np.int8),
    }
    split = by_agreement(PseudoLabelDecision(targets, sources))
    assert np.array_equal(split["agreed"], [[1, 0, 0, 0]]) and np.array_equal(split["single"], [[0, 1, 0, 0]])


def test_oracle_targets_bound_pseudo_labels_from_the_full_labels() -> None:
    labels = np.array([[1, 0, 0], [0, 0, -1], [0, 0, 0]], dtype=np.int8)
    full = np.array([[1, 1, -1], [1, 0, -1], [-1, 1, -1]], dtype=np.int8)  # 0: an ignored (difficult) entry
    targets = np.array([[0, 1, -1], [1, 1, 0], [1, -1, -1]], dtype=np.int8)
    assert np.array_equal(oracle_targets(targets, labels, full, "none"), targets)
    hidden = oracle_targets(targets, labels, full, "hidden")
    assert np.array_equal(hidden, [[0, 1, 0], [1, 0, 0], [0, 1, 0]])  # every hidden positive, nothing else
    clean = oracle_targets(targets, labels, full, "clean")
    assert np.array_equal(clean, [[0, 1, -1], [1, 0, 0], [0, 0, -1]])  # only HST's correct pseudo labels
    with pytest.raises(ValueError, match="full training labels"):
        oracle_targets(targets, labels, np.zeros_like(full), "clean")
    with pytest.raises(ValueError, match="pseudo_label_oracle"):
        oracle_targets(targets, labels, full, "perfect")
    with pytest.raises(ValueError, match="pseudo_label_oracle"):
        create("hst", MethodConfig(pseudo_label_oracle="perfect"), 3, 4, 3)
    with pytest.raises(ValueError, match="thresholds=calibrated"):
        create("hst", MethodConfig(pseudo_label_oracle="hidden", thresholds="learned"), 3, 4, 3)


def test_leave_one_out_ist_score_matches_a_loop() -> None:
    gen = torch.Generator().manual_seed(3)
    num = 5
    pair_logits = torch.randn(4, num * (num - 1) // 2, generator=gen)
    labels = torch.tensor([[1, 1, 0, -1, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 0, -1]], dtype=torch.int8)
    fast = intra_scores_leave_one_out(pair_logits, labels)
    matrix = cooccurrence_matrix(pair_logits)
    for b, i in itertools.product(range(4), range(num)):
        others = [j for j in range(num) if labels[b, j] > 0 and j != i]
        if not others:
            assert torch.isnan(fast[b, i])
        else:
            expected = sum(float(matrix[b, i, j]) for j in others) / len(others)
            assert float(fast[b, i]) == pytest.approx(expected, abs=1e-6)


def _source(features: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, full: torch.Tensor):
    def source(split: str = "train") -> Iterator[FeatureBatch]:
        for start in range(0, len(labels), 16):
            rows = torch.arange(start, min(start + 16, len(labels)))
            yield FeatureBatch(rows, logits[rows], features[rows], labels[rows], full[rows], features[rows, 0])

    return source


def test_hst_fixes_pseudo_labels_for_the_epoch_and_trains_on_them() -> None:
    """Clustered class features: CST and the classifier find the hidden positives, far above the base rate."""
    gen = torch.Generator().manual_seed(0)
    num, classes, dim = 240, 4, 8
    full = torch.where(torch.rand(num, classes, generator=gen) < 0.25, 1, -1).to(torch.int8)
    centers = torch.randn(classes, dim, generator=gen) * 3
    features = torch.randn(num, classes, dim, generator=gen) + (full > 0).unsqueeze(2) * centers
    logits = torch.where(full > 0, 2.0, -2.0) + torch.randn(num, classes, generator=gen)
    labels = torch.where(torch.rand(num, classes, generator=gen) < 0.3, full, torch.zeros_like(full))
    config = MethodConfig(
        pseudo_label_epoch=1, prototypes_per_class=3, kmeans_iters=5, use_ist=False, pseudo_negatives=True
    )
    method = create("hst", config, classes, dim, num)
    assert method.on_train_epoch_start(0, _source(features, logits, labels, full)) == {}  # before pseudo labels
    logs = method.on_train_epoch_start(1, _source(features, logits, labels, full))
    base_rate = float(((labels == 0) & (full > 0)).sum() / (labels == 0).sum())
    assert logs["pseudo_all_pos_count"] > 0 and logs["pseudo_all_pos_precision"] > base_rate + 0.5
    assert logs["pseudo_all_neg_count"] > 0 and logs["pseudo_all_neg_precision"] > 0.95
    assert logs["pseudo_agreed_pos_count"] + logs["pseudo_single_pos_count"] == logs["pseudo_all_pos_count"]
    table = method.pseudo_targets
    assert table is not None and torch.all(table[labels != 0] == 0)
    # The step's classification loss counts known + pseudo-labelled entries and ignores the rest.
    from hst.methods.base import StepContext
    from hst.models.network import NetworkOutput

    rows = torch.arange(16)
    output = NetworkOutput(logits[rows].clone().requires_grad_(), features[rows].clone().requires_grad_())
    result = method.training_loss(output, labels[rows], StepContext(1, 1, 2, rows, full[rows]))
    expected = int(((labels[rows] == 0) & (table[rows] != 0)).sum())
    assert result.logs["pseudo_entries"] == expected > 0
    # Round trip through the checkpoint state.
    clone = create("hst", config, classes, dim, num)
    clone.load_extra_state(method.extra_state())
    assert clone.pseudo_targets is not None and torch.equal(clone.pseudo_targets, table)


def test_hst_relabel_every_zero_keeps_the_first_decision() -> None:
    """``relabel_every=0``: pseudo labels are decided once, by the model before any pseudo-label training."""
    gen = torch.Generator().manual_seed(1)
    num, classes, dim = 200, 3, 6
    full = torch.where(torch.rand(num, classes, generator=gen) < 0.3, 1, -1).to(torch.int8)
    features = torch.randn(num, classes, dim, generator=gen) + (full > 0).unsqueeze(2) * 3.0
    logits = torch.where(full > 0, 2.0, -2.0) + torch.randn(num, classes, generator=gen)
    labels = torch.where(torch.rand(num, classes, generator=gen) < 0.3, full, torch.zeros_like(full))
    shifted = logits + torch.randn(num, classes, generator=gen) * 3  # a later model with other scores
    for every, same in ((0, True), (1, False)):
        config = MethodConfig(
            pseudo_label_epoch=1, prototypes_per_class=2, kmeans_iters=3, use_ist=False, relabel_every=every
        )
        method = create("hst", config, classes, dim, num)
        assert method.on_train_epoch_start(1, _source(features, logits, labels, full))["pseudo_all_pos_count"] > 0
        first = method.pseudo_targets.clone()
        logs = method.on_train_epoch_start(2, _source(features, shifted, labels, full))
        assert torch.equal(method.pseudo_targets, first) == same
        assert ("pseudo_all_pos_count" in logs) != same


def _loop_margin(query, query_rows, bank, bank_rows, bank_labels, k):
    """Plain reference of the neighbour margin: per entry, sort the cosines of the allowed neighbours."""
    out = np.full((len(query), bank_labels.shape[1]), np.nan)
    for i in range(len(query)):
        for c in range(bank_labels.shape[1]):
            side = []
            for sign in (1, -1):
                sims = [
                    float(query[i] @ bank[j])
                    for j in range(len(bank))
                    if bank_labels[j, c] == sign and (query_rows is None or bank_rows[j] != query_rows[i])
                ]
                side.append(np.mean(sorted(sims, reverse=True)[:k]) if sims else np.nan)
            out[i, c] = side[0] - side[1]
    return out


@pytest.mark.parametrize("exclude_self", [True, False])
def test_neighbour_margin_matches_a_loop(exclude_self: bool) -> None:
    from hst.models.cst import neighbour_margin, standardize_rows

    gen = torch.Generator().manual_seed(3)
    feats = torch.randn(30, 5, generator=gen)
    unit = standardize_rows(feats, feats.mean(0), feats.std(0))
    labels = torch.randint(-1, 2, (30, 4), generator=gen)
    labels[:, 3] = torch.where(labels[:, 3] > 0, -1, labels[:, 3])  # class 3: no known positive -> NaN
    labels[0, 2], labels[1:, 2] = 1, 0  # class 2: one positive, no negative -> NaN; row 0 alone is positive
    rows = torch.arange(30)
    got = neighbour_margin(unit[:12], rows[:12] if exclude_self else None, unit, rows, labels, k=3).numpy()
    want = _loop_margin(
        unit[:12].numpy(), rows[:12].numpy() if exclude_self else None, unit.numpy(), rows.numpy(), labels.numpy(), 3
    )
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert np.isnan(got[:, 3]).all() and np.isnan(got[:, 2]).all()


def test_neighbour_evidence_bank_limit_and_scale() -> None:
    from hst.methods.neighbour_evidence import _bank_rows, neighbour_evidence

    assert _bank_rows(10, 0).tolist() == list(range(10)) and len(_bank_rows(1000, 64)) == 64
    rng = np.random.default_rng(0)
    full = np.where(rng.random((300, 3)) < 0.3, 1, -1)
    pooled = rng.normal(size=(300, 16)) + (full > 0) @ rng.normal(size=(3, 16)) * 2
    labels = np.where(rng.random(full.shape) < 0.2, full, 0).astype(np.int8)
    logits = full * 0.5 + rng.normal(size=full.shape) * 2  # a weak classifier
    found = neighbour_evidence(pooled[:240], labels[:240], logits[:240], pooled[240:], logits[240:], k=10, bank_limit=0)
    hidden = labels[:240] == 0
    from sklearn.metrics import roc_auc_score

    truth = full[:240][hidden] > 0
    # Clustered images: the margin ranks hidden entries far better than chance, and the joint score beats the
    # weak classifier alone.
    assert roc_auc_score(truth, found.margin[hidden]) > 0.9
    assert roc_auc_score(truth, found.joint[hidden]) > roc_auc_score(truth, logits[:240][hidden]) + 0.05
    assert found.joint_val.shape == (60, 3) and np.isfinite(found.joint_val).all()
    no_val = neighbour_evidence(
        pooled[:240], labels[:240], logits[:240], np.zeros((0, 16)), np.zeros((0, 3)), k=10, bank_limit=100
    )
    assert no_val.joint_val.shape == (0, 3) and no_val.margin.shape == (240, 3)


def test_hst_joint_evidence_acts_and_needs_pooled_features() -> None:
    gen = torch.Generator().manual_seed(2)
    num, classes, dim = 240, 3, 6
    full = torch.where(torch.rand(num, classes, generator=gen) < 0.3, 1, -1).to(torch.int8)
    semantic = torch.randn(num, classes, dim, generator=gen)
    pooled = torch.randn(num, 12, generator=gen) + (full > 0).float() @ (torch.randn(classes, 12, generator=gen) * 3)
    logits = full * 0.5 + torch.randn(num, classes, generator=gen) * 2
    labels = torch.where(torch.rand(num, classes, generator=gen) < 0.3, full, torch.zeros_like(full))
    val_rows = torch.arange(180, 240)

    def source(split: str = "train") -> Iterator[FeatureBatch]:
        rows = torch.arange(0, 180) if split == "train" else val_rows
        for start in range(0, len(rows), 32):
            r = rows[start : start + 32]
            index = r - (0 if split == "train" else 180)
            yield FeatureBatch(
                index, logits[r], semantic[r], (labels if split == "train" else full)[r], full[r], pooled[r]
            )

    config = MethodConfig(
        pseudo_label_epoch=0, use_ist=False, prototypes_per_class=2, kmeans_iters=3, cst_neighbours=10
    )
    method = create("hst", config, classes, dim, 180)
    logs = method.on_train_epoch_start(0, source)
    base_rate = float(((labels[:180] == 0) & (full[:180] > 0)).sum() / (labels[:180] == 0).sum())
    for name in ("joint", "neighbours"):
        assert logs[f"pseudo_{name}_pos_count"] > 0
        assert logs[f"pseudo_{name}_pos_precision"] > base_rate + 0.4
    assert "pseudo_classifier_pos_count" not in logs  # the joint evidence replaces the classifier's alone

    def no_pooled(split: str = "train") -> Iterator[FeatureBatch]:
        for batch in source(split):
            yield batch._replace(pooled=None)

    with pytest.raises(ValueError, match="cst_neighbours needs pooled"):
        create("hst", config, classes, dim, 180).on_train_epoch_start(0, no_pooled)


def test_cst_threshold_calibrated_on_validation_holds_its_precision_where_training_entries_mislead() -> None:
    """Known training entries whose category features were fit to their labels separate far better than unknown
    ones: a CST threshold calibrated on them misses its precision target on the unknown entries, one calibrated on
    validation images (features never fit) meets it."""
    gen = torch.Generator().manual_seed(4)
    num, val, classes, dim = 400, 200, 3, 8
    total = num + val
    full = torch.where(torch.rand(total, classes, generator=gen) < 0.3, 1, -1).to(torch.int8)
    centers = torch.randn(classes, dim, generator=gen)
    labels = torch.where(torch.rand(total, classes, generator=gen) < 0.3, full, torch.zeros_like(full))
    labels[num:] = torch.where(torch.rand(val, classes, generator=gen) < 0.5, full[num:], 0)
    fit = (labels != 0) & (torch.arange(total) < num)[:, None]
    strength = torch.where(fit, 3.0, 0.45).unsqueeze(2)
    semantic = torch.randn(total, classes, dim, generator=gen) + (full > 0).unsqueeze(2) * strength * centers
    logits = torch.zeros(total, classes)

    def source(split: str = "train") -> Iterator[FeatureBatch]:
        rows = torch.arange(0, num) if split == "train" else torch.arange(num, total)
        for start in range(0, len(rows), 64):
            r = rows[start : start + 64]
            index = r - (0 if split == "train" else num)
            yield FeatureBatch(index, logits[r], semantic[r], labels[r], full[r], None)

    precision = {}
    for mode in ("training", "validation"):
        config = MethodConfig(
            pseudo_label_epoch=0,
            use_ist=False,
            prototypes_per_class=2,
            kmeans_iters=3,
            cst_neighbours=0,
            classifier_evidence=False,
            calibration_split=mode,
        )
        logs = create("hst", config, classes, dim, num).on_train_epoch_start(0, source)
        assert logs["pseudo_cst_pos_count"] > 0
        precision[mode] = logs["pseudo_cst_pos_precision"]
    assert precision["training"] < 0.85 and precision["validation"] >= 0.9
    with pytest.raises(ValueError, match="calibration_split"):
        create("hst", MethodConfig(calibration_split="test"), classes, dim, num)
