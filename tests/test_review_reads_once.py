"""Opening ``hst review`` with its loop reads the images once when the page's pass already gives the loop's
features (the label-free backbone's pooled features), and twice only when it cannot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import hst.apps.inference as inference
from _helpers_review import P
from hst.apps.complete_at_precision import is_its_own_label_free_module
from hst.engine.trained_model import TrainedModel
from hst.review.loop import features_path, loop_features, read_features
from hst.review.suggest import open_review

pytestmark = pytest.mark.usefixtures("one_thread")

ROUND = 3


@pytest.fixture
def passes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One entry per backbone pass over a dataset (each :func:`hst.apps.inference.run_network`)."""
    counted: list[int] = []
    original = inference.frozen_features

    def counting(*args: Any, **kwargs: Any) -> Any:
        counted.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(inference, "frozen_features", counting)
    return counted


@pytest.fixture(scope="module")
def frozen_checkpoint(tmp_path_factory: pytest.TempPathFactory, review_manifests: tuple[Path, Path]) -> Path:
    """The review tests' tiny model with its backbone frozen: its own features are the label-free ones."""
    from tiny_run import tiny_checkpoint

    labels, partial = review_manifests
    return tiny_checkpoint(
        tmp_path_factory.mktemp("frozen"),
        [f"data.train=csv:{labels}", f"data.partial_labels={partial}", "model.trainable=none"],
    )


def _loop_features_afresh(checkpoint: Path, session: Any, tmp_path: Path) -> tuple[np.ndarray, np.ndarray]:
    rows, pooled, _ = loop_features(
        TrainedModel.from_checkpoint(checkpoint), session.data, tmp_path / "afresh" / "x.csv", checkpoint
    )
    return rows, pooled


def _assert_the_loop_kept_what_a_pass_of_its_own_gives(checkpoint: Path, session: Any, tmp_path: Path) -> None:
    (tmp_path / "afresh").mkdir()
    kept = read_features(features_path(session.out_csv), session.live.key)
    assert kept is not None
    rows, pooled = _loop_features_afresh(checkpoint, session, tmp_path)
    assert np.array_equal(kept[0], rows)
    np.testing.assert_allclose(kept[1], pooled, rtol=1e-5, atol=1e-6)
    assert pooled.std() > 0


def test_a_precision_review_reads_the_images_once(
    review_checkpoint: Path, review_manifests: tuple[Path, Path], tmp_path: Path, passes: list[int]
) -> None:
    session = open_review(
        review_checkpoint, review_manifests[1], tmp_path / "out" / "reviewed.csv", precision=P, round_size=ROUND
    )
    assert session.live is not None
    assert len(passes) == 1  # the rule's pass gave the loop its features
    _assert_the_loop_kept_what_a_pass_of_its_own_gives(review_checkpoint, session, tmp_path)


def test_a_frozen_backbone_review_reads_the_images_once(
    frozen_checkpoint: Path, review_manifests: tuple[Path, Path], tmp_path: Path, passes: list[int]
) -> None:
    assert is_its_own_label_free_module(TrainedModel.from_checkpoint(frozen_checkpoint))
    session = open_review(frozen_checkpoint, review_manifests[1], tmp_path / "out" / "reviewed.csv", round_size=ROUND)
    assert len(passes) == 1
    _assert_the_loop_kept_what_a_pass_of_its_own_gives(frozen_checkpoint, session, tmp_path)


def test_a_trained_backbone_review_reads_the_images_again_for_the_loop(
    review_checkpoint: Path, review_manifests: tuple[Path, Path], tmp_path: Path, passes: list[int]
) -> None:
    # The page's suggestions come from the trained backbone; the loop learns from the pretrained one.
    assert not is_its_own_label_free_module(TrainedModel.from_checkpoint(review_checkpoint))
    session = open_review(review_checkpoint, review_manifests[1], tmp_path / "out" / "reviewed.csv", round_size=ROUND)
    assert len(passes) == 2
    _assert_the_loop_kept_what_a_pass_of_its_own_gives(review_checkpoint, session, tmp_path)
