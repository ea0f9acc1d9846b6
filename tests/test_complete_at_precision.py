"""``hst complete --precision P``: the cross-fitted rule fills unknown labels at the precision it promises, refuses
classes it cannot calibrate, and never changes a known label."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from hst.apps.complete_at_precision import PrecisionCompletion, classes_path, complete_at_precision
from hst.cli import main
from hst.data.base import DataError
from hst.data.partial import make_partial
from hst.data.readers import write_csv_manifest
from hst.data.spec import load_dataset
from hst.engine.module import PartialLabelModule, load_module
from tiny_run import TINY, tiny_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

DATA = "synthetic:400"


def _manifest(folder: Path, name: str, labels: np.ndarray) -> Path:
    path = folder / name
    write_csv_manifest(load_dataset(DATA).with_labels(labels), path)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("precision")


@pytest.fixture(scope="module")
def partial_csv(folder: Path) -> Path:
    return _manifest(folder, "partial.csv", make_partial(load_dataset(DATA).labels, "entry", 0.3, 0))


@pytest.fixture(scope="module")
def module(folder: Path) -> PartialLabelModule:
    overrides = [
        *TINY,
        "data.train=synthetic:72",
        "trainer.epochs=1",
        "model.weights=offline",
        f"data.cache_dir={folder / 'cache'}",
    ]
    checkpoint = tiny_checkpoint(folder / "run", overrides)
    return load_module(checkpoint)[0]


@pytest.fixture(scope="module")
def filled(module: PartialLabelModule, partial_csv: Path, folder: Path) -> PrecisionCompletion:
    # The default job's image size: at the tiny run's 64 px, too few classes separate to calibrate positives.
    out = folder / "out" / "filled.csv"
    return complete_at_precision(module, partial_csv, out, 0.9, data=DATA, image_size=160, cache_dir=folder / "cache")


def _rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as handle:
        return list(csv.reader(handle))


def test_fills_keep_their_precision_and_known_labels(filled: PrecisionCompletion) -> None:
    known = filled.partial != 0
    assert np.array_equal(filled.completed[known], filled.partial[known])
    for sign in (1, -1):
        found = filled.evaluation(sign)
        assert found["count"] >= 20
        assert found["high"] >= 0.9  # not significantly below the promise
    truth = load_dataset(DATA).labels
    positives = filled.filled & (filled.completed > 0)
    base_rate = float((truth[filled.partial == 0] > 0).mean())
    assert (truth[positives] > 0).mean() > base_rate + 0.4


def test_side_files_list_every_fill_and_every_class(filled: PrecisionCompletion) -> None:
    entries = _rows(Path(str(filled.out_csv).replace(".csv", ".confidence.csv")))
    assert entries[0] == ["image", "label", "value", "score", "threshold"]
    assert len(entries) - 1 == int(filled.filled.sum())
    for _, _, value, score, threshold in entries[1:]:
        assert (float(score) >= float(threshold)) if value == "1" else (float(score) <= float(threshold))
    classes = _rows(classes_path(filled.out_csv))
    assert len(classes) - 1 == 2 * len(filled.class_names)
    for _, _, threshold, above, precision, count, reason in classes[1:]:
        assert (threshold == "") == bool(reason)  # a class without a threshold says why
        if threshold:
            assert float(precision) >= 0.75 and int(above) >= 5
        else:
            assert count == "0"


def test_positives_only_labels_are_refused_with_a_reason(module: PartialLabelModule, folder: Path) -> None:
    labels = make_partial(load_dataset(DATA).labels, "single-positive", 1.0, 0)
    path = _manifest(folder, "single.csv", labels)
    result = complete_at_precision(module, path, folder / "single-out.csv", 0.9, data=DATA, cache_dir=folder / "cache")
    assert not result.filled.any()
    assert any("other label" in line for line in result.lines())


def test_calibrate_on_must_hold_the_same_known_labels(
    module: PartialLabelModule, partial_csv: Path, folder: Path
) -> None:
    partial = load_dataset(f"csv:{partial_csv}").labels.copy()
    changed = partial.copy()
    row, col = np.argwhere(changed != 0)[0]
    changed[row, col] = -changed[row, col]
    other = _manifest(folder, "changed.csv", changed)
    with pytest.raises(DataError, match="known labels differ"):
        complete_at_precision(module, partial_csv, folder / "x.csv", 0.9, calibrate_on=other)


def test_command_line(module: PartialLabelModule, partial_csv: Path, folder: Path, capsys) -> None:
    checkpoint = next((folder / "run").rglob("last.ckpt"))
    out = folder / "cli" / "filled.csv"
    given = ["complete", str(checkpoint), str(partial_csv), "--out", str(out), "--data", DATA]
    code = main([*given, "--precision", "0.95", "--positives-only"])
    assert code == 0 and out.is_file() and classes_path(out).is_file()
    printed = capsys.readouterr().out
    assert "positive labels at precision 0.95" in printed and "negative labels" not in printed
    assert "against the ground truth, positive" in printed
    assert main([*given, "--precision", "1.5"]) == 2


def test_cached_features_match_the_network(module: PartialLabelModule, partial_csv: Path, folder: Path) -> None:
    """The fast path (pooled features from the frozen-backbone cache) against the plain one (the network)."""
    from hst.apps.complete import load_partial
    from hst.apps.complete_at_precision import _cached_pooled, label_free_module
    from hst.apps.inference import run_network

    images, _, _ = load_partial(partial_csv, DATA)
    images = images.subset(np.arange(40))
    label_free, _ = label_free_module(module)
    rows, cached, _ = _cached_pooled(label_free, images, 96, 16, False, folder / "cache")
    _, plain, _ = run_network(label_free, images, lambda out, _rows: {"pooled": out.pooled}, 16, "error", 96)
    assert rows == list(range(40))
    np.testing.assert_allclose(cached, plain["pooled"], atol=2e-2, rtol=1e-2)
