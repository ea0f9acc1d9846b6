"""``complete``: filling unknown labels with a tiny trained HST model, its confidence rule and its scoring."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from hst.apps.complete import (
    CompletionResult,
    combine_confidence,
    complete,
    complete_module,
    completion_table,
    confidence_path,
)
from hst.config import ConfigError
from hst.data.base import MultiLabelData
from hst.data.partial import make_partial
from hst.data.readers import write_csv_manifest
from hst.data.spec import load_dataset
from hst.data.transforms import build_transform
from hst.engine.module import PartialLabelModule, load_module
from hst.models.cst import inter_scores
from hst.models.ist import intra_scores, intra_scores_leave_one_out
from tiny_run import TINY as _TINY
from tiny_run import tiny_checkpoint

# float sums depend on the thread count, and tiny tensors gain nothing from threads
pytestmark = pytest.mark.usefixtures("one_thread")

DATA = "synthetic:72"
TINY = [*_TINY, f"data.train={DATA}", "trainer.epochs=2"]


@pytest.fixture(scope="module")
def partial_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The published protocol at 30% known labels, written like ``hst make-partial``."""
    data = load_dataset(DATA)
    path = tmp_path_factory.mktemp("partial") / "partial.csv"
    write_csv_manifest(data.with_labels(make_partial(data.labels, "entry", 0.3, 0)), path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, partial_csv: Path) -> Path:
    # The published thresholds (0.5 in the tiny config) make IST and CST vote on 72 images, where calibration
    # finds too few known positives per class to set a threshold.
    overrides = [*TINY, f"data.partial_labels={partial_csv}", "method.name=hst_dtl"]
    return tiny_checkpoint(tmp_path_factory.mktemp("run"), overrides)


@pytest.fixture(scope="module")
def module(checkpoint: Path) -> PartialLabelModule:
    return load_module(checkpoint)[0]


