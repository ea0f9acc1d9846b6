"""The IST pair kernel: pair logits ``m_ij = Σ_k ReLU(α_ik + β_jk) ŵ_ijk + ĉ_ij`` for every pair ``i<j``.

``ŵ_ij = W3ᵀ w_ij`` and ``ĉ_ij = w_ij · b3`` come from one matrix product of the pair classifier weights with
``[W3 | b3 | 0]`` (the "fold", ``P×K×K``: the one cost that does not shrink with the batch). Its result is
read in pair order, where the pairs of one class row are contiguous, so no ``C×C×K`` copy of it is ever made;
the gradient comes back in the same layout, and the fold's own backward is two more matrix products. The sum
over ``k`` runs in blocks of class rows under a memory budget; the backward pass recomputes each block.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

KERNELS = ("eager", "compiled")
FOLD_ALIGN = 16
"""The folded matrix is ``K`` weight columns, the bias column, then zeros up to a multiple of this (aligned rows)."""


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


def row_offset(num_classes: int, row: int) -> int:
    """Position of pair ``(row, row+1)`` in the pair order: the pairs of rows ``0..row−1`` come first."""
    return row * (num_classes - 1) - row * (row - 1) // 2


def folded_width(dim: int) -> int:
    """Columns of the folded matrix: ``dim`` weights and one bias, rounded up to :data:`FOLD_ALIGN`."""
    return -(-(dim + 1) // FOLD_ALIGN) * FOLD_ALIGN


class BlockPairs:
    """Where the pairs of row block ``[r0, r1)`` (columns ``r0+1..C−1``) sit in the pair order.

    One row is a contiguous run of pairs, so its entries are a view; a block of several rows is a rectangle
    whose entries with ``j ≤ i`` are padding (zero on reading, skipped on writing), found through ``index``.
    """

    def __init__(self, num_classes: int, r0: int, r1: int, device: torch.device | str) -> None:
        self.r0, self.r1, self.cols = r0, r1, num_classes - r0 - 1
        self.start = row_offset(num_classes, r0)
        self.index: Tensor | None = None
        self.valid: Tensor | None = None
        if r1 - r0 > 1:
            rows = torch.arange(r0, r1, device=device)[:, None]
            cols = torch.arange(r0 + 1, num_classes, device=device)[None, :]
            self.valid = cols > rows
            self.index = torch.where(self.valid, rows * (num_classes - 1) - rows * (rows - 1) // 2 + cols - rows - 1, 0)

    @property
    def rows(self) -> int:
        return self.r1 - self.r0

    def gather(self, pairs: Tensor) -> Tensor:
        """The block (``rows×cols×…``) of a pair-ordered tensor (``P×…``), zero on the padding."""
        if self.index is None or self.valid is None:
            return pairs[self.start : self.start + self.cols].unsqueeze(0)
        mask = self.valid.view(*self.valid.shape, *([1] * (pairs.ndim - 1)))
        return pairs[self.index] * mask.to(pairs.dtype)

    def scatter(self, pairs: Tensor, block: Tensor) -> None:
        """Write a block (``rows×cols×…``) into a pair-ordered tensor (``P×…``), padding left out."""
        if self.index is None or self.valid is None:
            pairs[self.start : self.start + self.cols] = block[0]
        else:
            pairs[self.index[self.valid]] = block[self.valid]


def block_pairs(num_classes: int, elements_per_pair: int, budget: int, device: torch.device | str) -> list[BlockPairs]:
    """:func:`row_blocks` with their places in the pair order."""
    return [BlockPairs(num_classes, r0, r1, device) for r0, r1 in row_blocks(num_classes, elements_per_pair, budget)]


def pair_block_forward(alpha: Tensor, beta: Tensor, weight: Tensor) -> Tensor:
    """One row block, plainly: ``out[i, j, b] = Σ_k ReLU(α[i, b, k] + β[j, b, k]) · W[i, j, k]``."""
    return (torch.relu(alpha[:, None] + beta[None]) * weight[:, :, None, :]).sum(-1)


def pair_block_backward(alpha: Tensor, beta: Tensor, weight: Tensor, grad: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of :func:`pair_block_forward` for an upstream ``grad`` (rows×cols×B): (dα, dβ, dW)."""
    hidden = alpha[:, None] + beta[None]
    grad_w = (torch.relu(hidden) * grad[..., None]).sum(2)
    grad_h = torch.where(hidden > 0, grad[..., None] * weight[:, :, None, :], 0.0)
    return grad_h.sum(1), grad_h.sum(0), grad_w


