"""SARL fast paths against the plain published-style formulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import reference_hst as ref
from hst.models.sarl import (
    SARL,
    ElementWiseLinear,
    GatedGraphNetwork,
    SemanticDecoupling,
    cooccurrence_adjacency,
)


def _check_against_reference(fast_out: list[torch.Tensor], ref_out: list[torch.Tensor], inputs: list) -> None:
    for fast, slow in zip(fast_out, ref_out, strict=True):
        ref.assert_close_rel(fast, slow)
    ref.assert_grads_close(ref.grads(fast_out, inputs), ref.grads(ref_out, inputs))


def test_semantic_decoupling_matches_reference() -> None:
    torch.manual_seed(0)
    module = SemanticDecoupling(feature_dim=24, embed_dim=10, hidden_dim=16)
    fmap = torch.randn(3, 24, 4, 5, requires_grad=True)
    emb = torch.randn(6, 10)
    feats, att = module(fmap, emb)
    assert feats.shape == (3, 6, 24) and att.shape == (3, 6, 20)
    torch.testing.assert_close(att.sum(2), torch.ones(3, 6))
    ref_feats, ref_att = ref.semantic_decoupling(module, fmap.double(), emb.double())
    _check_against_reference([feats, att], [ref_feats, ref_att], [*module.parameters(), fmap])


def test_ggnn_matches_reference_with_asymmetric_adjacency() -> None:
    torch.manual_seed(1)
    module = GatedGraphNetwork(dim=12, time_steps=3)
    nodes = torch.randn(2, 5, 12, requires_grad=True)
    adjacency = torch.rand(5, 5)
    adjacency[0, 3] = 0.0  # asymmetric, so in/out orientation is visible
    out = module(nodes, adjacency)
    expected = ref.gated_graph(module, nodes.double(), adjacency.double())
    _check_against_reference([out], [expected], [*module.parameters(), nodes])
    swapped = module(nodes, adjacency.t())
    assert not torch.allclose(out, swapped, atol=1e-4)


@pytest.mark.parametrize("use_gnn", [True, False])
def test_sarl_matches_reference(use_gnn: bool) -> None:
    torch.manual_seed(2)
    emb = torch.randn(5, 7)
    adjacency = torch.rand(5, 5)
    model = SARL(emb, adjacency, feature_dim=16, hidden_dim=8, output_dim=12, use_gnn=use_gnn)
    fmap = torch.randn(2, 16, 3, 3, requires_grad=True)
    out = model(fmap)
    assert out.logits.shape == (2, 5) and out.semantic.shape == (2, 5, 16) and out.attention.shape == (2, 5, 9)
    ref_logits, ref_semantic = ref.sarl(model, fmap.double())
    _check_against_reference([out.logits, out.semantic], [ref_logits, ref_semantic], [*model.parameters(), fmap])


def test_sarl_buffers_and_parameters() -> None:
    model = SARL(np.ones((4, 3)), np.eye(4), feature_dim=8, hidden_dim=4, output_dim=6)
    state = model.state_dict()
    assert state["embeddings"].dtype == torch.float32 and state["adjacency"].shape == (4, 4)
    assert "embeddings" not in dict(model.named_parameters())
    assert state["classifier.weight"].shape == (4, 6) and state["fc.weight"].shape == (6, 16)
    with pytest.raises(ValueError, match="adjacency"):
        SARL(np.ones((4, 3)), np.eye(3))


def test_element_wise_linear() -> None:
    torch.manual_seed(3)
    layer = ElementWiseLinear(7, 400)
    bound = 1 / math.sqrt(400)
    assert layer.weight.abs().max() <= bound and layer.bias.abs().max() <= bound
    assert layer.weight.abs().max() > 0.9 * bound  # uniform over the whole range, not a narrower one
    x = torch.randn(3, 7, 400)
    torch.testing.assert_close(layer(x), (x * layer.weight).sum(2) + layer.bias, rtol=1e-5, atol=1e-5)


def test_cooccurrence_adjacency_matches_reference_and_is_nan_safe() -> None:
    rng = np.random.default_rng(0)
    labels = rng.choice(np.array([-1, 0, 1], dtype=np.int8), size=(30, 6))
    labels[:, 4] = rng.choice(np.array([-1, 0], dtype=np.int8), size=30)  # class 4: no known positive
    adjacency = cooccurrence_adjacency(labels)
    assert adjacency.dtype == torch.float32 and torch.isfinite(adjacency).all()
    torch.testing.assert_close(adjacency.double(), ref.cooccurrence_adjacency(labels.tolist()), rtol=1e-6, atol=1e-7)
    assert torch.equal(adjacency[4], torch.eye(6)[4])
    assert torch.equal(adjacency.diagonal(), torch.ones(6))


def test_cooccurrence_adjacency_hand_example() -> None:
    labels = np.array([[1, 1, 0], [1, -1, 1], [1, 1, -1]], dtype=np.int8)
    expected = torch.tensor([[1.0, 2 / 3, 1 / 3], [1.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    torch.testing.assert_close(cooccurrence_adjacency(labels), expected)
