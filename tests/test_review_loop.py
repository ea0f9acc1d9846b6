"""The review loop: each question policy asks what it claims, the simulator learns the hidden labels only through
its annotator, and the round update calibrates on the labels as they were before the review."""

from __future__ import annotations

import numpy as np
import pytest

from hst.apps.review_loop import ReviewLoop
from hst.apps.simulate_review import SimulationData, manifest_quality, simulate
from hst.data.partial import make_partial
from hst.methods.calibration import calibrate_scores
from hst.methods.pseudo_label_round import RoundSettings
from hst.methods.question_policy import POLICIES, ask
from hst.methods.review_update import update_review_model

pytestmark = pytest.mark.usefixtures("one_thread")

SETTINGS = RoundSettings(
    target_precision=0.8, negative_precision=0.8, negatives=True, neighbours=5, folds=3, min_positives=3
)


def _entries(found: np.ndarray) -> list[tuple[int, int]]:
    return [(int(i), int(c)) for i, c in found]


# --- the policies, on a constructed case -------------------------------------------------------------------------

PROBABILITY = np.array(
    [
        [0.50, 0.10, 0.95, 0.30],
        [0.45, 0.60, 0.05, 0.99],
        [0.20, 0.52, 0.48, 0.55],
        [0.90, 0.02, 0.01, 0.03],
    ]
)
LABELS = np.array(
    [
        [0, 1, 0, 1],
        [0, 0, -1, 0],
        [0, 0, 0, 0],
        [0, 1, 0, 1],
    ],
    dtype=np.int8,
)
RNG = np.random.default_rng(0)


def test_uncertain_asks_the_entries_closest_to_one_half() -> None:
    assert _entries(ask("uncertain", PROBABILITY, LABELS, 4, RNG)) == [(0, 0), (2, 1), (2, 2), (1, 0)]


def test_positive_asks_the_most_likely_positives() -> None:
    assert _entries(ask("positive", PROBABILITY, LABELS, 3, RNG)) == [(1, 3), (0, 2), (3, 0)]


def test_rarest_starts_with_the_class_of_fewest_known_positives_and_takes_turns() -> None:
    # known positives: class 0 and 2 none, class 1 and 3 two each; each class gives its most likely positive
    assert _entries(ask("rarest", PROBABILITY, LABELS, 5, RNG)) == [(3, 0), (0, 2), (1, 1), (1, 3), (0, 0)]


def test_image_asks_every_unknown_class_of_the_most_uncertain_image_first() -> None:
    found = _entries(ask("image", PROBABILITY, LABELS, 6, RNG))
    assert found[:4] == [(2, 1), (2, 2), (2, 3), (2, 0)]  # image 2: all four unknown, most uncertain first
    assert found[4:] == [(1, 0), (1, 1)]  # then image 1, cut at k


def test_mix_takes_turns_and_never_repeats() -> None:
    found = _entries(ask("mix", PROBABILITY, LABELS, 6, RNG))
    assert found[:3] == [(0, 0), (1, 3), (3, 0)]  # uncertain's, positive's, rarest's first
    assert len(set(found)) == len(found) == 6


@pytest.mark.parametrize("policy", list(POLICIES))
def test_every_policy_asks_only_open_unknown_entries(policy: str) -> None:
    askable = np.ones(LABELS.shape, dtype=bool)
    askable[2] = False  # e.g. asked already and answered "cannot tell"
    found = ask(policy, PROBABILITY, LABELS, 100, np.random.default_rng(1), askable)
    unknown_open = (LABELS == 0) & askable
    assert len(found) == unknown_open.sum() and len(set(_entries(found))) == len(found)
    assert unknown_open[found[:, 0], found[:, 1]].all()


def test_random_is_seeded() -> None:
    one = ask("random", PROBABILITY, LABELS, 5, np.random.default_rng(3))
    assert (one == ask("random", PROBABILITY, LABELS, 5, np.random.default_rng(3))).all()


# --- the simulator, on synthetic features ------------------------------------------------------------------------


def _synthetic(seed: int = 0, n: int = 160, classes: int = 4, dim: int = 10) -> SimulationData:
    rng = np.random.default_rng(seed)
    weight = rng.normal(size=(dim, classes))

    def draw(count: int) -> tuple[np.ndarray, np.ndarray]:
        x = rng.normal(size=(count, dim)).astype(np.float32)
        logits = x @ weight - 1.0 + 0.5 * rng.normal(size=(count, classes))
        labels = np.where(logits > 0, 1, -1).astype(np.int8)
        labels[rng.random(labels.shape) < 0.03] = 0  # entries nobody can tell (VOC's difficult-only)
        return x, labels

    train, full = draw(n)
    val, val_full = draw(60)
    test, test_labels = draw(80)
    partial = make_partial(full, "entry", 0.3, seed)
    return SimulationData(train, partial, full, val, make_partial(val_full, "entry", 0.3, seed), test, test_labels)


def _asked(policy: str, data: SimulationData, budget: int = 30, round_size: int = 10) -> list[list[tuple[int, int]]]:
    run = simulate(data, SETTINGS, policy, budget, round_size, seed=0)
    answers = [(a.image, a.label) for a in run.loop.answers]
    return [answers[i : i + round_size] for i in range(0, len(answers), round_size)]


def _permuted_hidden(data: SimulationData, keep: np.ndarray, seed: int = 5) -> SimulationData:
    """``data`` with the full labels of the hidden entries, except ``keep``, shuffled among themselves."""
    full = data.full.copy()
    rows, cols = np.nonzero((data.labels == 0) & ~keep)
    shuffled = np.random.default_rng(seed).permutation(len(rows))
    full[rows, cols] = data.full[rows[shuffled], cols[shuffled]]
    assert (full != data.full).any()
    return SimulationData(data.train, data.labels, full, data.val, data.val_labels, data.test, data.test_labels)


