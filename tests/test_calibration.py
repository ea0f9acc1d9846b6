"""The calibrated pseudo-label rule: thresholds against brute force, the precision it reaches where the answer is
known, refusals instead of borrowed thresholds, scores that never saw their own label, and HST's round."""

from __future__ import annotations

import csv
import dataclasses
import itertools
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from scipy.stats import norm

from hst.config import MethodConfig
from hst.methods import create
from hst.methods.base import FeatureBatch, StepContext
from hst.methods.calibration import apply_thresholds, calibrate_scores, class_threshold, clopper_pearson
from hst.methods.cross_fitted_evidence import cross_fitted_evidence, cross_fitted_probe
from hst.methods.thresholds import precision_bound
from hst.metrics import positives_only_labels
from hst.models.network import NetworkOutput


def _brute(scores: np.ndarray, wanted: np.ndarray, target: float, min_wanted: int, z: float, sequential: bool) -> float:
    """Lowest distinct score whose kept set (score ≥ t) has its Wilson bound ≥ target and enough hits; sequential:
    walking down the distinct scores, the last cut before the first that fails after one has passed."""
    best = np.inf
    for t in np.unique(scores[~np.isnan(scores)])[::-1]:
        kept = scores >= t
        hits, count = int((kept & wanted).sum()), int(kept.sum())
        if hits >= min_wanted and precision_bound(np.array([hits]), np.array([count]), z)[0] >= target:
            best = float(t)
        elif sequential and np.isfinite(best):
            break
    return best


@pytest.mark.parametrize("seed", range(10))
def test_class_threshold_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(10, 80))
    wanted = rng.random(n) < 0.4
    scores = np.round(rng.random(n) + wanted * rng.random() * 1.5, 1)  # ties must share one decision
    scores[rng.random(n) < 0.1] = np.nan
    for target, min_wanted, z, sequential in itertools.product((0.6, 0.8, 0.9), (1, 3), (0.0, 1.0), (True, False)):
        t, above, hits, why = class_threshold(scores, wanted, target, min_wanted, 1, z, sequential=sequential)
        assert t == _brute(scores, wanted, target, min_wanted, z, sequential)
        if np.isfinite(t):
            kept = scores >= t  # NaN is never kept
            assert (above, hits, why) == (int(kept.sum()), int((kept & wanted).sum()), "")
        else:
            assert why


def test_calibration_reaches_the_target_where_the_precision_is_known() -> None:
    """Scores N(2, 1) for positives and N(0, 1) for negatives at prevalence 0.2: the true precision of any threshold
    is known in closed form. Calibrated on a random 20% of the entries, the rule must reach the target on the
    whole class in most draws, without being so strict that it gives almost nothing."""
    prevalence, target, n = 0.2, 0.9, 4000

    def true_precision(t: float) -> float:
        pos, neg = prevalence * norm.sf(t - 2), (1 - prevalence) * norm.sf(t)
        return pos / (pos + neg)

    reached, thresholds = [], []
    for seed in range(40):
        rng = np.random.default_rng(seed)
        positive = rng.random(n) < prevalence
        scores = rng.normal(size=n) + 2 * positive
        labels = np.where(positive, 1, -1)[:, None] * (rng.random((n, 1)) < 0.2)
        calibration = calibrate_scores(scores[:, None], labels.astype(np.int8), target, z=1.0)
        t = float(calibration.threshold[0])
        assert np.isfinite(t)
        reached.append(true_precision(t))
        thresholds.append(t)
    reached = np.array(reached)
    exact = next(t for t in np.linspace(0, 5, 5001) if true_precision(t) >= target)  # the ideal threshold
    assert np.mean(reached >= target - 0.02) >= 0.9
    # not so strict that it gives almost nothing: the median threshold keeps ≥ 40% of the ideal one's positives
    # (the sequential scan stops at the first dip of the precision curve: 45% here; the lowest passing cut, 74%)
    kept_share = norm.sf(np.median(thresholds) - 2) / norm.sf(exact - 2)
    assert np.mean(reached) <= 0.975 and kept_share >= 0.4


