"""Intra-image semantic transfer (IST): per-image label co-occurrence from class-specific features.

Published formulation, for every unordered class pair ``i<j`` (order: ``i`` ascending, then ``j``):
``g = fc1(f)``, ``v_ij = fc3(ReLU(fc2([g_i; g_j])))``, ``m_ij = w_ij · v_ij + c_ij``.

The fast exact form used here never builds the ``B×P×1024`` pair activations of the whole batch.
``fc2`` on a concatenation splits into per-class terms ``α_i = W_a g_i + b2`` and ``β_j = W_b g_j``,
and ``fc3`` followed by the per-pair dot folds into ``ŵ_ij = W3ᵀ w_ij``, ``ĉ_ij = w_ij · b3 + c_ij``:
``m_ij = Σ_k ReLU(α_ik + β_jk) ŵ_ijk + ĉ_ij``. The sum runs over blocks of class rows under a memory
budget, and the backward pass recomputes each block instead of storing it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx, once_differentiable

from hst.models.sarl import ElementWiseLinear


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


def row_blocks(num_classes: int, elements_per_pair: int, budget: int) -> list[tuple[int, int]]:
    """Split class rows into blocks ``[r0, r1)`` whose pair block ``(r1−r0)×(C−r0−1)`` fits ``budget``.

    A block pairs rows ``r0..r1−1`` with columns ``r0+1..C−1``; at least one row per block.
    """
    blocks: list[tuple[int, int]] = []
    r0 = 0
    while r0 < num_classes - 1:
        cols = num_classes - r0 - 1
        rows = max(1, min(num_classes - 1 - r0, budget // max(1, cols * elements_per_pair)))
        blocks.append((r0, r0 + rows))
        r0 += rows
    return blocks


class _PairReluDot(torch.autograd.Function):
    """``M[i, j, b] = Σ_k ReLU(α[i, b, k] + β[j, b, k]) · W[i, j, k]`` for ``j > r0`` of each row block.

    Inputs ``α, β``: ``C×B×K``; ``W``: ``C×C×K`` (zero where ``j ≤ i``); output ``C×C×B``. Entries with
    ``j ≤ i`` are zero or meaningless and are discarded by the caller. One scratch buffer of the largest
    block is reused across blocks (fresh large allocations are slow on CPU).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx,
        alpha: Tensor,
        beta: Tensor,
        weight: Tensor,
        blocks: list[tuple[int, int]],
        kernel: str = "eager",
    ) -> Tensor:
        num, batch, dim = alpha.shape
        out = alpha.new_zeros(num, num, batch)
        ctx.save_for_backward(alpha, beta, weight)
        ctx.blocks = blocks  # type: ignore[attr-defined]
        ctx.kernel = kernel  # type: ignore[attr-defined]
        if kernel == "compiled":
            forward_block = compiled_kernel("forward")
            for r0, r1 in blocks:
                out[r0:r1, r0 + 1 :] = forward_block(alpha[r0:r1], beta[r0 + 1 :], weight[r0:r1, r0 + 1 :])
            return out
        scratch = alpha.new_empty(_largest_block(num, blocks) * batch * dim)
        for r0, r1 in blocks:
            rows, cols = r1 - r0, num - r0 - 1
            hidden = scratch[: rows * cols * batch * dim].view(rows, cols, batch, dim)
            torch.add(alpha[r0:r1, None], beta[None, r0 + 1 :], out=hidden)
            hidden.relu_()
            w_blk = weight[r0:r1, r0 + 1 :].reshape(rows * cols, dim, 1)
            out[r0:r1, r0 + 1 :] = torch.bmm(hidden.view(rows * cols, batch, dim), w_blk).view(rows, cols, batch)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None, None, None]:
        alpha, beta, weight = ctx.saved_tensors
        num, batch, dim = alpha.shape
        if ctx.kernel == "compiled":
            return (*_compiled_backward(alpha, beta, weight, grad_out, ctx.blocks), None, None)
        need_a, need_b, need_w = ctx.needs_input_grad[:3]
        grad_a = torch.zeros_like(alpha) if need_a else None
        grad_b = torch.zeros_like(beta) if need_b else None
        grad_w = torch.zeros_like(weight) if need_w else None
        scratch = alpha.new_empty(_largest_block(num, ctx.blocks) * batch * dim)
        for r0, r1 in ctx.blocks:
            rows, cols = r1 - r0, num - r0 - 1
            hidden = scratch[: rows * cols * batch * dim].view(rows, cols, batch, dim)
            torch.add(alpha[r0:r1, None], beta[None, r0 + 1 :], out=hidden)
            hidden.relu_()
            g_blk = grad_out[r0:r1, r0 + 1 :].reshape(rows, cols, batch, 1)
            if grad_w is not None:
                gw = torch.bmm(hidden.view(rows * cols, batch, dim).transpose(1, 2), g_blk.reshape(-1, batch, 1))
                grad_w[r0:r1, r0 + 1 :] = gw.view(rows, cols, dim)
            if grad_a is None and grad_b is None:
                continue
            # the ReLU derivative (1 where the output is positive, 0 elsewhere) overwrites the buffer in place
            grad_h = hidden.sign_().mul_(g_blk).mul_(weight[r0:r1, r0 + 1 :].unsqueeze(2))
            if grad_a is not None:
                grad_a[r0:r1] += grad_h.sum(1)
            if grad_b is not None:
                grad_b[r0 + 1 :] += grad_h.sum(0)
        return grad_a, grad_b, grad_w, None, None


