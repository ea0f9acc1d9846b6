"""Cross-image semantic transfer (CST): per-class K-means prototypes and feature–prototype similarity.

Prototypes are the K-means centres of the pre-GNN semantic features of known positives, per class.
K-means runs batched over many classes at once (padded, masked) in torch, on whatever device the
features live, with k-means++ seeding driven by one seeded CPU generator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

COSINE_EPS = 1e-9


@dataclass
class Prototypes:
    """Padded per-class prototypes: ``centers`` ``C×K×D`` float32 and ``valid`` ``C×K`` bool.

    A class with ``n < K`` known positives has its ``n`` features as prototypes; a class with none has
    no valid prototype (its padded rows are zero).
    """

    centers: Tensor
    valid: Tensor

    @property
    def counts(self) -> Tensor:
        """Number of valid prototypes per class (``C``)."""
        return self.valid.sum(1)

    @property
    def available(self) -> Tensor:
        """Classes with at least one prototype (``C`` bool)."""
        return self.valid.any(1)

    def to(self, device: torch.device | str) -> Prototypes:
        return Prototypes(self.centers.to(device), self.valid.to(device))

    def state_dict(self) -> dict[str, Tensor]:
        return {"centers": self.centers, "valid": self.valid}

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor]) -> Prototypes:
        return cls(state["centers"].float(), state["valid"].bool())


def _kmeans_padded(points: Tensor, counts: Tensor, k: int, iters: int, uniforms: Tensor) -> Tensor:
    """Batched K-means: ``points`` ``G×N×D`` (row ``g`` valid for its first ``counts[g] > k`` entries).

    ``uniforms`` (``G×k`` in [0, 1)) drive the k-means++ seeding, so a class's result does not depend on
    which other classes share its batch. Empty clusters keep their previous centre. Returns ``G×k×D``.
    """
    groups, num, _ = points.shape
    valid = torch.arange(num, device=points.device) < counts[:, None]  # G×N
    validf = valid.to(points.dtype)
    sq = (points * points).sum(2)  # G×N
    rows = torch.arange(groups, device=points.device)
    countf = counts.to(torch.float64)

    def dist_to(center: Tensor) -> Tensor:
        cross = torch.bmm(points, center.unsqueeze(2)).squeeze(2)
        return (sq - 2 * cross + (center * center).sum(1, keepdim=True)).clamp_min(0) * validf

    # k-means++: first centre uniform, then proportional to squared distance to the nearest centre
    first = (uniforms[:, 0] * countf).long().clamp(max=counts - 1)
    chosen = [points[rows, first]]
    nearest = dist_to(chosen[0])
    for step in range(1, k):
        cumulative = nearest.cumsum(1)
        total = cumulative[:, -1]
        # stay strictly below the total so the draw lands on a point with positive weight
        target = (uniforms[:, step] * total.to(torch.float64)).to(points.dtype)
        target = torch.minimum(target, torch.nextafter(total, torch.zeros_like(total)))
        sampled = torch.searchsorted(cumulative, target.unsqueeze(1), right=True).squeeze(1)
        # all remaining points coincide with chosen centres: fall back to a uniform pick
        uniform_pick = (uniforms[:, step] * countf).long()
        index = torch.where(total > 0, sampled, uniform_pick).clamp(max=counts - 1)
        chosen.append(points[rows, index])
        nearest = torch.minimum(nearest, dist_to(chosen[-1]))
    centers = torch.stack(chosen, dim=1)  # G×k×D

    previous: Tensor | None = None
    for _ in range(iters):
        dist = (centers * centers).sum(2).unsqueeze(1) - 2 * torch.bmm(points, centers.transpose(1, 2))
        assign = torch.where(valid, dist.argmin(2), -1)
        if previous is not None and torch.equal(assign, previous):
            break
        previous = assign
        onehot = F.one_hot(assign.clamp_min(0), k).to(points.dtype) * validf.unsqueeze(2)  # G×N×k
        sums = torch.bmm(onehot.transpose(1, 2), points)
        sizes = onehot.sum(1).unsqueeze(2)
        centers = torch.where(sizes > 0, sums / sizes.clamp_min(1), centers)
    return centers


def _uniforms(num_rows: int, k: int, seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(num_rows, k, generator=generator, dtype=torch.float64)


def kmeans(x: Tensor, k: int, iters: int = 30, seed: int = 0) -> Tensor:
    """K-means (k-means++ seeding, Lloyd iterations) of ``x`` (``N×D``); returns ``min(N, k)×D`` centres.

    Deterministic for a given seed; runs on the device of ``x`` in float32. With ``N ≤ k`` the points
    themselves are returned. Unlike scikit-learn's default there is one plain k-means++ seeding (no
    local trials, no restarts) and an empty cluster keeps its previous centre.
    """
    if x.ndim != 2:
        raise ValueError(f"kmeans expects an N×D matrix, got shape {tuple(x.shape)}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    points = x.detach().float()
    if points.shape[0] <= k:
        return points.clone()
    counts = torch.tensor([points.shape[0]], device=points.device)
    uniforms = _uniforms(1, k, seed).to(points.device)
    return _kmeans_padded(points.unsqueeze(0), counts, k, iters, uniforms)[0]


def prototypes_from_lists(
    class_features: Sequence[Tensor], k: int = 10, seed: int = 0, iters: int = 30, max_elements: int = 2**28
) -> Prototypes:
    """Prototypes from one ``n_c×D`` tensor of known-positive features per class (``n_c`` may be 0).

    Classes are sorted by size and clustered in padded batches of at most ``max_elements`` floats
    (a single class larger than that runs alone). Results do not depend on the batching.
    """
    num_classes = len(class_features)
    if num_classes == 0:
        raise ValueError("no classes given")
    dim = class_features[0].shape[1]
    device = class_features[0].device
    counts = [int(f.shape[0]) for f in class_features]
    centers = torch.zeros(num_classes, k, dim, dtype=torch.float32, device=device)
    valid = torch.zeros(num_classes, k, dtype=torch.bool, device=device)
    uniforms = _uniforms(num_classes, k, seed).to(device)
    large: list[int] = []
    for c, feats in enumerate(class_features):
        if feats.ndim != 2 or feats.shape[1] != dim:
            raise ValueError(f"class {c}: features must be n×{dim}, got shape {tuple(feats.shape)}")
        if counts[c] <= k:
            centers[c, : counts[c]] = feats.detach().float()
            valid[c, : counts[c]] = True
        else:
            large.append(c)
    large.sort(key=lambda c: counts[c])
    start = 0
    while start < len(large):
        # grow the group while the padded batch (size of its largest class) stays within budget
        stop = start + 1
        while stop < len(large) and (stop + 1 - start) * counts[large[stop]] * dim <= max_elements:
            stop += 1
        group = large[start:stop]
        width = counts[group[-1]]
        padded = torch.zeros(len(group), width, dim, dtype=torch.float32, device=device)
        for row, c in enumerate(group):
            padded[row, : counts[c]] = class_features[c].detach().float()
        group_counts = torch.tensor([counts[c] for c in group], device=device)
        result = _kmeans_padded(padded, group_counts, k, iters, uniforms[group])
        centers[group] = result
        valid[group] = True
        start = stop
    return Prototypes(centers, valid)


def compute_prototypes(
    features: Tensor,
    labels: Tensor | np.ndarray,
    k: int = 10,
    seed: int = 0,
    iters: int = 30,
    max_elements: int = 2**28,
) -> Prototypes:
    """Per-class K-means prototypes of ``features`` (``N×C×D``) over known positives of ``labels`` (``N×C``)."""
    labels_t = torch.as_tensor(np.asarray(labels) if isinstance(labels, np.ndarray) else labels)
    if features.ndim != 3 or labels_t.shape != features.shape[:2]:
        raise ValueError(
            f"features must be N×C×D and labels N×C; got {tuple(features.shape)} and {tuple(labels_t.shape)}"
        )
    positive = (labels_t > 0).to(features.device)
    lists = [features[positive[:, c], c] for c in range(features.shape[1])]
    return prototypes_from_lists(lists, k=k, seed=seed, iters=iters, max_elements=max_elements)


def prototype_similarity(semantic: Tensor, prototypes: Prototypes) -> tuple[Tensor, Tensor]:
    """Mean cosine (eps 1e-9) of ``semantic`` (``B×C×D``) to each class's valid prototypes.

    Returns (``B×C`` similarity, 0 for classes without prototypes; ``C`` bool availability).
    """
    centers = prototypes.centers.to(semantic.device, semantic.dtype)
    valid = prototypes.valid.to(semantic.device)
    feats = semantic / semantic.norm(dim=2, keepdim=True).clamp_min(COSINE_EPS)
    protos = centers / centers.norm(dim=2, keepdim=True).clamp_min(COSINE_EPS)
    cosine = torch.bmm(feats.transpose(0, 1), protos.transpose(1, 2))  # C×B×K
    counts = valid.sum(1)
    weights = valid.to(semantic.dtype) / counts.clamp_min(1).unsqueeze(1).to(semantic.dtype)  # C×K
    similarity = torch.bmm(cosine, weights.unsqueeze(2)).squeeze(2).t()  # B×C
    return similarity, counts > 0


def inter_scores(semantic: Tensor, prototypes: Prototypes) -> Tensor:
    """CST score ``B×C``: mean cosine to the class prototypes; ``-inf`` for classes without prototypes.

    ``-inf`` guarantees ``clamp(s − θ, 0, 1) = 0`` with zero gradient for any finite θ, so such classes
    never receive CST pseudo labels; the value is never NaN.
    """
    similarity, available = prototype_similarity(semantic, prototypes)
    return similarity.masked_fill(~available, float("-inf"))


def standardize_rows(features: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Per-dimension standardisation (statistics of the training images), then unit length per row."""
    z = (features.float() - mean) / std.clamp_min(1e-6)
    return z / z.norm(dim=1, keepdim=True).clamp_min(COSINE_EPS)