def test_the_sequential_scan_stops_at_the_first_failing_cut() -> None:
    wanted = np.array(
        [True] * 20 + [False] * 6 + [True] * 40
    )  # passes down to 24 (20 of 25: 0.8), fails at 25, passes again at 66
    scores = np.arange(len(wanted), 0, -1, dtype=float)
    assert class_threshold(scores, wanted, 0.8, 1, 1, 0.0, sequential=True)[:2] == (scores[23], 24)
    assert class_threshold(scores, wanted, 0.8, 1, 1, 0.0, sequential=False)[:2] == (scores[65], 66)


def test_an_unknown_scan_is_refused_naming_the_key() -> None:
    from hst.methods.pseudo_label_round import RoundSettings

    assert RoundSettings.from_method(MethodConfig(calibration_scan="lowest")).sequential is False
    with pytest.raises(ValueError, match=r"method\.calibration_scan: 'upward'"):
        RoundSettings.from_method(MethodConfig(calibration_scan="upward"))
    with pytest.raises(ValueError, match=r"method\.calibration_scan"):
        create("hst", MethodConfig(calibration_scan="upward"), 4, 6, 10)


def test_the_sequential_scan_keeps_the_bound_level_where_the_lowest_passing_cut_does_not() -> None:
    """Fully labelled classes of 1,000 entries, scores N(2, 1) / N(0, 1) at prevalence 0.2 (true precision in closed
    form). A one-sided 90% bound (z = 1.28) promises that at most 10% of the chosen thresholds fall below the
    target; taking the lowest of many passing cuts picks the luckiest dip and breaks that promise."""
    prevalence, target, n = 0.2, 0.9, 1000

    def true_precision(t: float) -> float:
        pos, neg = prevalence * norm.sf(t - 2), (1 - prevalence) * norm.sf(t)
        return pos / (pos + neg)

    def below_rate(sequential: bool) -> float:
        below = []
        for seed in range(300):
            rng = np.random.default_rng(seed)
            positive = rng.random(n) < prevalence
            scores = rng.normal(size=n) + 2 * positive
            labels = np.where(positive, 1, -1)[:, None].astype(np.int8)
            t = float(calibrate_scores(scores[:, None], labels, target, z=1.28, sequential=sequential).threshold[0])
            below.append(np.isfinite(t) and true_precision(t) < target)
        return float(np.mean(below))

    assert below_rate(sequential=True) <= 0.10
    assert below_rate(sequential=False) > 0.10  # the failure the sequential scan exists to prevent


def test_a_class_that_cannot_be_calibrated_gets_nothing_and_says_why() -> None:
    rng = np.random.default_rng(0)
    labels = np.where(rng.random((300, 3)) < 0.3, 1, -1).astype(np.int8)
    labels[:, 1] = np.where(labels[:, 1] > 0, 1, 0)  # class 1: positives only (single-positive labels)
    labels[:, 2] = -1
    labels[:2, 2] = 1  # class 2: two known positives
    scores = np.where(labels > 0, 1.0, 0.0) + rng.random((300, 3))
    calibration = calibrate_scores(scores, labels, 0.9, min_wanted=5, min_other=5)
    assert np.isfinite(calibration.threshold[0])
    assert np.isinf(calibration.threshold[1:]).all()  # never a borrowed threshold
    assert "other label" in calibration.reason[1] and "with this label" in calibration.reason[2]
    assert calibration.summary(["a", "b", "c"])[0].startswith("b: ")
    # Scored entries are counted: six known positives of which three are unscored do not reach five.
    scores[np.flatnonzero(labels[:, 0] > 0)[3:], 0] = np.nan
    assert "3 known entries" in calibrate_scores(scores, labels, 0.9).reason[0]


