"""Pseudo-label helpers: precision bounds, quality logs, oracle bounds, the leave-one-out IST score and the CST
neighbour margin against plain loops. The calibrated rule itself is tested in tests/test_calibration.py."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from hst.config import MethodConfig
from hst.methods import create
from hst.methods.thresholds import oracle_targets, precision_bound, quality
from hst.models.ist import cooccurrence_matrix, intra_scores_leave_one_out


def test_wilson_bound_matches_its_formula_and_tightens_thresholds() -> None:
    # Wilson lower bound at z = 1 for 9 of 10: (0.9 + 0.05 - sqrt(0.009 + 0.0025)) / 1.1, computed by hand.
    assert precision_bound(np.array([9]), np.array([10]), 1.0)[0] == pytest.approx(0.766147, abs=1e-6)
    assert precision_bound(np.array([9]), np.array([10]), 0.0)[0] == pytest.approx(9 / 11)
    # The bound rises towards the plain ratio as the same precision rests on more entries.
    bounds = precision_bound(np.array([9, 90, 900]), np.array([10, 100, 1000]), 1.0)
    assert np.all(np.diff(bounds) > 0) and bounds[-1] < 0.9


def test_quality_counts_precision_and_recall_against_full_labels() -> None:
    labels = np.array([[0, 0], [0, 1], [0, 0]], dtype=np.int8)
    full = np.array([[1, -1], [-1, 1], [1, -1]], dtype=np.int8)
    pseudo = np.array([[1, -1], [1, 0], [0, 1]], dtype=np.int8)
    q = quality(pseudo, labels, full)
    assert q["pos_count"] == 3 and q["pos_correct"] == 1 and q["pos_precision"] == pytest.approx(1 / 3)
    assert q["pos_possible"] == 2 and q["pos_recall"] == pytest.approx(0.5)
    assert q["neg_count"] == 1 and q["neg_precision"] == 1.0 and q["neg_recall"] == pytest.approx(1 / 3)


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


def test_quality_leaves_entries_without_a_true_label_out_of_precision() -> None:
    labels = np.zeros((1, 3), dtype=np.int8)
    full = np.array([[1, 0, -1]], dtype=np.int8)  # the middle entry has no true label (a "difficult" one)
    q = quality(np.array([[1, 1, 1]], dtype=np.int8), labels, full)
    assert q["pos_count"] == 3 and q["pos_correct"] == 1 and q["pos_precision"] == pytest.approx(1 / 2)