def neighbour_margin(
    query: Tensor, query_rows: Tensor | None, bank: Tensor, bank_rows: Tensor, bank_labels: Tensor, k: int
) -> Tensor:
    """Image-level CST score ``B×C``: the mean cosine of each query image to its ``k`` most similar bank images with
    a known positive of the class, minus the same over bank images with a known negative.

    ``query`` ``B×F`` and ``bank`` ``M×F`` are unit rows (:func:`standardize_rows`); ``bank_labels`` ``M×C``
    (+1 / −1 / 0). With ``query_rows`` given, a bank image of the same row is never a neighbour, so the score of a
    known entry does not depend on its own label (thresholds are calibrated on known entries). NaN where the bank
    has no known positive or no known negative of the class.
    """
    cosine = query @ bank.t()
    if query_rows is not None:
        same = query_rows.to(cosine.device)[:, None] == bank_rows.to(cosine.device)[None, :]
        cosine = cosine.masked_fill(same, float("-inf"))
    num_classes = bank_labels.shape[1]
    sides = []
    for sign in (1, -1):
        side = torch.full((len(query), num_classes), float("nan"), device=cosine.device)
        for c in range(num_classes):
            columns = torch.nonzero(bank_labels[:, c] == sign).squeeze(1)
            if len(columns) == 0:
                continue
            top = torch.topk(cosine[:, columns], min(k, len(columns)), dim=1).values
            finite = torch.isfinite(top)
            total = torch.where(finite, top, torch.zeros_like(top)).sum(1)
            count = finite.sum(1)
            side[:, c] = torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))
        sides.append(side)
    return sides[0] - sides[1]