def test_cross_fitted_scores_never_see_their_own_label() -> None:
    """Changing an image's known labels leaves its own probe logit and neighbour margin unchanged."""
    rng = np.random.default_rng(1)
    full = np.where(rng.random((200, 3)) < 0.3, 1, -1)
    pooled = rng.normal(size=(200, 10)) + (full > 0) @ rng.normal(size=(3, 10)) * 2
    labels = np.where(rng.random(full.shape) < 0.5, full, 0).astype(np.int8)
    flipped = labels.copy()
    flipped[7] = np.where(labels[7] == 0, 1, -labels[7])
    logits, _ = cross_fitted_probe(pooled, labels, folds=4, decays=(1e-3,))
    logits_flipped, _ = cross_fitted_probe(pooled, flipped, folds=4, decays=(1e-3,))
    np.testing.assert_allclose(logits_flipped[7], logits[7], atol=1e-5)
    assert np.abs(logits_flipped - logits).max() > 1e-3  # other images' scores do see it
    margin = cross_fitted_evidence(pooled, labels, neighbours=5, probe=False).margin
    margin_flipped = cross_fitted_evidence(pooled, flipped, neighbours=5, probe=False).margin
    np.testing.assert_allclose(margin_flipped[7], margin[7], atol=1e-6)


def test_clopper_pearson_matches_known_values() -> None:
    low, high = clopper_pearson(np.array([9, 0, 10]), np.array([10, 10, 10]))
    np.testing.assert_allclose(low, [0.554984, 0.0, 0.691503], atol=1e-5)
    np.testing.assert_allclose(high, [0.997471, 0.308497, 1.0], atol=1e-5)


def test_positives_only_labels_give_model_selection_something_to_rank() -> None:
    labels = np.array([[1, 1], [0, -1], [0, 0]], dtype=np.int8)
    assert np.array_equal(positives_only_labels(labels), [[1, 1], [-1, -1], [-1, 0]])
    entry = np.array([[1, -1], [-1, 0]], dtype=np.int8)
    assert positives_only_labels(entry) is entry  # known negatives everywhere: unchanged


def _clustered(seed: int, num: int, classes: int, known: float, positives_only: bool = False):
    gen = torch.Generator().manual_seed(seed)
    full = torch.where(torch.rand(num, classes, generator=gen) < 0.3, 1, -1).to(torch.int8)
    pooled = torch.randn(num, 12, generator=gen) + (full > 0).float() @ (torch.randn(classes, 12, generator=gen) * 3)
    labels = torch.where(torch.rand(num, classes, generator=gen) < known, full, torch.zeros_like(full))
    if positives_only:
        labels = torch.where(labels > 0, labels, torch.zeros_like(labels))
    semantic = torch.randn(num, classes, 6, generator=gen)
    logits = torch.randn(num, classes, generator=gen)

    def source(split: str = "train") -> Iterator[FeatureBatch]:
        for start in range(0, num, 32):
            r = torch.arange(start, min(start + 32, num))
            yield FeatureBatch(r, logits[r], semantic[r], labels[r], full[r], pooled[r])

    return full, labels, semantic, logits, source


def test_hst_decides_pseudo_labels_once_at_the_target_precision_and_trains_on_them() -> None:
    num, classes = 400, 4
    full, labels, semantic, logits, source = _clustered(0, num, classes, 0.3)
    config = MethodConfig(pseudo_label_epoch=1, prototypes_per_class=2, kmeans_iters=3, use_ist=False)
    method = create("hst", config, classes, 6, num)
    logs = method.on_train_epoch_start(0, source)
    assert logs["pseudo_all_pos_count"] > 50 and logs["pseudo_all_pos_precision"] >= 0.88
    assert logs["calibrated_positive_classes"] == classes and logs["uncalibrated_classes"] == 0
    table = method.pseudo_targets
    assert table is not None and torch.all(table[labels != 0] == 0)
    assert "pseudo_all_pos_count" not in method.on_train_epoch_start(1, source)  # decided once
    assert torch.equal(method.pseudo_targets, table)
    rows = torch.arange(16)
    output = NetworkOutput(logits[rows].clone().requires_grad_(), semantic[rows].clone().requires_grad_())
    result = method.training_loss(output, labels[rows], StepContext(1, 1, 2, rows, full[rows]))
    assert result.logs["pseudo_entries"] == int(((labels[rows] == 0) & (table[rows] != 0)).sum()) > 0
    clone = create("hst", config, classes, 6, num)
    clone.load_extra_state(method.extra_state())
    assert clone.pseudo_targets is not None and torch.equal(clone.pseudo_targets, table)

    def no_pooled(split: str = "train") -> Iterator[FeatureBatch]:
        for batch in source(split):
            yield batch._replace(pooled=None)

    with pytest.raises(ValueError, match="pooled backbone features"):
        create("hst", config, classes, 6, num).on_train_epoch_start(0, no_pooled)