def pair_block_backward_into(
    alpha: Tensor, beta: Tensor, weight: Tensor, grad: Tensor, grad_a: Tensor, grad_b: Tensor, grad_w: Tensor
) -> None:
    """:func:`pair_block_backward` accumulated into ``grad_a``, ``grad_b`` and written into ``grad_w`` in place."""
    hidden = alpha[:, None] + beta[None]
    grad_w.copy_((torch.relu(hidden) * grad[..., None]).sum(2))
    grad_h = torch.where(hidden > 0, grad[..., None] * weight[:, :, None, :], 0.0)
    grad_b.add_(grad_h.sum(0))
    grad_a.add_(grad_h.sum(1))


_COMPILED: dict[str, Any] = {}


def compiled_kernel(which: str) -> Any:
    """``torch.compile`` of the block forward or backward (fused loops: no rows×cols×B×K intermediate).

    Compiled once per process with dynamic shapes (blocks differ in size); needs a working C++ compiler
    on CPU (Inductor). Raises RuntimeError naming the cause when compilation is not possible.
    """
    if which not in _COMPILED:
        function = {
            "forward": pair_block_forward,
            "backward": pair_block_backward,
            "backward_into": pair_block_backward_into,
        }[which]
        _COMPILED[which] = torch.compile(function, dynamic=True)
    return _COMPILED[which]


def _largest_block(blocks: list[BlockPairs]) -> int:
    """Entries (pairs and padding) of the largest row block."""
    return max(blk.rows * blk.cols for blk in blocks)


def _eager_forward(alpha: Tensor, beta: Tensor, w_hat: Tensor, blocks: list[BlockPairs], out: Tensor) -> None:
    _, batch, dim = alpha.shape
    # one scratch buffer of the largest block, reused (fresh large allocations are slow on CPU)
    scratch = alpha.new_empty(_largest_block(blocks) * batch * dim)
    for blk in blocks:
        rows, cols = blk.rows, blk.cols
        hidden = scratch[: rows * cols * batch * dim].view(rows, cols, batch, dim)
        torch.add(alpha[blk.r0 : blk.r1, None], beta[None, blk.r0 + 1 :], out=hidden)
        hidden.relu_()
        weight = blk.gather(w_hat).reshape(rows * cols, dim, 1)
        blk.scatter(out, torch.bmm(hidden.view(rows * cols, batch, dim), weight).view(rows, cols, batch))


def _eager_backward(
    alpha: Tensor, beta: Tensor, w_hat: Tensor, grad_out: Tensor, blocks: list[BlockPairs], grads: list[Tensor | None]
) -> None:
    _, batch, dim = alpha.shape
    grad_a, grad_b, grad_w = grads
    scratch = alpha.new_empty(_largest_block(blocks) * batch * dim)
    for blk in blocks:
        rows, cols, r0 = blk.rows, blk.cols, blk.r0
        hidden = scratch[: rows * cols * batch * dim].view(rows, cols, batch, dim)
        torch.add(alpha[r0 : blk.r1, None], beta[None, r0 + 1 :], out=hidden)
        hidden.relu_()
        g_blk = blk.gather(grad_out).reshape(rows, cols, batch, 1)
        if grad_w is not None:
            gw = torch.bmm(hidden.view(rows * cols, batch, dim).transpose(1, 2), g_blk.reshape(-1, batch, 1))
            blk.scatter(grad_w, gw.view(rows, cols, dim))
        if grad_a is None and grad_b is None:
            continue
        # the ReLU derivative (1 where the output is positive, 0 elsewhere) overwrites the buffer in place
        grad_h = hidden.sign_().mul_(g_blk).mul_(blk.gather(w_hat).unsqueeze(2))
        if grad_a is not None:
            grad_a[r0 : blk.r1] += grad_h.sum(1)
        if grad_b is not None:
            # a single row needs no sum over rows (it would only copy)
            grad_b[r0 + 1 :] += grad_h[0] if rows == 1 else grad_h.sum(0)


def _compiled_forward(alpha: Tensor, beta: Tensor, w_hat: Tensor, blocks: list[BlockPairs], out: Tensor) -> None:
    forward_block = compiled_kernel("forward")
    for blk in blocks:
        blk.scatter(out, forward_block(alpha[blk.r0 : blk.r1], beta[blk.r0 + 1 :], blk.gather(w_hat)))


