"""Tests for hst.metrics: AP definitions, unknown handling, P/R/F1 variants, speed."""

from __future__ import annotations

import json
import math
import time
import warnings

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from hst.labels import to_pos1_neg0_unk_minus1
from hst.metrics import (
    MultiLabelMetrics,
    average_precision,
    chance_map,
    evaluate,
    mean_average_precision,
    per_class_average_precision,
)


def _random_problem(
    seed: int, n: int, c: int, unknown: float = 0.0, ties: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 6, size=(n, c)).astype(np.float64) if ties else rng.normal(size=(n, c))
    labels = np.where(rng.random((n, c)) < 0.3, 1, -1).astype(np.int8)
    labels[rng.random((n, c)) < unknown] = 0
    labels[0] = 1  # every class keeps a positive
    labels[1] = -1  # and a negative
    return scores, labels


def _reference_voc_ap(scores: np.ndarray, targets: np.ndarray) -> float:
    """Loop-based VOC 2010+ devkit AP (ties in input order) as an independent reference."""
    order = np.argsort(-scores, kind="stable")
    hits = targets[order]
    tp = np.cumsum(hits)
    fp = np.cumsum(1 - hits)
    recall = np.concatenate(([0.0], tp / hits.sum(), [1.0]))
    precision = np.concatenate(([0.0], tp / (tp + fp), [0.0]))
    for i in range(len(precision) - 2, -1, -1):
        precision[i] = max(precision[i], precision[i + 1])
    total = 0.0
    for i in range(len(recall) - 1):
        if recall[i + 1] != recall[i]:
            total += (recall[i + 1] - recall[i]) * precision[i + 1]
    return total


def test_hand_worked_interpolated_ap() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    targets = np.array([1, 0, 1, 1, 0, 0])
    # Precision at each rank: 1/1, 1/2, 2/3, 3/4, 3/5, 3/6; positives sit at ranks 1, 3, 4.
    # Non-interpolated: (1 + 2/3 + 3/4) / 3 = 29/36.
    # Envelope (max precision at this rank or later) at ranks 1, 3, 4: 1, 3/4, 3/4 -> (1 + 3/4 + 3/4) / 3 = 5/6.
    assert average_precision(scores, targets, interpolated=False) == pytest.approx(29 / 36, abs=1e-12)
    assert average_precision(scores, targets) == pytest.approx(5 / 6, abs=1e-12)
    # Shuffling the input order must not matter without ties.
    perm = np.array([3, 0, 5, 1, 4, 2])
    assert average_precision(scores[perm], targets[perm]) == pytest.approx(5 / 6, abs=1e-12)


def test_hand_worked_ap_with_leading_negative() -> None:
    scores = np.array([5.0, 4.0, 3.0, 2.0])
    targets = np.array([0, 1, 0, 1])
    # Precision at ranks: 0, 1/2, 1/3, 2/4; envelope at the positives (ranks 2, 4): 1/2, 1/2.
    assert average_precision(scores, targets) == pytest.approx(0.5, abs=1e-12)
    # Non-interpolated: (1/2 + 2/4) / 2 = 1/2 as well.
    assert average_precision(scores, targets, interpolated=False) == pytest.approx(0.5, abs=1e-12)


@pytest.mark.parametrize("seed", range(8))
def test_noninterpolated_matches_sklearn_without_ties(seed: int) -> None:
    scores, labels = _random_problem(seed, n=300, c=6)
    ours = per_class_average_precision(scores, labels, interpolated=False)
    for c in range(labels.shape[1]):
        expected = average_precision_score(labels[:, c] == 1, scores[:, c])
        assert abs(ours[c] - expected) < 1e-9
        # Also the textbook definition: mean precision at each positive's rank.
        order = np.argsort(-scores[:, c])
        hits = (labels[order, c] == 1).astype(float)
        precision_at_rank = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        assert abs(ours[c] - precision_at_rank[hits == 1].mean()) < 1e-9