@pytest.mark.parametrize("weight", [None, 1.0])
def test_hst_with_positives_only_refuses_pseudo_labels_and_uses_weak_negatives(weight: float | None) -> None:
    num, classes = 300, 4
    _, labels, semantic, _, source = _clustered(1, num, classes, 0.3, positives_only=True)
    config = MethodConfig(
        pseudo_label_epoch=1, use_ist=False, use_cst=False, weak_negative_weight=weight, weak_negative_withhold=0.0
    )
    method = create("hst", config, classes, 6, num)
    logs = method.on_train_epoch_start(0, source)
    assert logs["pseudo_all_pos_count"] == 0 and logs["uncalibrated_classes"] == classes
    assert method.weak_negative_classes is not None and bool(method.weak_negative_classes.all())
    rows = torch.arange(32)
    zeros = torch.zeros(32, classes, requires_grad=True)
    method.training_loss(NetworkOutput(zeros, semantic[rows]), labels[rows], StepContext(1, 1, 2, rows)).loss.backward()
    # At logit 0 an entry's gradient is its weight × (0.5 − target): known positives weigh 1, unknown entries are
    # negatives at 1/(C−1) when the weight is None.
    grad, known = zeros.grad, labels[rows] > 0
    assert known.any() and (~known).any()
    ratio = grad[~known] / grad[known].mean()
    expected = -(1 / (classes - 1) if weight is None else weight)
    torch.testing.assert_close(ratio, torch.full_like(ratio, expected))


def test_hst_starts_classes_without_known_negatives_at_the_rate_it_trains_towards() -> None:
    """With positives only, the known positive rate is ~1; HST trains those classes on weak negatives, so its initial
    biases must start from the weighted rate (at weight 1, assume-negative's own prior), not from ~1."""
    _, labels, *_ = _clustered(2, 300, 4, 0.3, positives_only=True)
    labels = labels.numpy()
    assume_negative = create("assume_negative", MethodConfig(), 4, 6, 300).class_prior(labels)
    # Nothing withheld here: the prior with withheld entries is tested in test_weak_negatives.
    plain = MethodConfig(weak_negative_weight=1.0, weak_negative_withhold=0.0)
    full_weight = create("hst", plain, 4, 6, 300).class_prior(labels)
    np.testing.assert_allclose(full_weight, assume_negative)
    weak = create("hst", dataclasses.replace(plain, weak_negative_weight=0.25), 4, 6, 300).class_prior(labels)
    positives = (labels > 0).sum(0)
    np.testing.assert_allclose(weak, (positives + 0.5) / (positives + 0.25 * (labels == 0).sum(0) + 1))
    _, with_negatives, *_ = _clustered(2, 300, 4, 0.3)
    entry = with_negatives.numpy()
    np.testing.assert_allclose(
        create("hst", MethodConfig(), 4, 6, 300).class_prior(entry),
        create("partial_bce", MethodConfig(), 4, 6, 300).class_prior(entry),
    )


