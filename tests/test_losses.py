"""Losses and pseudo labels against the published formulations."""

from __future__ import annotations

import pytest
import torch

import reference_hst as ref
from hst.losses import (
    instance_contrastive_loss,
    intra_cooccurrence_loss,
    partial_bce,
    prototype_loss,
    threshold_loss,
    threshold_pseudo_labels,
)
from hst.models.cst import Prototypes


def _labels(batch: int, num: int, seed: int, probs: tuple[float, float, float] = (0.4, 0.3, 0.3)) -> torch.Tensor:
    """Random int8 labels with P(−1), P(0), P(+1) = probs."""
    gen = torch.Generator().manual_seed(seed)
    index = torch.multinomial(torch.tensor(probs), batch * num, replacement=True, generator=gen)
    return (index - 1).to(torch.int8).view(batch, num)


def _assert_value_and_grad(fast: torch.Tensor, slow: torch.Tensor, inputs: list[torch.Tensor]) -> None:
    ref.assert_close_rel(fast, slow)
    ref.assert_grads_close(torch.autograd.grad(fast, inputs), torch.autograd.grad(slow, inputs))


def test_partial_bce_matches_reference() -> None:
    torch.manual_seed(0)
    logits = (3 * torch.randn(6, 7)).requires_grad_()
    labels = _labels(6, 7, seed=1)
    _assert_value_and_grad(partial_bce(logits, labels), ref.partial_bce(logits.double(), labels), [logits])
    float_labels = labels.float()
    torch.testing.assert_close(partial_bce(logits, float_labels), partial_bce(logits, labels))


def test_losses_are_zero_and_nan_free_without_known_labels() -> None:
    torch.manual_seed(1)
    logits = torch.randn(3, 4, requires_grad=True)
    semantic = torch.randn(3, 4, 5, requires_grad=True)
    pairs = torch.randn(3, 6, requires_grad=True)
    unknown = torch.zeros(3, 4, dtype=torch.int8)
    protos = Prototypes(torch.randn(4, 2, 5), torch.ones(4, 2, dtype=torch.bool))
    losses = [
        partial_bce(logits, unknown),
        threshold_loss(logits, unknown),
        instance_contrastive_loss(semantic, unknown),
        prototype_loss(semantic, unknown, protos),
        intra_cooccurrence_loss(pairs, unknown, ignore_unknown_pairs=True),
    ]
    for loss in losses:
        assert loss.item() == 0.0
    grads = torch.autograd.grad(sum(losses), [logits, semantic, pairs])
    assert all(torch.isfinite(g).all() and g.abs().max() == 0 for g in grads)
    # an image whose labels are all unknown adds nothing to the partial BCE of the others
    labels = _labels(3, 4, seed=2)
    labels[1] = 0
    keep = torch.tensor([0, 2])
    torch.testing.assert_close(partial_bce(logits, labels), partial_bce(logits[keep], labels[keep]))


def test_threshold_pseudo_labels_never_change_known_labels() -> None:
    torch.manual_seed(2)
    for seed in range(5):
        labels = _labels(8, 9, seed=seed)
        scores = torch.rand(8, 9) * 1.5 - 0.25
        for theta in (0.0, 0.3, 0.9):
            hard, q = threshold_pseudo_labels(labels, scores, theta)
            assert hard.dtype == labels.dtype
            known = labels != 0
            assert torch.equal(hard[known], labels[known])
            assert set(hard[~known].tolist()) <= {0, 1}
            assert torch.equal(hard[~known] == 1, scores[~known] > theta)
            torch.testing.assert_close(q, (scores - theta).clamp(0, 1))


def test_threshold_gradients_flow_inside_the_clamp_window() -> None:
    scores = torch.tensor([[0.2, 0.6, 0.95, 1.9]], requires_grad=True)
    theta = torch.tensor(0.5, requires_grad=True)
    labels = torch.tensor([[1, -1, 0, 1]], dtype=torch.int8)
    _, q = threshold_pseudo_labels(labels, scores, theta)
    g_scores, g_theta = torch.autograd.grad(q.sum(), [scores, theta])
    assert g_scores.tolist() == [[0.0, 1.0, 1.0, 0.0]] and g_theta.item() == -2.0
    loss = threshold_loss(q, labels)
    expected = ref.partial_bce(q.detach().double(), labels)
    ref.assert_close_rel(loss, expected)
    # only the known negative (0.6) sits inside the window: descent raises θ
    _, q = threshold_pseudo_labels(labels, scores, theta)
    (g_theta,) = torch.autograd.grad(threshold_loss(q, labels), [theta])
    assert g_theta.item() == pytest.approx(-torch.sigmoid(torch.tensor(0.1)).item() / 3, rel=1e-5)