@pytest.fixture(scope="module")
def filled(module: PartialLabelModule, partial_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> CompletionResult:
    out = tmp_path_factory.mktemp("filled") / "filled.csv"
    return complete_module(module, partial_csv, out, data=DATA, min_confidence=0.7)


def read_rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as handle:
        return list(csv.reader(handle))


def test_known_entries_are_unchanged_bit_for_bit(filled: CompletionResult, partial_csv: Path) -> None:
    before, after = read_rows(partial_csv), read_rows(filled.out_csv)
    assert after[0] == before[0] and len(after) == len(before)
    changed = 0
    for old, new in zip(before[1:], after[1:], strict=True):
        assert new[0] == old[0]
        for a, b in zip(old[1:], new[1:], strict=True):
            if a != "0":
                assert b == a  # a known cell is the same text
            elif b != "0":
                changed += 1
                assert b in ("1", "-1")
    assert changed == int(filled.filled.sum()) > 0
    # Only unknown entries move, and the written matrix is what the result reports.
    assert np.all(filled.partial[filled.filled] == 0)
    assert np.array_equal(filled.completed[filled.partial != 0], filled.partial[filled.partial != 0])
    written = np.array([[int(cell) for cell in row[1:]] for row in after[1:]])
    assert np.array_equal(written, filled.completed)
    assert filled.evidence == ["classifier", "IST", "CST"]


def test_confidence_file_lists_exactly_the_filled_entries(filled: CompletionResult) -> None:
    assert filled.confidence_csv == confidence_path(filled.out_csv)
    assert filled.confidence_csv.name == "filled.confidence.csv"
    rows = read_rows(filled.confidence_csv)
    assert rows[0] == ["image", "label", "value", "confidence", "probability", "threshold", "ist", "cst"]
    index = {image: i for i, image in enumerate(filled.images)}
    listed = set()
    for image, label, value, confidence, probability, *_ in rows[1:]:
        i, c = index[image], filled.class_names.index(label)
        listed.add((i, c))
        assert int(value) == filled.completed[i, c] != filled.partial[i, c]
        assert float(confidence) >= 0.7 and float(confidence) == pytest.approx(filled.confidence[i, c], rel=1e-5)
        assert float(probability) == pytest.approx(filled.probabilities[i, c], rel=1e-5)
    assert listed == set(zip(*np.nonzero(filled.filled), strict=True))


def test_min_confidence_leaves_entries_unknown(
    module: PartialLabelModule, partial_csv: Path, filled: CompletionResult, tmp_path: Path
) -> None:
    unknown = filled.partial == 0
    # Confidences lie in [0.5, 1], so 0.5 fills every unknown entry with the classifier's decision.
    everything = complete_module(module, partial_csv, tmp_path / "all.csv", data=DATA, min_confidence=0.5)
    assert np.array_equal(everything.filled, unknown)
    assert np.array_equal(everything.completed[unknown], everything.decisions[unknown])
    # A higher level keeps exactly the entries below it unknown (same decisions and confidences).
    assert np.array_equal(everything.confidence, filled.confidence)
    keep = unknown & (filled.confidence >= 0.7)
    assert 0 < keep.sum() < unknown.sum()
    assert np.array_equal(filled.completed, np.where(keep, everything.completed, filled.partial))
    none = complete_module(module, partial_csv, tmp_path / "none.csv", data=DATA, min_confidence=1.0)
    assert not none.filled.any() and read_rows(none.confidence_csv) == [read_rows(filled.confidence_csv)[0]]
    with pytest.raises(ConfigError, match="min_confidence"):
        complete_module(module, partial_csv, tmp_path / "x.csv", data=DATA, min_confidence=1.5)


def test_evaluation_table_matches_a_hand_count(filled: CompletionResult) -> None:
    truth = load_dataset(DATA).labels
    assert filled.evaluation is not None
    assert [row.min_confidence for row in filled.evaluation] == [0.5, 0.7, 0.9, 0.95, 0.99]
    hidden_pos = hidden_neg = 0
    for i, c in np.ndindex(truth.shape):
        if filled.partial[i, c] == 0:
            hidden_pos += truth[i, c] == 1
            hidden_neg += truth[i, c] == -1
    for row in filled.evaluation:
        counts = {"pos": 0, "pos_right": 0, "neg": 0, "neg_right": 0}
        for i, c in np.ndindex(truth.shape):
            if filled.partial[i, c] != 0 or filled.confidence[i, c] < row.min_confidence:
                continue
            kind = "pos" if filled.decisions[i, c] == 1 else "neg"
            counts[kind] += 1
            counts[kind + "_right"] += int(truth[i, c] == filled.decisions[i, c])
        assert (row.positives, row.negatives) == (counts["pos"], counts["neg"])
        assert row.filled == counts["pos"] + counts["neg"]
        assert row.positive_precision == (counts["pos_right"] / counts["pos"] if counts["pos"] else None)
        assert row.negative_precision == (counts["neg_right"] / counts["neg"] if counts["neg"] else None)
        assert row.positive_recall == pytest.approx(counts["pos_right"] / hidden_pos)
        assert row.negative_recall == pytest.approx(counts["neg_right"] / hidden_neg)
    assert filled.evaluation[1].filled == int(filled.filled.sum())
    assert any("pos P%" in line for line in filled.lines())


def test_completion_table_on_a_hand_built_case() -> None:
    partial = np.array([[1, 0, 0], [0, 0, -1]], dtype=np.int8)
    truth = np.array([[1, 1, -1], [-1, 1, -1]], dtype=np.int8)
    decisions = np.array([[0, 1, 1], [-1, -1, 0]], dtype=np.int8)
    confidence = np.array([[0.0, 0.95, 0.6], [0.8, 0.55, 0.0]])
    at_half, at_seven, at_nine = completion_table(decisions, confidence, partial, truth, [0.5, 0.7, 0.9])
    # At 0.5: positives (0,1) right and (0,2) wrong; negatives (1,0) right and (1,1) wrong.
    assert (at_half.filled, at_half.positives, at_half.negatives) == (4, 2, 2)
    assert (at_half.positive_precision, at_half.positive_recall) == (0.5, 0.5)  # 2 hidden positives
    assert (at_half.negative_precision, at_half.negative_recall) == (0.5, 0.5)  # 2 hidden negatives
    assert (at_seven.positives, at_seven.positive_precision, at_seven.negatives) == (1, 1.0, 1)
    assert (at_seven.negative_precision, at_seven.negative_recall) == (1.0, 0.5)
    assert (at_nine.negatives, at_nine.negative_precision, at_nine.negative_recall) == (0, None, 0.0)


def test_confidence_rule_by_hand() -> None:
    probs = np.array([[0.8, 0.2, 0.8, 0.3, 0.8, 0.8, 0.2, 0.3]])
    taus = np.array([0.5, 0.5, 0.6, 0.6, 0.5, 0.5, 0.5, 0.5])
    decisions, confidence = combine_confidence(probs, taus)
    assert decisions.tolist() == [[1, -1, 1, -1, 1, 1, -1, -1]]
    # τ maps to 0.5: p = 0.8 over τ = 0.6 is 0.5 + 0.5·0.2/0.4 = 0.75; p = 0.3 under it is 0.25 → 0.75.
    np.testing.assert_allclose(confidence[0, :4], [0.8, 0.8, 0.75, 0.75])
    ist = np.array([[False, False, False, False, True, True, True, True]])
    cst = np.array([[False, False, False, False, False, True, False, True]])
    _, voted = combine_confidence(probs, taus, [ist, cst])
    # Agreeing votes halve the doubt (0.2 → 0.1 → 0.05); contradicting ones double it up to 0.5.
    np.testing.assert_allclose(voted[0], [0.8, 0.8, 0.75, 0.75, 0.9, 0.95, 0.6, 0.5])


def test_evidence_scores_are_ist_and_cst_of_the_network(
    module: PartialLabelModule, filled: CompletionResult, partial_csv: Path, tmp_path: Path
) -> None:
    data = load_dataset(DATA)
    backbone = module.network.backbone
    transform = build_transform(module.config.data.image_size, "none", backbone.mean, backbone.std)
    rows = [0, 5, 33]
    images = torch.stack([transform(data.load_image(i)) for i in rows])
    known = torch.from_numpy(filled.partial[rows].astype(np.int64))
    with torch.no_grad():
        semantic = module.network(images).semantic
        # The evidence leaves an entry's own label out (equal to the published mean on unknown entries).
        ist = intra_scores_leave_one_out(module.method.ist_head(semantic), known).numpy()
        published = intra_scores(module.method.ist_head(semantic), known).numpy()
        cst = inter_scores(semantic, module.method.prototypes).numpy()
    assert filled.ist_scores is not None and filled.cst_scores is not None
    np.testing.assert_allclose(filled.ist_scores[rows], ist, atol=1e-5)
    # where the image has a known positive (without one the published score is 0 and this one is NaN)
    unknown = (filled.partial[rows] == 0) & (filled.partial[rows] > 0).any(axis=1, keepdims=True)
    np.testing.assert_allclose(filled.ist_scores[rows][unknown], published[unknown], atol=1e-5)
    np.testing.assert_allclose(filled.cst_scores[rows], cst, atol=1e-5)
    np.testing.assert_allclose(filled.thresholds, module.decision_thresholds)
    # Without evidence the confidence is the classifier's alone.
    plain = complete_module(module, partial_csv, tmp_path / "p.csv", data=DATA, evidence=False, min_confidence=0.7)
    assert plain.evidence == ["classifier"] and plain.ist_scores is None
    _, expected = combine_confidence(plain.probabilities, plain.thresholds)
    unknown = plain.partial == 0
    np.testing.assert_allclose(plain.confidence[unknown], expected[unknown])
    assert not np.array_equal(plain.confidence, filled.confidence)


def test_a_partial_csv_alone_with_its_image_files(checkpoint: Path, tmp_path: Path) -> None:
    data = load_dataset("synthetic:6")
    names = [f"img_{i}.png" for i in range(len(data))]
    for i, name in enumerate(names):
        data.load_image(i).save(tmp_path / name)
    partial = make_partial(data.labels, "entry", 0.5, 1)
    manifest = MultiLabelData(names, partial, data.class_names, image_paths=[tmp_path / n for n in names])
    write_csv_manifest(manifest, tmp_path / "labels.csv")
    result = complete(checkpoint, tmp_path / "labels.csv", tmp_path / "out" / "filled.csv", min_confidence=0.5)
    assert result.evaluation is None and result.images == names
    assert np.array_equal(result.completed != result.partial, result.partial == 0)
    assert [row[0] for row in read_rows(tmp_path / "out" / "filled.csv")[1:]] == names
    assert "against the ground truth" not in "\n".join(result.lines())