@pytest.mark.parametrize("seed", range(8))
def test_noninterpolated_matches_sklearn_with_ties(seed: int) -> None:
    scores, labels = _random_problem(seed, n=200, c=5, ties=True)
    ours = per_class_average_precision(scores, labels, interpolated=False)
    mean_precision = []
    for c in range(labels.shape[1]):
        assert abs(ours[c] - average_precision_score(labels[:, c] == 1, scores[:, c])) < 1e-9
        order = np.argsort(-scores[:, c])
        hits = (labels[order, c] == 1).astype(float)
        mean_precision.append((np.cumsum(hits) / np.arange(1, len(hits) + 1))[hits == 1].mean())
    # With ties the rank-based mean depends on the tie order, so it must differ somewhere.
    assert not np.allclose(ours, mean_precision, atol=1e-9)


@pytest.mark.parametrize(("seed", "ties"), [(0, False), (1, False), (2, True), (3, True)])
def test_interpolated_matches_reference_devkit(seed: int, ties: bool) -> None:
    scores, labels = _random_problem(seed, n=150, c=5, ties=ties)
    ours = per_class_average_precision(scores, labels)
    noninterp = per_class_average_precision(scores, labels, interpolated=False)
    for c in range(labels.shape[1]):
        assert abs(ours[c] - _reference_voc_ap(scores[:, c], (labels[:, c] == 1).astype(int))) < 1e-12
        if not ties:
            assert ours[c] >= noninterp[c] - 1e-12  # the envelope never lowers precision
    assert (ours > noninterp + 1e-6).any()


def test_interpolated_ties_follow_input_order() -> None:
    scores = np.array([1.0, 1.0, 0.0])
    # All tied at the top: positive first gives 1, negative first gives envelope 1/2.
    assert average_precision(scores, np.array([1, 0, 0])) == pytest.approx(1.0)
    assert average_precision(scores, np.array([0, 1, 0])) == pytest.approx(0.5)
    # Non-interpolated treats the tie as one threshold: precision 1/2 either way.
    assert average_precision(scores, np.array([1, 0, 0]), interpolated=False) == pytest.approx(0.5)
    assert average_precision(scores, np.array([0, 1, 0]), interpolated=False) == pytest.approx(0.5)


@pytest.mark.parametrize("ties", [False, True])
def test_unknown_entries_equal_deleting_them(ties: bool) -> None:
    scores, labels = _random_problem(11, n=250, c=6, unknown=0.4, ties=ties)
    for interpolated in (True, False):
        ours = per_class_average_precision(scores, labels, interpolated=interpolated)
        for c in range(labels.shape[1]):
            known = labels[:, c] != 0
            expected = average_precision(scores[known, c], (labels[known, c] == 1).astype(int), interpolated)
            assert abs(ours[c] - expected) < 1e-12


def test_fully_unknown_rows_do_not_change_any_metric() -> None:
    scores, labels = _random_problem(12, n=120, c=7, unknown=0.2)
    labels[[5, 17, 40, 41, 99]] = 0
    keep = np.ones(len(labels), dtype=bool)
    keep[[5, 17, 40, 41, 99]] = False
    full = evaluate(scores, labels).to_dict()
    deleted = evaluate(scores[keep], labels[keep]).to_dict()
    assert full.keys() == deleted.keys()
    for key, value in full.items():
        if isinstance(value, float):
            assert value == pytest.approx(deleted[key], abs=1e-9), key
    assert full["per_class_AP"] == pytest.approx(deleted["per_class_AP"], abs=1e-9)


def test_scores_of_unknown_entries_are_ignored() -> None:
    scores, labels = _random_problem(13, n=100, c=5, unknown=0.3)
    changed = scores.copy()
    changed[labels == 0] = np.random.default_rng(0).normal(size=int((labels == 0).sum())) * 10
    a = evaluate(scores, labels, top_k=5)  # top-5 of 5 classes keeps everything, so top-k cannot differ
    b = evaluate(changed, labels, top_k=5)
    for name in ("mAP", "mAP_noninterp", "OP", "OR", "OF1", "CP", "CR", "CF1", "CF1_top3", "OF1_top3"):
        assert getattr(a, name) == pytest.approx(getattr(b, name), abs=1e-9), name


