"""Semantic-aware representation learning (SARL): semantic decoupling, gated GNN, per-class head.

Shapes: feature map ``B×D×H×W``, label embeddings ``C×E``, adjacency ``C×C``; semantic features ``B×C×D``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SemanticDecoupling(nn.Module):
    """Label-embedding-guided attention over locations: one ``D``-dim feature per class.

    ``e[b,c,p] = fc4(fc3(tanh(fc1(x[b,p]) ⊙ fc2(emb[c]))))``, softmax over the ``H·W`` locations ``p``,
    ``f[b,c] = Σ_p a[b,c,p] x[b,p]``. Parameter names and shapes follow the published layer
    (fc1 ``D→hidden`` and fc2 ``E→hidden`` without bias, fc3 ``hidden→hidden``, fc4 ``hidden→1``).
    """

    def __init__(self, feature_dim: int, embed_dim: int, hidden_dim: int = 512) -> None:
        super().__init__()
        self.fc1 = nn.Linear(feature_dim, hidden_dim, bias=False)
        self.fc2 = nn.Linear(embed_dim, hidden_dim, bias=False)
        self.fc3 = nn.Linear(hidden_dim, hidden_dim)
        self.fc4 = nn.Linear(hidden_dim, 1)

    def forward(self, feature_map: Tensor, embeddings: Tensor) -> tuple[Tensor, Tensor]:
        """Return (semantic features ``B×C×D``, attention ``B×C×HW``)."""
        x = feature_map.flatten(2).transpose(1, 2)  # B×HW×D
        img = self.fc1(x)  # B×HW×hidden
        word = self.fc2(embeddings)  # C×hidden
        # fc3 and fc4 are affine with nothing in between, so they fold into one vector and one scalar
        fold_w = self.fc4.weight[0] @ self.fc3.weight  # hidden
        fold_b = self.fc4.weight[0] @ self.fc3.bias + self.fc4.bias[0]
        gated = torch.tanh(img.unsqueeze(2) * word)  # B×HW×C×hidden
        energy = torch.matmul(gated, fold_w) + fold_b  # B×HW×C
        attention = torch.softmax(energy.transpose(1, 2), dim=2)  # B×C×HW
        return torch.bmm(attention, x), attention


class GatedGraphNetwork(nn.Module):
    """Gated graph neural network over class nodes, in-matrix ``A`` and out-matrix ``Aᵀ``.

    ``a = [A h ; Aᵀ h]``; ``z = σ(W_z a + U_z h)``, ``r = σ(W_r a + U_r h)``,
    ``ĥ = tanh(W_h a + U_h (r ⊙ h))``, ``h ← (1 − z) h + z ĥ``, repeated ``time_steps`` times.
    The reset gate has its own ``U_r``. Published names: ``fc_1_w/u`` = ``w_update/u_update``,
    ``fc_2_w/u`` = ``w_reset/u_reset``, ``fc_3_w/u`` = ``w_cand/u_cand``.
    """

    def __init__(self, dim: int, time_steps: int = 3) -> None:
        super().__init__()
        self.time_steps = time_steps
        self.w_update, self.u_update = nn.Linear(2 * dim, dim), nn.Linear(dim, dim)
        self.w_reset, self.u_reset = nn.Linear(2 * dim, dim), nn.Linear(dim, dim)
        self.w_cand, self.u_cand = nn.Linear(2 * dim, dim), nn.Linear(dim, dim)

    def forward(self, nodes: Tensor, adjacency: Tensor) -> Tensor:
        """Propagate ``B×C×D`` node states with a ``C×C`` adjacency; returns ``B×C×D``."""
        num = adjacency.shape[0]
        both = torch.cat([adjacency, adjacency.t()], dim=0).to(nodes.dtype)  # 2C×C
        # the three message maps share their input, so one matmul serves all of them
        w_all = torch.cat([self.w_update.weight, self.w_reset.weight, self.w_cand.weight], dim=0)
        b_all = torch.cat([self.w_update.bias, self.w_reset.bias, self.w_cand.bias], dim=0)
        u_zr = torch.cat([self.u_update.weight, self.u_reset.weight], dim=0)
        u_zr_b = torch.cat([self.u_update.bias, self.u_reset.bias], dim=0)
        h = nodes
        for _ in range(self.time_steps):
            msg = torch.matmul(both, h)  # B×2C×D
            a = torch.cat([msg[:, :num], msg[:, num:]], dim=2)  # B×C×2D
            wa_z, wa_r, wa_h = F.linear(a, w_all, b_all).chunk(3, dim=2)
            uh_z, uh_r = F.linear(h, u_zr, u_zr_b).chunk(2, dim=2)
            z = torch.sigmoid(wa_z + uh_z)
            r = torch.sigmoid(wa_r + uh_r)
            cand = torch.tanh(wa_h + self.u_cand(r * h))
            h = torch.lerp(h, cand, z)
        return h


def cooccurrence_adjacency(labels: np.ndarray) -> Tensor:
    """Row-normalised co-occurrence of known positives from partial labels (``int8`` +1/−1/0).

    ``A[i, j] = #(i and j known-positive) / #(i known-positive)``, diagonal 1. A class with no known
    positive gets a zero row (no message from other classes) with diagonal 1, so no NaN appears.
    Returns ``float32`` ``C×C``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D (images × classes), got shape {labels.shape}")
    pos = (labels == 1).astype(np.float64)
    count = pos.T @ pos
    diag = np.diag(count).copy()
    adjacency = np.divide(count, diag[:, None], out=np.zeros_like(count), where=diag[:, None] > 0)
    np.fill_diagonal(adjacency, 1.0)
    return torch.from_numpy(adjacency.astype(np.float32))


