"""HST losses and the shared threshold pseudo-label rule.

Calling convention: ``loss(input, labels, ...) -> scalar tensor``. ``labels`` is a ``B×C`` tensor with
+1 (known positive), −1 (known negative), 0 (unknown), any dtype. Every reduction that could be empty
returns 0 (still attached to the graph), never NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from hst.models.cst import COSINE_EPS, Prototypes, prototype_similarity
from hst.models.ist import num_classes_from_pairs, pair_index


def _on(labels: Tensor, like: Tensor) -> Tensor:
    return labels.to(like.device)


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` where ``mask`` holds; 0 (with a graph) when the mask is empty."""
    total = torch.where(mask, values, torch.zeros_like(values)).sum()
    return total / mask.sum().clamp_min(1).to(values.dtype)


def clamp_closed(x: Tensor, low: float, high: float) -> Tensor:
    """``clamp`` whose gradient passes on the closed interval [low, high], boundaries included.

    The published code relied on this (PyTorch 1.7's clamp); current PyTorch gives zero gradient at the
    boundaries, which freezes a threshold that starts at 1.0 where scores saturate at exactly 1.
    """
    inside = (x >= low) & (x <= high)
    return torch.where(inside, x, x.detach().clamp(low, high))


def threshold_pseudo_labels(labels: Tensor, scores: Tensor, threshold: Tensor | float) -> tuple[Tensor, Tensor]:
    """Pseudo labels from scores and a (learnable) threshold.

    ``q = clamp(s − θ, 0, 1)`` (differentiable in ``s`` and ``θ``); ``ŷ = y + 1[y = 0]·1[q > 0]``: only
    unknown entries can turn positive, known labels never change. Returns ``(ŷ, q)``; ``ŷ`` keeps the
    dtype of ``labels``.
    """
    labels = _on(labels, scores)
    q = clamp_closed(scores - threshold, 0.0, 1.0)
    added = (labels == 0) & (q.detach() > 0)
    return labels + added.to(labels.dtype), q


def partial_bce(logits: Tensor, labels: Tensor) -> Tensor:
    """Binary cross-entropy on known entries only, averaged over all known entries of the batch."""
    labels = _on(labels, logits)
    positive, known = labels > 0, labels != 0
    loss = F.binary_cross_entropy_with_logits(logits, positive.to(logits.dtype), reduction="none")
    return _masked_mean(loss, known)


def weighted_bce(logits: Tensor, targets: Tensor, weights: Tensor) -> Tensor:
    """BCE against ``targets`` (+1 / −1; others count as negative where weighted) with per-entry ``weights``,
    normalised by the total weight; entries of weight 0 are ignored. 0 (with a graph) when nothing counts."""
    targets, weights = _on(targets, logits), _on(weights, logits).to(logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits, (targets > 0).to(logits.dtype), reduction="none")
    return (loss * weights).sum() / weights.sum().clamp_min(1e-12)


def threshold_loss(q: Tensor, labels: Tensor) -> Tensor:
    """Threshold-learning term: partial BCE with the clamped scores ``q`` used as logits."""
    return partial_bce(q, labels)


def intra_cooccurrence_loss(
    pair_logits: Tensor,
    labels: Tensor,
    gamma_neg: float = 2.0,
    gamma_pos: float = 1.0,
    clip: float = 0.05,
    eps: float = 1e-8,
    ignore_unknown_pairs: bool = False,
) -> Tensor:
    """Asymmetric loss on pair co-occurrence logits ``B×P``.

    Pair target is 1 iff both classes are known positive. By default (published behaviour) every other
    pair, unknown ones included, is a negative and the mean runs over all ``B×P`` entries; with
    ``ignore_unknown_pairs`` only pairs whose two labels are known count.
    """
    labels = _on(labels, pair_logits)
    first, second = pair_index(num_classes_from_pairs(pair_logits.shape[1]), device=pair_logits.device)
    positive = labels > 0
    target = positive[:, first] & positive[:, second]
    prob_pos = torch.sigmoid(pair_logits)
    prob_neg = 1 - prob_pos
    if clip > 0:
        prob_neg = (prob_neg + clip).clamp(max=1)
    prob = torch.where(target, prob_pos, prob_neg)
    gamma = torch.where(target, gamma_pos, gamma_neg).to(prob.dtype)
    loss = -torch.log(prob.clamp(min=eps)) * torch.pow(1 - prob, gamma)
    if not ignore_unknown_pairs:
        return loss.mean()
    known = labels != 0
    return _masked_mean(loss, known[:, first] & known[:, second])