def test_class_without_positive_is_skipped_with_warning() -> None:
    scores, labels = _random_problem(14, n=80, c=4)
    labels[:, 1] = -1
    labels[:, 3] = np.where(labels[:, 3] == 1, 0, labels[:, 3])  # positives turned unknown
    names = ["cat", "dog", "car", "bus"]
    with pytest.warns(UserWarning, match=r"dog, bus"):
        result = evaluate(scores, labels, class_names=names)
    assert result.skipped_classes == ["dog", "bus"]
    assert set(result.per_class_AP) == {"cat", "car"}
    values = [v for v in result.to_dict().values() if isinstance(v, float)]
    assert all(math.isfinite(v) and 0.0 <= v <= 100.0 for v in values)
    kept = labels[:, [0, 2]]
    assert result.mAP == pytest.approx(mean_average_precision(scores[:, [0, 2]], kept), abs=1e-9)
    assert result.mAP == pytest.approx(np.mean(list(result.per_class_AP.values())), abs=1e-9)
    sub = evaluate(scores[:, [0, 2]], kept)
    assert (result.CP, result.CR) == pytest.approx((sub.CP, sub.CR), abs=1e-9)
    with pytest.warns(UserWarning, match="dog"):
        assert math.isfinite(mean_average_precision(scores, labels, class_names=names))
    assert np.isnan(per_class_average_precision(scores, labels)[[1, 3]]).all()


def test_no_class_with_positive_raises() -> None:
    scores = np.zeros((5, 3))
    labels = np.full((5, 3), -1, dtype=np.int8)
    labels[0, 0] = 0
    with pytest.raises(ValueError, match="no class has a known positive"):
        evaluate(scores, labels)
    with pytest.raises(ValueError, match="no class has a known positive"):
        mean_average_precision(scores, labels)
    with pytest.raises(ValueError, match="no class has a known positive"):
        chance_map(labels)
    with pytest.raises(ValueError, match="without a positive"):
        average_precision(np.zeros(3), np.zeros(3))


def test_overall_and_per_class_f1_hand_example() -> None:
    scores = np.array(
        [
            [2.0, -1.0, 0.5],
            [1.0, 3.0, 4.0],
            [-0.5, 0.0, 1.5],  # a logit of exactly 0 is probability 0.5, so predicted positive
        ]
    )
    labels = np.array([[1, -1, -1], [-1, 1, 0], [1, 1, 1]], dtype=np.int8)
    # Predicted (logit >= 0): class 0 -> rows 0, 1; class 1 -> rows 1, 2; class 2 -> rows 0, 1, 2,
    # but (1, 2) is unknown and is not counted.
    # class 0: correct 1, predicted 2, positives 2 -> P 1/2, R 1/2
    # class 1: correct 2, predicted 2, positives 2 -> P 1,   R 1
    # class 2: correct 1, predicted 2, positives 1 -> P 1/2, R 1
    # OP = 4/6, OR = 4/5, OF1 = 2·(2/3)(4/5)/(2/3 + 4/5) = 8/11
    # CP = 2/3, CR = 5/6, CF1 = 2·(2/3)(5/6)/(2/3 + 5/6) = 20/27 (mean of per-class F1 would be 13/18)
    m = evaluate(scores, labels)
    assert m.OP == pytest.approx(100 * 2 / 3)
    assert m.OR == pytest.approx(100 * 4 / 5)
    assert m.OF1 == pytest.approx(100 * 8 / 11)
    assert m.CP == pytest.approx(100 * 2 / 3)
    assert m.CR == pytest.approx(100 * 5 / 6)
    assert m.CF1 == pytest.approx(100 * 20 / 27)
    assert m.CF1 != pytest.approx(100 * 13 / 18)
    # With three classes, top-3 keeps everything.
    assert (m.OP_top3, m.CF1_top3) == pytest.approx((m.OP, m.CF1))
    # Same decisions from probabilities with the flag.
    probabilities = 1.0 / (1.0 + np.exp(-scores))
    p = evaluate(probabilities, labels, scores_are_probabilities=True)
    assert (p.OP, p.OR, p.CP, p.CR, p.mAP) == pytest.approx((m.OP, m.OR, m.CP, m.CR, m.mAP))