@pytest.mark.parametrize("ignore_unknown_pairs", [False, True])
def test_intra_cooccurrence_loss_matches_reference(ignore_unknown_pairs: bool) -> None:
    torch.manual_seed(3)
    num = 7
    pairs = (2 * torch.randn(5, num * (num - 1) // 2)).requires_grad_()
    labels = _labels(5, num, seed=4, probs=(0.3, 0.3, 0.4))
    fast = intra_cooccurrence_loss(pairs, labels, ignore_unknown_pairs=ignore_unknown_pairs)
    slow = ref.intra_asymmetric(pairs.double(), labels, ignore_unknown_pairs=ignore_unknown_pairs)
    _assert_value_and_grad(fast, slow, [pairs])


def test_intra_cooccurrence_unknown_pairs_switch_changes_the_loss() -> None:
    pairs = torch.zeros(1, 3)
    labels = torch.tensor([[1, 0, 1]])
    published = intra_cooccurrence_loss(pairs, labels)
    ignored = intra_cooccurrence_loss(pairs, labels, ignore_unknown_pairs=True)
    # only the (0, 2) pair is known and it is positive: −(1 − ½)·log ½
    assert ignored.item() == pytest.approx(0.5 * torch.log(torch.tensor(2.0)).item(), rel=1e-6)
    assert published.item() != pytest.approx(ignored.item())


def _pair_counts(labels: torch.Tensor) -> tuple[int, int, int]:
    """(pos–pos, pos–neg, neg–neg) term counts of the batch, all classes pooled."""
    first, second = torch.triu_indices(len(labels), len(labels), 1)
    la, lb = labels[first], labels[second]
    return int(((la == 1) & (lb == 1)).sum()), int((la * lb == -1).sum()), int(((la == -1) & (lb == -1)).sum())


@pytest.mark.parametrize(
    ("probs", "sampled"),
    [((0.5, 0.2, 0.3), True), ((0.6, 0.4, 0.0), False), ((0.1, 0.2, 0.7), False)],
)
def test_instance_contrastive_loss_matches_reference(probs: tuple[float, float, float], sampled: bool) -> None:
    torch.manual_seed(5)
    semantic = torch.randn(8, 5, 6, requires_grad=True)
    labels = _labels(8, 5, seed=6, probs=probs)
    n_pp, n_pn, n_nn = _pair_counts(labels)
    # case 1 subsamples, case 2 has no pos–pos (all terms), case 3 keeps every term plus the hardest again
    assert sampled == (n_pp > 0 and max(n_pn, n_nn) > 2 * n_pp)
    assert (n_pp == 0) == (probs[2] == 0.0)
    fast = instance_contrastive_loss(semantic, labels, generator=torch.Generator().manual_seed(42))
    slow = ref.instance_contrastive(semantic.double(), labels, generator=torch.Generator().manual_seed(42))
    _assert_value_and_grad(fast, slow, [semantic])
    other = instance_contrastive_loss(semantic, labels, generator=torch.Generator().manual_seed(43))
    assert (other.item() != pytest.approx(fast.item(), rel=1e-6)) == sampled


def test_instance_contrastive_loss_terms() -> None:
    # one class, three images: pos, pos, neg. n_pp = 1 keeps all terms (2 random ≥ 2 available, +1 hardest)
    semantic = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[1.0, 0.0]]])
    labels = torch.tensor([[1], [1], [-1]])
    loss = instance_contrastive_loss(semantic, labels, generator=torch.Generator().manual_seed(0))
    # pos–pos (0,1): 1 − 0; pos–neg (0,2): 1 + 1, (1,2): 1 + 0; hardest pos–neg again: 2
    assert loss.item() == pytest.approx((1 + 2 + 1 + 2) / 4)


@pytest.mark.parametrize("published_sign", [False, True])
def test_prototype_loss_matches_reference(published_sign: bool) -> None:
    torch.manual_seed(7)
    valid = torch.tensor([[True, True, True], [True, False, False], [False, False, False], [True, True, False]])
    protos = Prototypes(torch.randn(4, 3, 6) * valid.unsqueeze(2), valid)
    semantic = torch.randn(5, 4, 6, requires_grad=True)
    labels = _labels(5, 4, seed=8)
    fast = prototype_loss(semantic, labels, protos, published_sign=published_sign)
    slow = ref.prototype_loss(semantic.double(), labels, protos.centers, valid, published_sign)
    _assert_value_and_grad(fast, slow, [semantic])


def test_prototype_loss_sign() -> None:
    protos = Prototypes(torch.tensor([[[1.0, 0.0]]]), torch.ones(1, 1, dtype=torch.bool))
    at_prototype = torch.tensor([[[2.0, 0.0]]])
    positive = torch.tensor([[1]])
    assert prototype_loss(at_prototype, positive, protos).item() == pytest.approx(0.0)
    assert prototype_loss(at_prototype, positive, protos, published_sign=True).item() == pytest.approx(2.0)
    assert prototype_loss(-at_prototype, torch.tensor([[-1]]), protos).item() == pytest.approx(0.0)


def test_threshold_gets_gradient_at_the_clamp_boundary() -> None:
    # A known positive whose score saturates at exactly 1 must pull a threshold that starts at 1.0 down.
    from hst.losses import clamp_closed

    x = torch.tensor([0.0, 1.0, -0.5, 1.5, 0.3], requires_grad=True)
    clamp_closed(x, 0.0, 1.0).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 0.0, 0.0, 1.0]
    threshold = torch.nn.Parameter(torch.tensor(1.0))
    labels = torch.tensor([[1, 0, -1]], dtype=torch.int8)
    _, q = threshold_pseudo_labels(labels, torch.tensor([[1.0, 0.2, 0.4]]), threshold)
    threshold_loss(q, labels).backward()
    assert threshold.grad is not None and float(threshold.grad) > 0  # gradient descent lowers θ