@pytest.mark.parametrize("policy", ["uncertain", "random"])
def test_hidden_labels_reach_the_loop_only_through_the_annotator(policy: str) -> None:
    data = _synthetic()
    first = _asked(policy, data)
    answered = np.zeros(data.labels.shape, dtype=bool)
    for round_entries in first:
        for i, c in round_entries:
            answered[i, c] = True
    assert _asked(policy, _permuted_hidden(data, answered)) == first  # the same answers: the same questions
    # Answers that differ may change what is asked next, never what was asked before them.
    other = _permuted_hidden(data, np.zeros_like(answered), seed=7)
    second = _asked(policy, other)
    flat = [entry for round_entries in first for entry in round_entries]
    differs = next(k for k, (i, c) in enumerate(flat) if data.full[i, c] != other.full[i, c])
    same_rounds = differs // 10 + 1
    assert second[:same_rounds] == first[:same_rounds]


def test_simulation_rows_count_answers_and_found_positives() -> None:
    data = _synthetic()
    run = simulate(data, SETTINGS, "positive", 25, 10, seed=0)
    assert [row["answers"] for row in run.rows] == [0, 10, 20, 25]
    values = [a.value for a in run.loop.answers]
    assert run.rows[-1]["positives_found"] == values.count(1)
    assert [a.version for a in run.loop.answers[::10]] == [0, 1, 2]  # the model version that ranked each question
    known = (run.loop.labels != 0) & (data.labels == 0)
    assert (run.loop.labels[known] == data.full[known]).all()


def test_manifest_quality_counts_fills_against_the_full_labels() -> None:
    full = np.array([[1, -1, 1], [-1, 1, 0]], dtype=np.int8)
    labels = np.array([[1, 0, 0], [0, 0, 0]], dtype=np.int8)
    completed = np.array([[1, -1, 1], [1, 0, 1]], dtype=np.int8)
    quality = manifest_quality(completed, labels, full)
    assert quality["filled_positive"] == 3 and quality["filled_positive_precision"] == 0.5  # (1, 2) is unjudged
    assert quality["filled_negative"] == 1 and quality["filled_negative_precision"] == 1.0
    assert quality["completed_correct_positives"] == 2 and quality["completed_positive_recall"] == 2 / 3


# --- the round update ----------------------------------------------------------------------------------------------


def _thresholds(score: np.ndarray, labels: np.ndarray, sign: int, reviewed: np.ndarray | None = None) -> np.ndarray:
    s = SETTINGS
    target = s.target_precision if sign > 0 else s.negative_precision
    wanted, other = (s.min_positives, s.min_negatives) if sign > 0 else (s.min_negatives, s.min_positives)
    return calibrate_scores(score, labels, target, sign, wanted, other, s.z, reviewed).threshold


def test_the_update_calibrates_on_the_labels_before_the_review_only() -> None:
    """Only the pre-review known entries are the calibration sample; the answers are counted out of the entries
    left unknown (the correction of hst.methods.calibration), never taken as a sample of them."""
    data = _synthetic(1)
    loop = ReviewLoop(data.train, data.labels, SETTINGS, "positive", seed=0)
    loop.update()
    entries = loop.questions(40)
    # Answers that are all wrong: calibrating on them would move (or remove) the thresholds.
    loop.answer(entries, -data.full[entries[:, 0], entries[:, 1]])
    model = loop.update()
    score = model.round.evidence.joint
    told_apart = []
    for sign, calibration in ((1, model.round.positive), (-1, model.round.negative)):
        assert calibration is not None
        before = _thresholds(score, data.labels, sign, reviewed=loop.labels)
        assert np.array_equal(calibration.threshold, before)
        told_apart.append(not np.array_equal(before, _thresholds(score, loop.labels, sign)))
    assert any(told_apart)  # the case can tell the two calibrations apart
    # The answers are still learnt: the probe's targets include them.
    again = update_review_model(data.train, loop.labels, loop.labels, SETTINGS)
    assert not np.allclose(
        again.probability, update_review_model(data.train, data.labels, data.labels, SETTINGS).probability
    )


def test_the_update_refuses_calibration_labels_that_disagree() -> None:
    data = _synthetic(2)
    changed = data.labels.copy()
    i, c = np.argwhere(changed != 0)[0]
    changed[i, c] = -changed[i, c]
    with pytest.raises(ValueError, match="differ"):
        update_review_model(data.train, changed, data.labels, SETTINGS)


def test_answers_are_kept_and_learnt_by_the_next_update() -> None:
    data = _synthetic(3)
    loop = ReviewLoop(data.train, data.labels, SETTINGS, "uncertain", seed=0)
    loop.update()
    entries = loop.questions(5)
    loop.answer(entries[:2], np.ones(2))
    snapshot_version = loop.version
    loop.answer(entries[2:], -np.ones(3))
    assert loop.version == snapshot_version and len(loop.answers) == 5
    assert loop.update().version == snapshot_version + 1
    assert (loop.completed()[entries[:, 0], entries[:, 1]] == [1, 1, -1, -1, -1]).all()
    with pytest.raises(ValueError, match="known before"):
        loop.answer(np.argwhere(data.labels != 0)[:1], np.ones(1))


def test_skip_filled_asks_only_what_the_calibrated_fills_leave_unknown() -> None:
    data = _synthetic(4)
    loop = ReviewLoop(data.train, data.labels, SETTINGS, "positive", seed=0, skip_filled=True)
    model = loop.update()
    filled = model.round.targets != 0
    assert filled.any()
    entries = loop.questions(30)
    assert len(entries) == 30 and not filled[entries[:, 0], entries[:, 1]].any()
