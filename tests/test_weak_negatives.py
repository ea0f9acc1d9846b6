"""Weak negatives withheld (classes without a known negative): which entries, how many, and that HST's loss leaves
them out while nothing changes where every class has a known negative."""

from __future__ import annotations

import numpy as np
import torch

from hst.config import MethodConfig
from hst.methods import create
from hst.methods.base import StepContext
from hst.methods.weak_negatives import withheld_counts, withheld_weak_negatives
from hst.models.network import NetworkOutput
from test_calibration import _clustered


def _single_positive(seed: int, num: int, classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``_clustered``'s separable clusters with positives only, each positive known with probability 2/3: pooled
    features, labels and full labels."""
    full, labels, _, _, source = _clustered(seed, num, classes, 2 / 3, positives_only=True)
    pooled = torch.cat([batch.pooled for batch in source() if batch.pooled is not None])
    return pooled.numpy(), labels.numpy(), full.numpy()


def test_withheld_are_the_unknown_entries_most_like_a_positive() -> None:
    pooled, labels, full = _single_positive(0, 600, 4)
    weak = np.ones(4, dtype=bool)
    withheld = withheld_weak_negatives(pooled, labels, weak, 0.5, neighbours=10)
    assert not (withheld & (labels != 0)).any()
    np.testing.assert_array_equal(withheld.sum(0), np.round(0.5 * (labels > 0).sum(0)))
    hidden = (labels == 0) & (full > 0)
    # Known answer: the clusters separate the hidden positives, so nearly as many are withheld as can be (the fewer
    # of the withheld and the hidden); a random choice among the unknown entries would hit one in about 7.
    assert (withheld & hidden).sum() >= 0.85 * min(withheld.sum(), hidden.sum())
    assert hidden.sum() / (labels == 0).sum() < 0.15


def test_only_classes_without_a_known_negative_withhold_and_share_zero_withholds_nothing() -> None:
    pooled, labels, _ = _single_positive(1, 300, 3)
    labels[0, 1] = -1
    weak = ~(labels < 0).any(0)
    withheld = withheld_weak_negatives(pooled, labels, weak, 1.0, neighbours=10)
    assert not withheld[:, 1].any() and withheld[:, 0].sum() == (labels[:, 0] > 0).sum()
    assert not withheld_weak_negatives(pooled, labels, weak, 0.0).any()
    few = np.array([[1], [0], [1], [1]], dtype=np.int8)
    np.testing.assert_array_equal(withheld_counts(few, 1.0), [1])  # never more than the unknown entries


def test_hst_leaves_withheld_weak_negatives_out_of_its_loss() -> None:
    num, classes = 300, 4
    full, labels, semantic, _, source = _clustered(1, num, classes, 0.3, positives_only=True)
    config = MethodConfig(pseudo_label_epoch=1, use_ist=False, use_cst=False, weak_negative_withhold=1.0)
    method = create("hst", config, classes, 6, num)
    logs = method.on_train_epoch_start(0, source)
    withheld = method.withheld
    assert withheld is not None and not withheld[labels != 0].any()
    assert logs["withheld_count"] == int(withheld.sum()) == int((labels > 0).sum())
    base_rate = float(((labels == 0) & (full > 0)).sum() / (labels == 0).sum())
    assert logs["withheld_precision"] > 2 * base_rate
    for epoch in (0, 1):  # before and after the pseudo-label epoch
        rows = torch.arange(64)
        zeros = torch.zeros(64, classes, requires_grad=True)
        context = StepContext(epoch, 1, 2, rows)
        method.training_loss(NetworkOutput(zeros, semantic[rows]), labels[rows], context).loss.backward()
        grad, held = zeros.grad, withheld[rows]
        assert held.any() and torch.all(grad[held] == 0)
        assert torch.all(grad[(labels[rows] == 0) & ~held] > 0)  # the other unknown entries stay negatives
    clone = create("hst", config, classes, 6, num)
    clone.load_extra_state(method.extra_state())
    assert clone.withheld is not None and torch.equal(clone.withheld, withheld)
    # The bias starts from the rate the loss trains towards, the withheld entries left out.
    positives, unknown = (labels > 0).sum(0).numpy(), (labels == 0).sum(0).numpy()
    expected = (positives + 0.5) / (positives + (unknown - positives) + 1.0)
    np.testing.assert_allclose(method.class_prior(labels.numpy()), expected)


def test_withholding_changes_nothing_when_every_class_has_a_known_negative() -> None:
    num, classes = 400, 4
    full, labels, semantic, logits, source = _clustered(0, num, classes, 0.3)
    losses, tables = [], []
    for share in (0.0, 1.0):
        config = MethodConfig(pseudo_label_epoch=1, use_ist=False, use_cst=False, weak_negative_withhold=share)
        method = create("hst", config, classes, 6, num)
        logs = method.on_train_epoch_start(0, source)
        assert "withheld_count" not in logs and method.withheld is None
        rows = torch.arange(32)
        output = NetworkOutput(logits[rows], semantic[rows])
        losses.append(method.training_loss(output, labels[rows], StepContext(1, 1, 2, rows, full[rows])).loss)
        tables.append(method.pseudo_targets)
    assert torch.equal(losses[0], losses[1]) and torch.equal(tables[0], tables[1])
