"""``hst simulate-review``: the review loop with a simulated annotator, to measure what an answer is worth.

The annotator answers from the full labels; the loop (:class:`hst.apps.review_loop.ReviewLoop`, the one the review
page runs) never sees them otherwise. Starting from a config's partial labels, each round asks ``round_size``
questions with a policy, takes the answers, updates the model, until the budget (a fraction of all training
entries) is spent. Per round it records the answers so far, the positives found, the test mAP of the current
model, the validation mAP on the validation split's own partial labels (what a user could choose a policy by), and
the quality of the completed manifest (known + answers + calibrated fills) against the full labels.

With ``curve`` proportions it also fits the same model at those random known proportions (the exchange rate: what
random known entries are worth). Writes, per policy and seed, ``OUT/POLICY-sSEED/rounds.csv`` / ``rounds.json`` /
``answers.csv`` after every round and ``labels.csv`` / ``before.csv`` at the end (manifests to train on), and
``OUT/summary.csv`` (last round of each run) and ``OUT/curve.csv``.
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hst.apps.review_features import PooledSplits, pooled_splits
from hst.apps.review_loop import ReviewLoop
from hst.config import ConfigError
from hst.io import write_text_atomic
from hst.labels import NEGATIVE, POSITIVE, UNKNOWN
from hst.methods.pseudo_label_round import RoundSettings, completion_settings
from hst.methods.question_policy import POLICIES
from hst.methods.review_update import ReviewModel, update_review_model
from hst.metrics import mean_average_precision

ROUND_COLUMNS = (
    "round",
    "version",
    "answers",
    "positives_found",
    "unanswerable",
    "test_mAP",
    "val_mAP",
    "completed_correct_positives",
    "completed_positive_recall",
    "filled_positive",
    "filled_positive_precision",
    "filled_negative",
    "filled_negative_precision",
    "filled_precision",
    "update_seconds",
    "ask_seconds",
)


class SimulatedAnnotator:
    """Answers questions from the full labels: +1, −1, or 0 where the full labels do not know either."""

    def __init__(self, full: np.ndarray) -> None:
        self._full = np.asarray(full)
        self.asked = 0

    def answer(self, entries: np.ndarray) -> np.ndarray:
        self.asked += len(entries)
        return self._full[entries[:, 0], entries[:, 1]].astype(np.int64)


def _precision(correct: int, count: int) -> float:
    return correct / count if count else float("nan")


def manifest_quality(completed: np.ndarray, labels: np.ndarray, full: np.ndarray) -> dict[str, float]:
    """The completed manifest against the full labels: its correct positives and their recall, and the count and
    precision of the filled entries (unknown in ``labels``, known in ``completed``) of each polarity."""
    filled = (labels == UNKNOWN) & (completed != UNKNOWN)
    judged = full != UNKNOWN
    found = {}
    for name, sign in (("positive", POSITIVE), ("negative", NEGATIVE)):
        chosen = filled & (completed == sign)
        found[f"filled_{name}"] = int(chosen.sum())
        found[f"filled_{name}_precision"] = _precision(
            int((chosen & (full == sign)).sum()), int((chosen & judged).sum())
        )
    correct_positives = int(((completed == POSITIVE) & (full == POSITIVE)).sum())
    found["filled_precision"] = _precision(int((filled & (completed == full)).sum()), int((filled & judged).sum()))
    found["completed_correct_positives"] = correct_positives
    found["completed_positive_recall"] = _precision(correct_positives, int((full == POSITIVE).sum()))
    return found


def _map(scores: np.ndarray, labels: np.ndarray) -> float:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # classes without a known positive: mAP leaves them out
            return mean_average_precision(scores, labels)
    except ValueError:
        return float("nan")  # no class with a known positive: mAP is undefined


@dataclass
class SimulationData:
    """What a simulation reads: pooled features and labels of the training, validation and test images."""

    train: np.ndarray
    labels: np.ndarray
    """The training images' partial labels (what the loop starts from)."""
    full: np.ndarray
    """... their full labels (only the annotator and the scoring read them)."""
    val: np.ndarray
    val_labels: np.ndarray
    test: np.ndarray
    test_labels: np.ndarray

    @classmethod
    def of(cls, data: PooledSplits) -> SimulationData:
        s = data.splits
        return cls(data.train, s.train.labels, s.train_full, data.val, s.val.labels, data.test, s.test.labels)