def test_labels_a_person_chose_do_not_calibrate_the_rule() -> None:
    """After a review of the entries the rule was surest of, calibrating on every known entry overstates the
    precision on the ones left; calibrating on the randomly hidden ones alone keeps it (``calibration_labels``)."""
    from hst.methods.pseudo_label_round import RoundSettings, pseudo_label_round

    rng = np.random.default_rng(5)
    num, classes = 1500, 3
    full = np.where(rng.random((num, classes)) < 0.25, 1, -1).astype(np.int8)
    pooled = rng.normal(size=(num, 16)) + (full > 0) @ rng.normal(size=(classes, 16)) * 0.9
    random_known = np.where(rng.random(full.shape) < 0.2, full, 0).astype(np.int8)
    settings = RoundSettings(target_precision=0.9, z=1.0, neighbours=20, folds=3)
    first = pseudo_label_round(pooled, random_known, settings)
    reviewed = random_known.copy()
    for c in range(classes):  # a person answers the 80 unknown entries the rule ranks highest
        unknown = np.flatnonzero(random_known[:, c] == 0)
        top = unknown[np.argsort(-first.evidence.joint[unknown, c])[:80]]
        reviewed[top, c] = full[top, c]

    def precision(result) -> float:
        chosen = (result.targets > 0) & (reviewed == 0)
        return float((full[chosen] > 0).mean())

    everything = pseudo_label_round(pooled, reviewed, settings)
    honest = pseudo_label_round(pooled, reviewed, settings, calibration_labels=random_known)
    assert (honest.targets[reviewed != 0] == 0).all()
    assert precision(honest) >= 0.87 and precision(everything) < precision(honest) - 0.05


def test_calibration_labels_reach_the_method_and_must_agree(tmp_path) -> None:
    from hst.config import DataConfig
    from hst.data.base import DataError
    from hst.data.partial import make_partial
    from hst.data.readers import write_csv_manifest
    from hst.data.spec import load_dataset
    from hst.data.splits import prepare_splits

    data = load_dataset("synthetic:60")
    before = make_partial(data.labels, "entry", 0.2, 0)
    after = before.copy()
    hidden = np.argwhere(before == 0)[:30]
    after[hidden[:, 0], hidden[:, 1]] = data.labels[hidden[:, 0], hidden[:, 1]]  # a person's answers
    write_csv_manifest(data.with_labels(before), tmp_path / "before.csv")
    write_csv_manifest(data.with_labels(after), tmp_path / "after.csv")
    config = DataConfig(
        train="synthetic:60",
        partial_labels=str(tmp_path / "after.csv"),
        calibration_labels=str(tmp_path / "before.csv"),
    )
    splits = prepare_splits(config)
    assert splits.train_calibration is not None and splits.train_rows is not None
    assert np.array_equal(splits.train_calibration, before[splits.train_rows])
    assert np.array_equal(splits.train.labels, after[splits.train_rows])
    wrong = before.copy()
    row, col = np.argwhere(before != 0)[0]
    wrong[row, col] = -wrong[row, col]
    write_csv_manifest(data.with_labels(wrong), tmp_path / "wrong.csv")
    with pytest.raises(DataError, match=r"wrong\.csv: 1 known labels differ"):
        prepare_splits(dataclasses.replace(config, calibration_labels=str(tmp_path / "wrong.csv")))


