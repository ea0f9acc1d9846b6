"""Intra-image semantic transfer (IST): per-image label co-occurrence from class-specific features.

Published formulation, for every unordered class pair ``i<j`` (order: ``i`` ascending, then ``j``):
``g = fc1(f)``, ``v_ij = fc3(ReLU(fc2([g_i; g_j])))``, ``m_ij = w_ij · v_ij + c_ij``.

The fast exact form used here never builds the ``B×P×1024`` pair activations of the whole batch.
``fc2`` on a concatenation splits into per-class terms ``α_i = W_a g_i + b2`` and ``β_j = W_b g_j``,
and ``fc3`` followed by the per-pair dot folds into ``ŵ_ij = W3ᵀ w_ij``, ``ĉ_ij = w_ij · b3 + c_ij``:
``m_ij = Σ_k ReLU(α_ik + β_jk) ŵ_ijk + ĉ_ij``. The sum runs over blocks of class rows under a memory
budget, and the backward pass recomputes each block instead of storing it (:mod:`hst.models.ist_kernel`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hst.models.ist_kernel import KERNELS, compiled_kernel, pair_logits, row_blocks
from hst.models.sarl import ElementWiseLinear

__all__ = [
    "KERNELS",
    "ISTHead",
    "compiled_kernel",
    "cooccurrence_matrix",
    "intra_scores",
    "intra_scores_leave_one_out",
    "num_classes_from_pairs",
    "pair_index",
    "row_blocks",
]


def pair_index(num_classes: int, device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """Indices ``(I, J)`` of the ``C(C−1)/2`` unordered pairs ``i<j``, ``i`` ascending then ``j``."""
    index = torch.triu_indices(num_classes, num_classes, offset=1, device=device)
    return index[0], index[1]


def num_classes_from_pairs(num_pairs: int) -> int:
    """Invert ``P = C(C−1)/2``; raises ``ValueError`` if ``num_pairs`` is not such a number."""
    num = (1 + math.isqrt(1 + 8 * num_pairs)) // 2
    if num * (num - 1) // 2 != num_pairs:
        raise ValueError(f"{num_pairs} is not C(C-1)/2 for any class count C")
    return num


class ISTHead(nn.Module):
    """Pair co-occurrence logits ``B×P`` from pre-GNN semantic features ``B×C×D``.

    Parameters keep the published shapes and map 1:1 (published name → here): ``intra_fc_1`` → ``fc1``
    (``D→hidden``), ``intra_fc_2`` → ``fc2`` (``2·hidden→output``), ``intra_fc_3`` → ``fc3``
    (``output→output``), ``intra_classifiers`` → ``pair_classifier`` (weight ``P×output``, bias ``P``).
    ``chunk_elements`` bounds the one scratch block (``pairs × B × output`` elements) that the forward
    and the recomputing backward pass each hold; nothing of that size is kept between them (only the folded
    per-pair weights, ``P × output``, are).
    ``kernel="compiled"`` runs each block through a ``torch.compile``-fused loop (the same formula;
    faster on CPU after a one-off compilation of some tens of seconds).
    """

    def __init__(
        self,
        num_classes: int,
        feature_dim: int = 1024,
        hidden_dim: int = 512,
        output_dim: int = 1024,
        chunk_elements: int = 2**20,
        kernel: str = "eager",
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"the IST head needs at least 2 classes, got {num_classes}")
        self.num_classes = num_classes
        self.num_pairs = num_classes * (num_classes - 1) // 2
        self.hidden_dim = hidden_dim
        self.chunk_elements = chunk_elements
        if kernel not in KERNELS:
            raise ValueError(f"IST kernel must be one of {KERNELS}, got {kernel!r}")
        self.kernel = kernel
        self.fc1 = nn.Linear(feature_dim, hidden_dim)
        self.fc2 = nn.Linear(2 * hidden_dim, output_dim)
        self.fc3 = nn.Linear(output_dim, output_dim)
        self.pair_classifier = ElementWiseLinear(self.num_pairs, output_dim)

    def forward(self, semantic: Tensor) -> Tensor:
        """Map ``B×C×D`` semantic features to ``B×P`` pair logits."""
        num = self.num_classes
        if semantic.ndim != 3 or semantic.shape[1] != num:
            raise ValueError(f"expected B×{num}×D semantic features, got shape {tuple(semantic.shape)}")
        g = self.fc1(semantic.transpose(0, 1))  # C×B×hidden
        w_a, w_b = self.fc2.weight[:, : self.hidden_dim], self.fc2.weight[:, self.hidden_dim :]
        alpha = F.linear(g, w_a, self.fc2.bias)  # C×B×K
        beta = F.linear(g, w_b)
        pairs = pair_logits(
            alpha, beta, self.pair_classifier.weight, self.fc3.weight, self.fc3.bias, self.chunk_elements, self.kernel
        )
        return pairs + self.pair_classifier.bias


def cooccurrence_matrix(pair_logits: Tensor) -> Tensor:
    """Symmetric ``B×C×C`` co-occurrence probabilities ``σ(m_ij)`` with unit diagonal."""
    batch, num_pairs = pair_logits.shape
    num = num_classes_from_pairs(num_pairs)
    first, second = pair_index(num, device=pair_logits.device)
    prob = torch.sigmoid(pair_logits)
    eye = torch.eye(num, dtype=prob.dtype, device=prob.device)
    matrix = eye.expand(batch, num, num).clone()
    matrix[:, first, second] = prob
    matrix[:, second, first] = prob
    return matrix


def intra_scores(pair_logits: Tensor, labels: Tensor) -> Tensor:
    """IST score ``B×C``: mean co-occurrence of each class with the image's known positives.

    The self term (1) counts for known positives; an image with no known positive scores 0 everywhere.
    """
    matrix = cooccurrence_matrix(pair_logits)
    pos = (labels.to(matrix.device) > 0).to(matrix.dtype)
    total = torch.bmm(matrix, pos.unsqueeze(2)).squeeze(2)
    return total / pos.sum(1, keepdim=True).clamp(min=1)


def intra_scores_leave_one_out(pair_logits: Tensor, labels: Tensor) -> Tensor:
    """IST score without the entry's own label: mean co-occurrence of class ``i`` with the image's *other*
    known positives, ``Σ_{j∈K⁺, j≠i} M_ij / |K⁺ \\ {i}|``; NaN where no other known positive exists.

    The published score counts the self term (1) for a known positive, so known positives cannot tell how
    well the score finds hidden ones; this one can serve to calibrate thresholds on known entries.
    """
    matrix = cooccurrence_matrix(pair_logits)
    pos = (labels.to(matrix.device) > 0).to(matrix.dtype)
    total = torch.bmm(matrix, pos.unsqueeze(2)).squeeze(2) - pos  # the diagonal (1) of a known positive
    others = pos.sum(1, keepdim=True) - pos
    return torch.where(others > 0, total / others.clamp(min=1), torch.full_like(total, float("nan")))