@dataclass
class Simulation:
    """One run: its rows (one per round) and the loop at the end."""

    rows: list[dict[str, float]]
    loop: ReviewLoop


def simulate(
    data: SimulationData,
    settings: RoundSettings,
    policy: str,
    budget: int,
    round_size: int,
    seed: int = 0,
    first: ReviewModel | None = None,
    on_round: Callable[[Simulation], None] | None = None,
    skip_filled: bool = False,
) -> Simulation:
    """Run the loop on ``data``'s training images until ``budget`` questions are answered, ``round_size`` a round.

    ``first``: the model of the labels before any answer, when already computed (the same for every policy)."""
    annotator = SimulatedAnnotator(data.full)
    loop = ReviewLoop(data.train, data.labels, settings, policy, seed, first, skip_filled)
    simulation = Simulation([], loop)
    model = loop.model or loop.update()
    ask_seconds = 0.0
    round_index = 0
    while True:
        row: dict[str, float] = {
            "round": round_index,
            "version": model.version,
            "answers": len(loop.answers),
            "positives_found": sum(a.value == POSITIVE for a in loop.answers),
            "unanswerable": sum(a.value == UNKNOWN for a in loop.answers),
            "test_mAP": _map(model.scores(data.test), data.test_labels),
            "val_mAP": _map(model.scores(data.val), data.val_labels),
            **manifest_quality(loop.completed(), loop.labels, data.full),
            "update_seconds": model.seconds,
            "ask_seconds": ask_seconds,
        }
        simulation.rows.append(row)
        if on_round is not None:
            on_round(simulation)
        left = budget - len(loop.answers)
        if left <= 0:
            break
        start = time.perf_counter()
        entries = loop.questions(min(round_size, left))
        ask_seconds = time.perf_counter() - start
        if len(entries) == 0:
            break
        loop.answer(entries, annotator.answer(entries))
        model = loop.update()
        round_index += 1
    return simulation