def test_single_positive_labels_train_hst_end_to_end(tmp_path, one_thread: None) -> None:
    """``data.scheme=single-positive``: HST refuses pseudo positives it cannot calibrate, trains with weak
    negatives (some withheld), and model selection ranks the validation images' known positives against their
    unlabelled entries (on known entries alone every validation AP would be 100)."""
    from hst.config import TrainConfig, resolve_config
    from hst.engine.train import train
    from tiny_run import TINY

    overrides = [
        *TINY,
        "data.train=synthetic:200",
        "data.scheme=single-positive",
        "data.proportion=1.0",
        "model.trainable=none",
        "trainer.epochs=2",
        f"data.cache_dir={tmp_path / 'cache'}",
        f"trainer.output_dir={tmp_path}",
        "trainer.run_name=sp",
    ]
    result = train(resolve_config(TrainConfig, None, overrides))
    with (result.run_dir / "csv" / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    logged = next(row for row in rows if row.get("method/uncalibrated_classes"))
    assert float(logged["method/pseudo_all_pos_count"]) == 0
    assert float(logged["method/uncalibrated_classes"]) == 24
    assert float(logged["method/withheld_count"]) > 0 and "method/withheld_precision" in logged  # withholding acts
    val = [float(row["val/mAP"]) for row in rows if row.get("val/mAP")]
    assert val and max(val) < 90  # scored against unlabelled entries too, not 100 for any model
    assert result.test_metrics["mAP"] > 30


def _reviewed_blocks(seed: int, answered: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One class: 8,000 entries scoring high, all positive, and 2,000 scoring in the middle, 70% positive (the
    rest low, all negative); 10% known at random; a review answers 4,000 once-unknown entries, either the high
    ones (the likeliest positives, as a person or the ``positive`` policy picks) or a random sample of them."""
    rng = np.random.default_rng(seed)
    high, middle, low = 8000, 2000, 10000
    score = np.concatenate([3 + rng.random(high), 1 + rng.random(middle), -rng.random(low)])
    full = np.concatenate([np.ones(high), np.where(rng.random(middle) < 0.7, 1, -1), -np.ones(low)]).astype(np.int8)
    before = np.where(rng.random(len(score)) < 0.1, full, 0).astype(np.int8)
    unknown = np.flatnonzero(before == 0)
    pick = unknown[score[unknown] >= 3][:4000] if answered == "likeliest" else rng.choice(unknown, 4000, False)
    after = before.copy()
    after[pick] = full[pick]
    return score[:, None], full[:, None], before[:, None], after[:, None]


@pytest.mark.parametrize("seed", [0, 1])
def test_after_a_review_of_the_likeliest_positives_the_fills_keep_the_target(seed: int) -> None:
    """Known answer: above the middle block the once-unknown entries are (8,000 + 1,400) / 10,000 = 94% positive, so
    the plain rule fills the whole middle block; once 4,000 of the high ones are answered, what it fills is about
    (3,200 + 1,260) / 5,000 = 89% positive before the low entries it also takes. The corrected rule must stop
    higher, where what is left still reaches the target."""
    score, full, before, after = _reviewed_blocks(seed, "likeliest")
    plain = calibrate_scores(score, before, 0.9, +1, z=1.28)
    corrected = calibrate_scores(score, before, 0.9, +1, z=1.28, reviewed_labels=after)
    fills_plain = apply_thresholds(score, after, plain, +1)
    fills_corrected = apply_thresholds(score, after, corrected, +1)
    assert (full[fills_plain] > 0).mean() < 0.87  # the plain rule misses its promise on what it fills
    assert corrected.threshold[0] > plain.threshold[0] + 0.3
    assert fills_corrected.sum() >= 3000 and (full[fills_corrected] > 0).mean() >= 0.9


def test_after_a_random_review_the_correction_changes_little() -> None:
    """Answers drawn at random leave the rest a random sample: the corrected rule fills the same blocks."""
    score, full, before, after = _reviewed_blocks(3, "random")
    plain = calibrate_scores(score, before, 0.9, +1, z=1.28)
    corrected = calibrate_scores(score, before, 0.9, +1, z=1.28, reviewed_labels=after)
    assert (plain.threshold[0] < 2) and (corrected.threshold[0] < 2)
    fills_plain = apply_thresholds(score, after, plain, +1)
    fills_corrected = apply_thresholds(score, after, corrected, +1)
    assert abs(int(fills_plain.sum()) - int(fills_corrected.sum())) <= 0.05 * fills_plain.sum()
    assert (full[fills_corrected] > 0).mean() >= 0.88
    # without answers the rule is the plain one, cut for cut
    same = calibrate_scores(score, before, 0.9, +1, z=1.28, reviewed_labels=before)
    assert np.array_equal(same.threshold, plain.threshold)
