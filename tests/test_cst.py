"""K-means, prototypes and CST scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import reference_hst as ref
from hst.losses import threshold_pseudo_labels
from hst.models.cst import (
    Prototypes,
    compute_prototypes,
    inter_scores,
    kmeans,
    prototypes_from_lists,
)


def _blobs(num_centers: int, per_center: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Well-separated Gaussian blobs: (points, true centres, blob id per point), points shuffled."""
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(num_centers, dim, generator=gen) * 20
    ids = torch.arange(num_centers).repeat_interleave(per_center)
    points = centers[ids] + 0.3 * torch.randn(len(ids), dim, generator=gen)
    order = torch.randperm(len(ids), generator=gen)
    return points[order], centers, ids[order]


def _match(found: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """For each target centre, the distance to the nearest found centre."""
    return torch.cdist(targets, found).min(1).values


def test_kmeans_recovers_separated_clusters_exactly() -> None:
    points, centers, ids = _blobs(6, 40, 8, seed=0)
    found = kmeans(points, 6, seed=3)
    assert found.shape == (6, 8) and found.dtype == torch.float32
    means = torch.stack([points[ids == i].mean(0) for i in range(6)])
    # converged Lloyd centres are exactly the blob means
    assert _match(found, means).max() < 1e-4
    assert _match(found, centers).max() < 0.2


def test_kmeans_is_deterministic_given_seed() -> None:
    points = torch.randn(300, 5, generator=torch.Generator().manual_seed(1))  # no cluster structure
    first = kmeans(points, 10, seed=11)
    assert torch.equal(first, kmeans(points, 10, seed=11))
    assert not torch.equal(first, kmeans(points, 10, seed=12))


def test_kmeans_few_points_and_duplicates() -> None:
    points = torch.randn(4, 3)
    assert torch.equal(kmeans(points, 10), points)
    duplicated = torch.tensor([[1.0, 2.0]]).repeat(15, 1)
    duplicated[:3] = torch.tensor([5.0, 5.0])
    found = kmeans(duplicated, 5, seed=0)
    assert found.shape == (5, 2) and torch.isfinite(found).all()
    assert {tuple(row) for row in found.tolist()} == {(1.0, 2.0), (5.0, 5.0)}
    with pytest.raises(ValueError, match="N×D"):
        kmeans(torch.randn(3), 2)


def _class_features(seed: int = 0) -> tuple[torch.Tensor, np.ndarray, list[torch.Tensor]]:
    """N×C×D features where each class's known positives form 3 blobs; class 2 has 2 positives, 3 none."""
    gen = np.random.default_rng(seed)
    num, classes, dim = 120, 4, 6
    labels = gen.choice(np.array([-1, 0, 1], dtype=np.int8), size=(num, classes), p=[0.3, 0.2, 0.5])
    labels[:, 2] = -1
    labels[[5, 9], 2] = 1
    labels[:, 3] = gen.choice(np.array([-1, 0], dtype=np.int8), size=num)
    features = torch.randn(num, classes, dim, generator=torch.Generator().manual_seed(seed))
    blob_centers = []
    for c in range(classes):
        centers = torch.randn(3, dim, generator=torch.Generator().manual_seed(100 + c)) * 30
        blob_centers.append(centers)
        features[:, c] += centers[torch.arange(num) % 3]
    return features, labels, blob_centers


def test_compute_prototypes_per_class() -> None:
    features, labels, blob_centers = _class_features()
    protos = compute_prototypes(features, labels, k=3, seed=0)
    assert protos.centers.shape == (4, 3, 6) and protos.centers.dtype == torch.float32
    assert protos.counts.tolist() == [3, 3, 2, 0]
    assert protos.available.tolist() == [True, True, True, False]
    assert torch.equal(protos.centers[3], torch.zeros(3, 6))
    assert torch.equal(protos.centers[2, :2], features[[5, 9], 2])
    for c in range(2):
        positives = features[labels[:, c] == 1, c]
        means = torch.stack([positives[torch.arange(120)[labels[:, c] == 1] % 3 == i].mean(0) for i in range(3)])
        assert _match(protos.centers[c], means).max() < 1e-3
    assert _match(protos.centers[0], blob_centers[0]).max() < 1.0


def test_compute_prototypes_independent_of_batching_and_deterministic() -> None:
    gen = torch.Generator().manual_seed(5)
    lists = [torch.randn(n, 4, generator=gen) for n in (30, 0, 12, 50, 7, 25)]
    together = prototypes_from_lists(lists, k=5, seed=9)
    alone = prototypes_from_lists(lists, k=5, seed=9, max_elements=1)
    torch.testing.assert_close(together.centers, alone.centers, rtol=1e-5, atol=1e-5)
    assert torch.equal(together.valid, alone.valid)
    again = prototypes_from_lists(lists, k=5, seed=9)
    assert torch.equal(together.centers, again.centers)
    single = prototypes_from_lists(lists[:1], k=5, seed=9)
    torch.testing.assert_close(single.centers[0], kmeans(lists[0], 5, seed=9))


def test_prototypes_state_round_trip() -> None:
    protos = prototypes_from_lists([torch.randn(8, 3), torch.zeros(0, 3)], k=4)
    back = Prototypes.from_state_dict(protos.state_dict())
    assert torch.equal(back.centers, protos.centers) and torch.equal(back.valid, protos.valid)


def test_inter_scores_match_reference_and_are_nan_free() -> None:
    torch.manual_seed(0)
    centers = torch.randn(4, 3, 8)
    valid = torch.tensor([[True, True, True], [True, False, False], [False, False, False], [True, True, False]])
    protos = Prototypes(centers * valid.unsqueeze(2), valid)
    semantic = torch.randn(5, 4, 8, requires_grad=True)
    scores = inter_scores(semantic, protos)
    expected = ref.inter_scores(semantic.double(), protos.centers, valid)
    assert not torch.isnan(scores).any()
    assert torch.isneginf(scores[:, 2]).all() and torch.isfinite(scores[:, [0, 1, 3]]).all()
    ref.assert_close_rel(scores[:, [0, 1, 3]], expected[:, [0, 1, 3]])
    finite = scores[:, [0, 1, 3]]
    ref.assert_grads_close(ref.grads(finite, [semantic]), ref.grads(expected[:, [0, 1, 3]], [semantic]))
    # a class without prototypes never gets a CST pseudo label and passes no gradient, even for θ < −1
    labels = torch.zeros(5, 4, dtype=torch.int8)
    theta = torch.tensor(-5.0, requires_grad=True)
    hard, q = threshold_pseudo_labels(labels, inter_scores(semantic, protos), theta)
    assert torch.equal(hard[:, 2], torch.zeros(5, dtype=torch.int8)) and (hard[:, [0, 1, 3]] == 1).all()
    (grad_theta, grad_sem) = torch.autograd.grad(q[:, 2].sum(), [theta, semantic])
    assert grad_theta == 0 and torch.isfinite(grad_sem).all() and grad_sem.abs().max() == 0