class ElementWiseLinear(nn.Module):
    """One weight vector and bias per output: ``y[..., c] = w_c · x[..., c, :] + b_c``."""

    def __init__(self, num_outputs: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_outputs, dim))
        self.bias = nn.Parameter(torch.empty(num_outputs))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.weight.shape[1])
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        return torch.einsum("...cd,cd->...c", x, self.weight) + self.bias


class SARLOutput(NamedTuple):
    """SARL forward result: logits ``B×C``, pre-GNN semantic features ``B×C×D``, attention ``B×C×HW``."""

    logits: Tensor
    semantic: Tensor
    attention: Tensor


class SARL(nn.Module):
    """Semantic decoupling → gated GNN → ``tanh(W_o [h_T; f] + b)`` → per-class logits.

    ``embeddings`` (``C×E``) and ``adjacency`` (``C×C``) are stored as float32 buffers. With
    ``use_gnn=False`` the GNN is skipped and the head is ``tanh(W_o f + b)`` (``W_o``: ``D→output_dim``).
    """

    def __init__(
        self,
        embeddings: Tensor | np.ndarray,
        adjacency: Tensor | np.ndarray,
        feature_dim: int = 1024,
        hidden_dim: int = 512,
        output_dim: int = 1024,
        time_steps: int = 3,
        use_gnn: bool = True,
    ) -> None:
        super().__init__()
        emb = torch.as_tensor(embeddings, dtype=torch.float32)
        adj = torch.as_tensor(adjacency, dtype=torch.float32)
        num_classes = emb.shape[0]
        if adj.shape != (num_classes, num_classes):
            raise ValueError(f"adjacency shape {tuple(adj.shape)} does not match {num_classes} classes")
        self.num_classes = num_classes
        self.use_gnn = use_gnn
        self.register_buffer("embeddings", emb.clone())
        self.register_buffer("adjacency", adj.clone())
        self.decoupling = SemanticDecoupling(feature_dim, emb.shape[1], hidden_dim)
        self.gnn = GatedGraphNetwork(feature_dim, time_steps) if use_gnn else None
        self.fc = nn.Linear((2 if use_gnn else 1) * feature_dim, output_dim)
        self.classifier = ElementWiseLinear(num_classes, output_dim)

    def forward(self, feature_map: Tensor) -> SARLOutput:
        semantic, attention = self.decoupling(feature_map, self.embeddings)
        if self.gnn is not None:
            nodes = self.gnn(semantic, self.adjacency)
            joint = torch.cat([nodes, semantic], dim=2)
        else:
            joint = semantic
        logits = self.classifier(torch.tanh(self.fc(joint)))
        return SARLOutput(logits=logits, semantic=semantic, attention=attention)