def test_top3_hand_example() -> None:
    scores = np.array([[3.0, 2.0, 1.0, 0.5, -1.0], [-2.0, -1.0, 0.2, -3.0, -0.5]])
    labels = np.array([[1, -1, 1, 1, -1], [-1, 1, 1, -1, 1]], dtype=np.int8)
    # Above threshold: row 0 -> classes 0-3, row 1 -> class 2. Top 3: row 0 -> 0, 1, 2; row 1 -> 2, 4, 1,
    # of which only class 2 is above threshold. So top-3 predictions are (0,0), (0,1), (0,2), (1,2).
    # per class (correct, predicted, positives): (1,1,1) (0,1,1) (2,2,2) (0,0,1) (0,0,1)
    # OP = 3/4, OR = 3/6, OF1 = 2·(3/4)(1/2)/(5/4) = 3/5
    # CP = (1 + 0 + 1 + 0/1 + 0/1)/5 = 2/5 (predicted count clipped to 1), CR = (1 + 0 + 1 + 0 + 0)/5 = 2/5
    m = evaluate(scores, labels)
    assert (m.OP_top3, m.OR_top3, m.OF1_top3) == pytest.approx((75.0, 50.0, 60.0))
    assert (m.CP_top3, m.CR_top3, m.CF1_top3) == pytest.approx((40.0, 40.0, 40.0))
    # Without the top-3 cut, (0,3) is a fourth correct prediction: OP = 4/5, OR = 4/6.
    assert (m.OP, m.OR) == pytest.approx((80.0, 100 * 4 / 6))
    assert m.top_k == 3


def test_top_k_ties_go_to_lower_class_index() -> None:
    scores = np.ones((2, 4))
    labels = np.array([[-1, -1, -1, 1], [1, 1, 1, -1]], dtype=np.int8)
    m = evaluate(scores, labels)
    assert m.OR_top3 == 75.0  # class 3 loses the tie in row 0
    assert m.OR == 100.0
    assert evaluate(scores, labels, top_k=4).OR_top3 == 100.0


def test_threshold_on_logits_matches_probabilities() -> None:
    scores, labels = _random_problem(15, n=200, c=6, unknown=0.2)
    scores[3, 2] = 0.0
    probabilities = 1.0 / (1.0 + np.exp(-scores))
    for threshold in (0.5, 0.3, 0.8):
        a = evaluate(scores, labels, threshold=threshold)
        b = evaluate(probabilities, labels, threshold=threshold, scores_are_probabilities=True)
        for key, value in a.to_dict().items():
            if isinstance(value, float):
                assert value == pytest.approx(getattr(b, key), abs=1e-9), (threshold, key)
    assert evaluate(scores, labels, threshold=0.3).OR > evaluate(scores, labels, threshold=0.8).OR


def test_torch_inputs_give_the_same_result() -> None:
    torch = pytest.importorskip("torch")
    scores, labels = _random_problem(16, n=100, c=5, unknown=0.2)
    expected = evaluate(scores.astype(np.float32), labels).to_dict()
    got = evaluate(torch.from_numpy(scores.astype(np.float32)).requires_grad_(), torch.from_numpy(labels))
    assert got.to_dict()["mAP"] == pytest.approx(expected["mAP"], abs=1e-9)
    assert got.to_dict()["CF1_top3"] == pytest.approx(expected["CF1_top3"], abs=1e-9)
    half = torch.from_numpy(scores).to(torch.bfloat16)
    assert math.isfinite(mean_average_precision(half, torch.from_numpy(labels)))


def test_torchmetrics_noninterpolated_cross_check() -> None:
    torch = pytest.importorskip("torch")
    classification = pytest.importorskip("torchmetrics.functional.classification")
    rng = np.random.default_rng(17)
    scores = rng.random((300, 7))
    labels = np.where(rng.random((300, 7)) < 0.25, 1, -1).astype(np.int8)
    labels[rng.random((300, 7)) < 0.3] = 0
    labels[0] = 1
    expected = classification.multilabel_average_precision(
        torch.from_numpy(scores),
        torch.from_numpy(to_pos1_neg0_unk_minus1(labels).astype(np.int64)),
        num_labels=7,
        average=None,
        ignore_index=-1,
    )
    ours = per_class_average_precision(scores, labels, interpolated=False)
    np.testing.assert_allclose(ours, expected.double().numpy(), atol=1e-6)