def _keep_random_and_hardest(values: Tensor, count: int, generator: torch.Generator | None) -> Tensor:
    """Up to ``2·count`` random entries plus the ``count`` largest (overlap allowed, as published)."""
    if values.numel() == 0:
        return values
    perm = torch.randperm(values.numel(), generator=generator)[: 2 * count].to(values.device)
    hardest = torch.topk(values, min(count, values.numel())).values
    return torch.cat([values[perm], hardest])


def instance_contrastive_loss(semantic: Tensor, labels: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Instance-level contrastive loss over image pairs ``a<b`` of the batch, for every class.

    With ``d = cos(f_ac, f_bc)``: known pos–pos pairs give ``1 − d``, pos–neg and neg–neg pairs ``1 + d``,
    pairs with an unknown label are ignored. The terms of all classes are pooled (pair-major, then class)
    and ``n_pp`` counts the pos–pos terms of the whole batch. If ``n_pp > 0`` the neg–neg terms and then
    the pos–neg terms are each cut to ``2·n_pp`` random terms (``torch.randperm`` on the CPU
    ``generator``, global RNG if None) plus the ``n_pp`` hardest. Returns the mean of all kept terms.
    """
    labels = _on(labels, semantic)
    batch = semantic.shape[0]
    first, second = pair_index(batch, device=semantic.device)
    unit = semantic / semantic.norm(dim=2, keepdim=True).clamp_min(COSINE_EPS)
    per_class = unit.transpose(0, 1)  # C×B×D
    gram = torch.bmm(per_class, per_class.transpose(1, 2))  # C×B×B
    cosine = gram[:, first, second].t()  # pairs×C
    la, lb = labels[first], labels[second]
    pos_pos = (la > 0) & (lb > 0)
    neg_neg = (la < 0) & (lb < 0)
    pos_neg = ((la > 0) & (lb < 0)) | ((la < 0) & (lb > 0))
    pp_terms = (1 - cosine)[pos_pos]
    nn_terms = (1 + cosine)[neg_neg]
    pn_terms = (1 + cosine)[pos_neg]
    n_pp = pp_terms.numel()
    if n_pp > 0:
        nn_terms = _keep_random_and_hardest(nn_terms, n_pp, generator)
        pn_terms = _keep_random_and_hardest(pn_terms, n_pp, generator)
    terms = torch.cat([pp_terms, pn_terms, nn_terms])
    if terms.numel() == 0:
        return semantic.sum() * 0
    return terms.mean()


def prototype_loss(semantic: Tensor, labels: Tensor, prototypes: Prototypes, published_sign: bool = False) -> Tensor:
    """Prototype-level loss on the mean cosine ``d̄`` of each feature to its class prototypes.

    Default: ``1 − d̄`` for known positives (pulled towards their prototypes), ``1 + d̄`` for known
    negatives, unknown entries and classes without prototypes ignored; mean over the counted entries.
    ``published_sign=True`` reproduces the published ``d̄·y + 1`` averaged over all ``B×C`` entries
    (which pushes positives away), with ``d̄ = 0`` for classes without prototypes.
    """
    labels = _on(labels, semantic)
    similarity, available = prototype_similarity(semantic, prototypes)
    if published_sign:
        return (similarity * labels.to(similarity.dtype) + 1).mean()
    positive = (labels > 0) & available
    negative = (labels < 0) & available
    loss = torch.where(positive, 1 - similarity, 1 + similarity)
    return _masked_mean(loss, positive | negative)