def pair_block_forward(alpha: Tensor, beta: Tensor, weight: Tensor) -> Tensor:
    """One row block, plainly: ``out[i, j, b] = Σ_k ReLU(α[i, b, k] + β[j, b, k]) · W[i, j, k]``."""
    return (torch.relu(alpha[:, None] + beta[None]) * weight[:, :, None, :]).sum(-1)


def pair_block_backward(alpha: Tensor, beta: Tensor, weight: Tensor, grad: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of :func:`pair_block_forward` for an upstream ``grad`` (rows×cols×B): (dα, dβ, dW)."""
    hidden = alpha[:, None] + beta[None]
    grad_w = (torch.relu(hidden) * grad[..., None]).sum(2)
    grad_h = torch.where(hidden > 0, grad[..., None] * weight[:, :, None, :], 0.0)
    return grad_h.sum(1), grad_h.sum(0), grad_w


_COMPILED: dict[str, Any] = {}


def compiled_kernel(which: str) -> Any:
    """``torch.compile`` of the block forward or backward (fused loops: no rows×cols×B×K intermediate).

    Compiled once per process with dynamic shapes (blocks differ in size); needs a working C++ compiler
    on CPU (Inductor). Raises RuntimeError naming the cause when compilation is not possible.
    """
    if which not in _COMPILED:
        function = {"forward": pair_block_forward, "backward": pair_block_backward}[which]
        _COMPILED[which] = torch.compile(function, dynamic=True)
    return _COMPILED[which]


def _compiled_backward(
    alpha: Tensor, beta: Tensor, weight: Tensor, grad_out: Tensor, blocks: list[tuple[int, int]]
) -> tuple[Tensor, Tensor, Tensor]:
    num = alpha.shape[0]
    grad_a, grad_b, grad_w = torch.zeros_like(alpha), torch.zeros_like(beta), torch.zeros_like(weight)
    backward_block = compiled_kernel("backward")
    for r0, r1 in blocks:
        d_a, d_b, d_w = backward_block(
            alpha[r0:r1], beta[r0 + 1 :], weight[r0:r1, r0 + 1 :], grad_out[r0:r1, r0 + 1 : num].contiguous()
        )
        grad_a[r0:r1] += d_a
        grad_b[r0 + 1 :] += d_b
        grad_w[r0:r1, r0 + 1 :] = d_w
    return grad_a, grad_b, grad_w


def _largest_block(num_classes: int, blocks: list[tuple[int, int]]) -> int:
    """Number of pairs in the largest row block."""
    return max((r1 - r0) * (num_classes - r0 - 1) for r0, r1 in blocks)


KERNELS = ("eager", "compiled")


class ISTHead(nn.Module):
    """Pair co-occurrence logits ``B×P`` from pre-GNN semantic features ``B×C×D``.

    Parameters keep the published shapes and map 1:1 (published name → here): ``intra_fc_1`` → ``fc1``
    (``D→hidden``), ``intra_fc_2`` → ``fc2`` (``2·hidden→output``), ``intra_fc_3`` → ``fc3``
    (``output→output``), ``intra_classifiers`` → ``pair_classifier`` (weight ``P×output``, bias ``P``).
    ``chunk_elements`` bounds the one scratch block (``pairs × B × output`` elements) that the forward
    and the recomputing backward pass each hold; nothing of that size is kept between them.
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
        first, second = pair_index(num_classes)
        self.register_buffer("pair_first", first, persistent=False)
        self.register_buffer("pair_second", second, persistent=False)

    def forward(self, semantic: Tensor) -> Tensor:
        """Map ``B×C×D`` semantic features to ``B×P`` pair logits."""
        num, batch = self.num_classes, semantic.shape[0]
        if semantic.ndim != 3 or semantic.shape[1] != num:
            raise ValueError(f"expected B×{num}×D semantic features, got shape {tuple(semantic.shape)}")
        g = self.fc1(semantic.transpose(0, 1))  # C×B×hidden
        w_a, w_b = self.fc2.weight[:, : self.hidden_dim], self.fc2.weight[:, self.hidden_dim :]
        alpha = F.linear(g, w_a, self.fc2.bias)  # C×B×K
        beta = F.linear(g, w_b)
        pair_w = self.pair_classifier.weight
        w_hat = pair_w @ self.fc3.weight  # P×K, equals W3ᵀ w_ij per row
        c_hat = pair_w @ self.fc3.bias + self.pair_classifier.bias  # P
        first, second = self.pair_first, self.pair_second
        w_full = w_hat.new_zeros(num, num, w_hat.shape[1]).index_put((first, second), w_hat)
        blocks = row_blocks(num, batch * w_hat.shape[1], self.chunk_elements)
        full = _PairReluDot.apply(alpha, beta, w_full, blocks, self.kernel)  # C×C×B
        return full[first, second].t() + c_hat


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