def test_chance_map() -> None:
    labels = np.array([[1, 1, -1], [-1, 1, -1], [0, -1, -1], [-1, 0, -1]], dtype=np.int8)
    # Known positive rates: 1/3, 2/3; the third class has no positive and is left out -> 50 %.
    assert chance_map(labels) == pytest.approx(50.0)
    scores, random_labels = _random_problem(18, n=300, c=8, unknown=0.3)
    constant = np.zeros_like(scores)
    # A constant scorer is one threshold, so its non-interpolated AP is exactly the positive rate.
    ap = per_class_average_precision(constant, random_labels, interpolated=False)
    assert 100 * ap.mean() == pytest.approx(chance_map(random_labels), abs=1e-9)
    assert evaluate(constant, random_labels).mAP_noninterp == pytest.approx(chance_map(random_labels), abs=1e-9)


def test_to_dict_is_json_serialisable() -> None:
    scores, labels = _random_problem(19, n=60, c=3)
    result = evaluate(scores, labels, class_names=["a", "b", "c"])
    assert isinstance(result, MultiLabelMetrics)
    d = json.loads(json.dumps(result.to_dict()))
    for key in ("mAP", "OF1", "CF1", "CP", "CR", "OP", "OR", "per_class_AP", "mAP_noninterp", "OF1_top3"):
        assert key in d
    assert set(d["per_class_AP"]) == {"a", "b", "c"}
    assert d["mAP"] == pytest.approx(result.mAP)
    for key, value in d.items():
        if isinstance(value, float):
            assert 0.0 <= value <= 100.0, key


def test_perfect_and_worst_rankings() -> None:
    labels = np.array([[1, -1], [1, 1], [-1, -1], [-1, 1]], dtype=np.int8)
    perfect = np.where(labels == 1, 5.0, -5.0)
    m = evaluate(perfect, labels)
    assert (m.mAP, m.mAP_noninterp, m.OF1, m.CF1) == pytest.approx((100.0, 100.0, 100.0, 100.0))
    worst = evaluate(-perfect, labels)
    assert worst.OP == 0.0 and worst.CF1 == 0.0 and worst.OF1 == 0.0
    # Each class: two tied negatives, then two tied positives; precision 1/3 and 2/4, envelope 1/2 at both.
    assert worst.mAP == pytest.approx(50.0)
    assert worst.mAP_noninterp == pytest.approx(50.0)


def test_input_validation() -> None:
    scores, labels = _random_problem(20, n=10, c=3)
    with pytest.raises(ValueError, match="shape"):
        evaluate(scores[:, :2], labels)
    bad = scores.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        evaluate(bad, labels)
    with pytest.raises(ValueError, match="allowed values"):
        evaluate(scores, labels * 2)
    with pytest.raises(ValueError, match="threshold"):
        evaluate(scores, labels, threshold=1.0)
    with pytest.raises(ValueError, match="top_k"):
        evaluate(scores, labels, top_k=0)
    with pytest.raises(ValueError, match="class names"):
        evaluate(scores, labels, class_names=["a"])
    with pytest.raises(ValueError, match="0/1"):
        average_precision(np.zeros(3), np.array([1, -1, 0]))
    with pytest.warns(UserWarning, match="no negative"):
        mean_average_precision(scores, (labels == 1).astype(np.int8))


def test_speed_40000_by_80() -> None:
    rng = np.random.default_rng(21)
    scores = rng.normal(size=(40_000, 80)).astype(np.float32)
    labels = np.where(rng.random((40_000, 80)) < 0.05, 1, -1).astype(np.int8)
    labels[rng.random((40_000, 80)) < 0.5] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # CPU time of this process, so that other jobs on a shared machine do not make the test flaky.
        start = time.process_time()
        result = evaluate(scores, labels)
        elapsed = time.process_time() - start
    assert elapsed < 3.0, f"evaluate took {elapsed:.2f} s of CPU time"
    # Random scores give mAP near the positive rate (5 %).
    assert 3.0 < result.mAP < 8.0