def _csv(rows: list[dict[str, Any]], columns: tuple[str, ...] | list[str]) -> str:
    def cell(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    return "\n".join([",".join(columns), *(",".join(cell(row[c]) for c in columns) for row in rows)]) + "\n"


def write_manifests(folder: Path, data: PooledSplits, labels: np.ndarray) -> None:
    """``labels.csv`` (the partial labels with the training images' current labels) and ``before.csv`` (as before the
    review) over the whole training source, for ``hst train data.partial_labels=labels.csv
    data.calibration_labels=before.csv`` (test rows: unknown; the test split reads the full labels)."""
    from hst.data.readers import write_csv_manifest

    s = data.splits
    assert s.source is not None and s.train_rows is not None and s.val_rows is not None
    for name, train_labels in (("labels.csv", labels), ("before.csv", s.train.labels)):
        matrix = np.zeros(s.source.labels.shape, dtype=np.int8)
        matrix[s.train_rows], matrix[s.val_rows] = train_labels, s.val.labels
        write_csv_manifest(s.source.with_labels(matrix), folder / name)


def _writer(folder: Path, meta: dict[str, Any], data: PooledSplits) -> Callable[[Simulation], None]:
    """Writes a run's files after each round (each file atomically), so a stopped run keeps its rounds."""
    folder.mkdir(parents=True, exist_ok=True)
    ids, names = data.splits.train.image_ids, data.splits.train.class_names

    def write(simulation: Simulation) -> None:
        write_text_atomic(folder / "rounds.csv", _csv(simulation.rows, ROUND_COLUMNS))
        write_text_atomic(folder / "rounds.json", json.dumps({**meta, "rounds": simulation.rows}, indent=1))
        answers = [
            {"image": ids[a.image], "label": names[a.label], "value": a.value, "version": a.version}
            for a in simulation.loop.answers
        ]
        write_text_atomic(folder / "answers.csv", _csv(answers, ["image", "label", "value", "version"]))

    return write


@dataclass
class SimulateReviewOptions:
    policies: list[str]
    seeds: list[int]
    budget: float = 0.02
    """Questions, as a fraction of all training entries (images × classes)."""
    round_size: int = 130
    precision: float = 0.9
    curve: list[float] = dataclasses.field(default_factory=list)
    """Random known proportions to fit the same model at (the exchange rate); none by default."""
    skip_filled: bool = False
    """Ask only what the calibrated fills leave unknown."""
    threads: int = 1
    """Torch threads: the probe's tensors are small, and on a shared 2-core CPU one thread fits it 4× faster."""

    def check(self) -> None:
        unknown = [p for p in self.policies if p not in POLICIES]
        if unknown:
            raise ConfigError(f"unknown question policies {unknown}; expected some of {', '.join(POLICIES)}")
        if not 0.0 <= self.budget <= 1.0 or self.round_size < 1:
            raise ConfigError("--budget must be in [0, 1] and --round-size at least 1")
        if not 0.5 <= self.precision < 1.0:
            raise ConfigError(f"--precision must be in [0.5, 1), got {self.precision}")


def _seeded(config: Any, seed: int, proportion: float | None = None) -> Any:
    data = dataclasses.replace(config.data, partial_seed=seed)
    if proportion is not None:
        data = dataclasses.replace(data, proportion=proportion)
    return dataclasses.replace(config, data=data)


def simulate_review(config: Any, options: SimulateReviewOptions, out: Path, progress: bool = False) -> list[str]:
    """Every policy × seed of ``options`` on ``config`` (a TrainConfig with a frozen backbone), then the curve;
    returns the lines to print."""
    options.check()
    if config.model.trainable != "none":
        raise ConfigError("hst simulate-review learns from the frozen backbone's features: set model.trainable=none")
    import torch

    torch.set_num_threads(options.threads)
    out = Path(out)
    settings = completion_settings(config.method, options.precision)
    lines: list[str] = []
    summary: list[dict[str, Any]] = []
    source: np.ndarray | None = None
    for seed in options.seeds:
        data = pooled_splits(_seeded(config, seed), progress, source)
        source = data.source
        train = data.splits.train
        budget = round(options.budget * train.labels.size)
        first = update_review_model(data.train, train.labels, train.labels, settings)
        for policy in options.policies:
            name = f"{policy}+unfilled" if options.skip_filled else policy
            # entries and the starting proportion place the random-proportion curve in ``hst report``
            start = None if config.data.partial_labels else config.data.proportion
            meta = {"policy": name, "seed": seed, "budget": budget, **dataclasses.asdict(options)}
            meta |= {"entries": int(train.labels.size), "proportion": start}
            writer = _writer(out / f"{name}-s{seed}", meta, data)
            run = simulate(
                SimulationData.of(data),
                settings,
                policy,
                budget,
                options.round_size,
                seed,
                first,
                writer,
                options.skip_filled,
            )
            write_manifests(out / f"{name}-s{seed}", data, run.loop.labels)
            last = run.rows[-1]
            summary.append({"policy": name, "seed": seed, **last, "start_test_mAP": run.rows[0]["test_mAP"]})
            lines.append(
                f"{name} seed {seed}: {last['answers']} answers ({last['positives_found']} positive), test mAP "
                f"{run.rows[0]['test_mAP']:.2f} -> {last['test_mAP']:.2f}, filled precision "
                f"{100 * last['filled_precision']:.1f}%, correct positives {last['completed_correct_positives']}"
            )
            write_text_atomic(out / "summary.csv", _csv(summary, ["policy", "seed", "start_test_mAP", *ROUND_COLUMNS]))
    curve: list[dict[str, Any]] = []
    for proportion in options.curve:
        for seed in options.seeds:
            data = pooled_splits(_seeded(config, seed, proportion), progress, source)
            source = data.source
            labels = data.splits.train.labels
            # budget 0: the loop's first row, the model of these labels alone
            first_row = simulate(SimulationData.of(data), settings, "random", 0, 1, seed).rows[0]
            row = {"proportion": proportion, "seed": seed, "known": float((labels != UNKNOWN).mean()), **first_row}
            curve.append(row)
            lines.append(f"random {100 * proportion:g}% known, seed {seed}: test mAP {row['test_mAP']:.2f}")
            write_text_atomic(out / "curve.csv", _csv(curve, list(curve[0])))
    lines.append(f"wrote {out}")
    return lines