def _compiled_backward(
    alpha: Tensor, beta: Tensor, w_hat: Tensor, grad_out: Tensor, blocks: list[BlockPairs], grads: list[Tensor | None]
) -> None:
    grad_a, grad_b, grad_w = grads
    # the compiled kernel computes all three gradients at once; one not asked for goes to a throwaway buffer
    grad_a = torch.zeros_like(alpha) if grad_a is None else grad_a
    grad_b = torch.zeros_like(beta) if grad_b is None else grad_b
    grad_w = torch.empty_like(w_hat) if grad_w is None else grad_w
    backward_block, backward_into = compiled_kernel("backward"), compiled_kernel("backward_into")
    for blk in blocks:
        r0, r1, weight, grad = blk.r0, blk.r1, blk.gather(w_hat), blk.gather(grad_out)
        if blk.index is None:
            # one row: its weight gradient is a slice of the pair-ordered one, so the kernel writes it in place
            w_rows = grad_w[blk.start : blk.start + blk.cols].unsqueeze(0)
            backward_into(alpha[r0:r1], beta[r0 + 1 :], weight, grad, grad_a[r0:r1], grad_b[r0 + 1 :], w_rows)
            continue
        d_a, d_b, d_w = backward_block(alpha[r0:r1], beta[r0 + 1 :], weight, grad.contiguous())
        grad_a[r0:r1] += d_a
        grad_b[r0 + 1 :] += d_b
        blk.scatter(grad_w, d_w)


class _PairLogits(torch.autograd.Function):
    """Pair logits ``P×B`` (pair order) from ``α, β`` (``C×B×K``) and the folded ``P×W`` matrix.

    Columns ``0..K−1`` of ``folded`` are ``ŵ`` per pair, column ``K`` is ``ĉ``, the rest zero padding.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx, alpha: Tensor, beta: Tensor, folded: Tensor, blocks: list[BlockPairs], kernel: str
    ) -> Tensor:
        dim = alpha.shape[2]
        w_hat = folded[:, :dim]
        out = alpha.new_empty(folded.shape[0], alpha.shape[1])
        (_compiled_forward if kernel == "compiled" else _eager_forward)(alpha, beta, w_hat, blocks, out)
        out += folded[:, dim : dim + 1]
        ctx.save_for_backward(alpha, beta, folded)
        ctx.blocks = blocks  # type: ignore[attr-defined]
        ctx.kernel = kernel  # type: ignore[attr-defined]
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None, None, None]:
        alpha, beta, folded = ctx.saved_tensors
        dim = alpha.shape[2]
        grad_out = grad_out.contiguous()  # P×B, small; arrives transposed
        need_a, need_b, need_w = ctx.needs_input_grad[:3]
        grad_a = torch.zeros_like(alpha) if need_a else None
        grad_b = torch.zeros_like(beta) if need_b else None
        grad_f = None
        if need_w:
            # every pair lies in exactly one block, so the kernel writes every row of the weight columns
            grad_f = torch.empty_like(folded)
            grad_f[:, dim] = grad_out.sum(1)
            grad_f[:, dim + 1 :] = 0
        if need_a or need_b or need_w:
            grads = [grad_a, grad_b, None if grad_f is None else grad_f[:, :dim]]
            backward = _compiled_backward if ctx.kernel == "compiled" else _eager_backward
            backward(alpha, beta, folded[:, :dim], grad_out, ctx.blocks, grads)
        return grad_a, grad_b, grad_f, None, None


def pair_logits(
    alpha: Tensor,
    beta: Tensor,
    pair_weight: Tensor,
    fc3_weight: Tensor,
    fc3_bias: Tensor,
    chunk_elements: int,
    kernel: str = "eager",
) -> Tensor:
    """``B×P`` logits ``Σ_k ReLU(α_ik + β_jk) (W3ᵀ w_ij)_k + w_ij · b3`` (pair classifier bias not included).

    ``α, β``: ``C×B×K``; ``pair_weight``: ``P×K``; ``fc3_weight``: ``K×K``; ``fc3_bias``: ``K``.
    """
    num, batch, dim = alpha.shape
    pad = fc3_weight.new_zeros(dim, folded_width(dim) - dim - 1)
    # W3 and b3 side by side: one matrix product folds both, and its backward gives both gradients
    folded = pair_weight @ torch.cat([fc3_weight, fc3_bias[:, None], pad], dim=1)
    blocks = block_pairs(num, batch * dim, chunk_elements, alpha.device)
    return _PairLogits.apply(alpha, beta, folded, blocks, kernel).t()
