"""Plain reference formulations of the HST heads and losses, written the way the published code computes.

Used only by tests. Each function takes the fast module (for its parameters) or plain tensors and
recomputes the result step by step, mostly with Python loops. Parameters are cast to the dtype of the
input, so a float64 input gives a float64 reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

EPS = 1e-9


def _lin(layer: nn.Linear, x: Tensor) -> Tensor:
    bias = None if layer.bias is None else layer.bias.to(x.dtype)
    return F.linear(x, layer.weight.to(x.dtype), bias)


def published_pairs(num: int) -> tuple[list[int], list[int]]:
    """Pair order of the published code: i ascending, then j = i+1..C-1."""
    first: list[int] = []
    second: list[int] = []
    for i in range(num - 1):
        first += [i] * (num - i - 1)
        second += list(range(i + 1, num))
    return first, second


def semantic_decoupling(module: nn.Module, feature_map: Tensor, embeddings: Tensor) -> tuple[Tensor, Tensor]:
    """Per class: attention energies through fc1..fc4 unfolded, softmax over locations, weighted sum."""
    batch, dim, height, width = feature_map.shape
    pixels = feature_map.permute(0, 2, 3, 1).reshape(batch, height * width, dim)
    img = _lin(module.fc1, pixels)  # B×HW×hidden
    word = _lin(module.fc2, embeddings.to(feature_map.dtype))
    feats, atts = [], []
    for c in range(embeddings.shape[0]):
        hidden = _lin(module.fc3, torch.tanh(img * word[c]))
        energy = _lin(module.fc4, hidden)[..., 0]  # B×HW
        att = torch.softmax(energy, dim=1)
        atts.append(att)
        feats.append((pixels * att.unsqueeze(2)).sum(1))
    return torch.stack(feats, 1), torch.stack(atts, 1)


def gated_graph(module: nn.Module, nodes: Tensor, adjacency: Tensor) -> Tensor:
    """GGNN steps with separate linear maps, in-matrix A and out-matrix Aᵀ as in the published code."""
    in_m = adjacency.to(nodes.dtype).expand(nodes.shape[0], -1, -1)
    out_m = adjacency.t().to(nodes.dtype).expand(nodes.shape[0], -1, -1)
    h = nodes
    for _ in range(module.time_steps):
        a = torch.cat([torch.bmm(in_m, h), torch.bmm(out_m, h)], 2)
        z = torch.sigmoid(_lin(module.w_update, a) + _lin(module.u_update, h))
        r = torch.sigmoid(_lin(module.w_reset, a) + _lin(module.u_reset, h))
        cand = torch.tanh(_lin(module.w_cand, a) + _lin(module.u_cand, r * h))
        h = (1 - z) * h + z * cand
    return h


def element_wise(layer: nn.Module, x: Tensor) -> Tensor:
    return (x * layer.weight.to(x.dtype)).sum(2) + layer.bias.to(x.dtype)


def sarl(model: nn.Module, feature_map: Tensor) -> tuple[Tensor, Tensor]:
    """(logits, semantic) of the published SARL forward."""
    semantic, _ = semantic_decoupling(model.decoupling, feature_map, model.embeddings)
    if model.use_gnn:
        nodes = gated_graph(model.gnn, semantic, model.adjacency)
        joint = torch.cat([nodes, semantic], 2)
    else:
        joint = semantic
    return element_wise(model.classifier, torch.tanh(_lin(model.fc, joint))), semantic


def ist_head(head: nn.Module, semantic: Tensor) -> Tensor:
    """Published IST: concat per pair → fc2 → ReLU → fc3 → one weight vector per pair."""
    first, second = published_pairs(head.num_classes)
    g = _lin(head.fc1, semantic)
    pairs = torch.cat([g[:, first], g[:, second]], 2)
    out = _lin(head.fc3, torch.relu(_lin(head.fc2, pairs)))
    return element_wise(head.pair_classifier, out)


def cooccurrence_adjacency(labels: list[list[int]]) -> Tensor:
    num = len(labels[0])
    count = torch.zeros(num, num, dtype=torch.float64)
    for row in labels:
        for i in range(num):
            for j in range(num):
                if row[i] == 1 and row[j] == 1:
                    count[i, j] += 1
    adjacency = torch.zeros(num, num, dtype=torch.float64)
    for i in range(num):
        for j in range(num):
            if count[i, i] > 0:
                adjacency[i, j] = count[i, j] / count[i, i]
        adjacency[i, i] = 1.0
    return adjacency


def cooccurrence_matrix(pair_logits: Tensor, num: int) -> Tensor:
    """Published loop over classes filling rows and columns of the symmetric matrix."""
    prob = torch.sigmoid(pair_logits)
    batch = prob.shape[0]
    matrix = torch.zeros(batch, num, num, dtype=prob.dtype)
    start = end = 0
    for i in range(num):
        matrix[:, i, i] = 1
        start, end = end, end + num - i - 1
        matrix[:, i, i + 1 :] = prob[:, start:end]
        matrix[:, i + 1 :, i] = prob[:, start:end]
    return matrix


def intra_scores(pair_logits: Tensor, labels: Tensor, num: int) -> Tensor:
    matrix = cooccurrence_matrix(pair_logits, num)
    rows = []
    for b in range(labels.shape[0]):
        positives = [j for j in range(num) if labels[b, j] == 1]
        row = [sum((matrix[b, i, j] for j in positives), torch.zeros((), dtype=matrix.dtype)) for i in range(num)]
        rows.append(torch.stack(row) / max(len(positives), 1))
    return torch.stack(rows)


def inter_scores(semantic: Tensor, centers: Tensor, valid: Tensor) -> Tensor:
    """Mean cosine to valid prototypes per (image, class); -inf where a class has none."""
    batch, num, _ = semantic.shape
    out = torch.empty(batch, num, dtype=semantic.dtype)
    for b in range(batch):
        for c in range(num):
            sims = [
                F.cosine_similarity(semantic[b, c], centers[c, k].to(semantic.dtype), dim=0, eps=EPS)
                for k in range(centers.shape[1])
                if valid[c, k]
            ]
            out[b, c] = torch.stack(sims).mean() if sims else float("-inf")
    return out


def partial_bce(logits: Tensor, labels: Tensor) -> Tensor:
    """Published BCELoss(reduce=True, size_average=True) with margin 0."""
    target = labels.to(logits.dtype)
    pos_mask = (target > 0).to(logits.dtype)
    neg_mask = (target < 0).to(logits.dtype)
    pos = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    neg = F.binary_cross_entropy_with_logits(-logits, -target, reduction="none")
    loss = pos_mask * pos + neg_mask * neg
    known = (pos_mask > 0) | (neg_mask > 0)
    return loss[known].mean() if known.any() else loss.mean()


def intra_asymmetric(
    pair_logits: Tensor,
    labels: Tensor,
    gamma_neg: float = 2,
    gamma_pos: float = 1,
    clip: float = 0.05,
    eps: float = 1e-8,
    ignore_unknown_pairs: bool = False,
) -> Tensor:
    """Element by element ASL over pairs; pair target 1 iff both labels are known positive."""
    batch, num_pairs = pair_logits.shape
    num = labels.shape[1]
    first, second = published_pairs(num)
    terms = []
    for b in range(batch):
        for p in range(num_pairs):
            yi, yj = int(labels[b, first[p]]), int(labels[b, second[p]])
            if ignore_unknown_pairs and (yi == 0 or yj == 0):
                continue
            prob = torch.sigmoid(pair_logits[b, p])
            if yi > 0 and yj > 0:
                terms.append(-torch.log(prob.clamp(min=eps)) * (1 - prob) ** gamma_pos)
            else:
                neg = (1 - prob + clip).clamp(max=1)
                terms.append(-torch.log(neg.clamp(min=eps)) * (1 - neg) ** gamma_neg)
    if not terms:
        return pair_logits.sum() * 0
    return torch.stack(terms).mean()


def instance_contrastive(semantic: Tensor, labels: Tensor, generator: torch.Generator | None) -> Tensor:
    """Published InstanceContrastiveLoss: pooled over classes, pair-major order, sampling by randperm."""
    batch, num, _ = semantic.shape
    first, second = published_pairs(batch)
    pp, pn, nn_ = [], [], []
    for p in range(len(first)):
        a, b = first[p], second[p]
        for c in range(num):
            ya, yb = int(labels[a, c]), int(labels[b, c])
            if ya == 0 or yb == 0:
                continue
            d = F.cosine_similarity(semantic[a, c], semantic[b, c], dim=0, eps=EPS)
            if ya == 1 and yb == 1:
                pp.append(1 - d)
            elif ya == -1 and yb == -1:
                nn_.append(1 + d)
            else:
                pn.append(1 + d)
    empty = semantic.new_zeros(0)
    pp_t = torch.stack(pp) if pp else empty
    pn_t = torch.stack(pn) if pn else empty
    nn_t = torch.stack(nn_) if nn_ else empty
    n_pp = len(pp)
    if n_pp:
        if len(nn_):
            keep = torch.randperm(len(nn_), generator=generator)[: 2 * n_pp]
            nn_t = torch.cat([nn_t[keep], torch.sort(nn_t, descending=True)[0][:n_pp]])
        if len(pn):
            keep = torch.randperm(len(pn), generator=generator)[: 2 * n_pp]
            pn_t = torch.cat([pn_t[keep], torch.sort(pn_t, descending=True)[0][:n_pp]])
    terms = torch.cat([pp_t, pn_t, nn_t])
    return terms.mean() if terms.numel() else semantic.sum() * 0


def prototype_loss(semantic: Tensor, labels: Tensor, centers: Tensor, valid: Tensor, published_sign: bool) -> Tensor:
    """Published: mean over all entries of d̄·y + 1. Fixed: 1 − d̄ / 1 + d̄ over known entries."""
    batch, num, _ = semantic.shape
    terms = []
    for b in range(batch):
        for c in range(num):
            sims = [
                F.cosine_similarity(semantic[b, c], centers[c, k].to(semantic.dtype), dim=0, eps=EPS)
                for k in range(centers.shape[1])
                if valid[c, k]
            ]
            mean = torch.stack(sims).mean() if sims else semantic.new_zeros(())
            y = int(labels[b, c])
            if published_sign:
                terms.append(mean * y + 1)
            elif sims and y == 1:
                terms.append(1 - mean)
            elif sims and y == -1:
                terms.append(1 + mean)
    return torch.stack(terms).mean() if terms else semantic.sum() * 0


def assert_close_rel(actual: Tensor, expected: Tensor, rtol: float = 1e-5, min_atol: float = 1e-7) -> None:
    """Elementwise relative tolerance, with an absolute floor of ``rtol`` times the largest expected value.

    ``min_atol`` covers tensors that are zero in exact arithmetic (e.g. gradients of biases that a softmax
    cancels), where float32 leaves rounding noise.
    """
    expected = expected.detach().double()
    floor = rtol * float(expected.abs().max()) if expected.numel() else 0.0
    torch.testing.assert_close(actual.detach().double(), expected, rtol=rtol, atol=max(floor, min_atol))


def grads(outputs: Tensor | list[Tensor], inputs: list[Tensor], seed: int = 0) -> list[Tensor]:
    """Gradients of a fixed random projection of ``outputs`` (the same projection for any dtype)."""
    generator = torch.Generator().manual_seed(seed)
    loss = 0
    for out in [outputs] if isinstance(outputs, Tensor) else outputs:
        weights = torch.randn(out.shape, generator=generator, dtype=torch.float64)
        loss = loss + (out * weights.to(out.dtype)).sum()
    found = torch.autograd.grad(loss, inputs, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for g, x in zip(found, inputs, strict=True)]


def assert_grads_close(actual: list[Tensor], expected: list[Tensor], rtol: float = 1e-5) -> None:
    """``assert_close_rel`` per tensor; the floor for exactly-zero gradients is ``0.1·rtol`` of the largest one."""
    scale = max(float(e.detach().abs().max()) for e in expected if e.numel())
    for got, want in zip(actual, expected, strict=True):
        assert_close_rel(got, want, rtol=rtol, min_atol=0.1 * rtol * scale)
