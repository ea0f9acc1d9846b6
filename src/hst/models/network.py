"""The full network: backbone → feature reducer → SARL (semantic features, GNN, per-class logits)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from hst.engine.config import ModelConfig
from hst.models.backbone import Backbone, FeatureReducer, create_backbone
from hst.models.embeddings import load_label_embeddings
from hst.models.sarl import SARL, cooccurrence_adjacency


class NetworkOutput(NamedTuple):
    logits: torch.Tensor
    """B×C class logits (the prediction)."""
    semantic: torch.Tensor
    """B×C×D pre-GNN category features (what IST and CST work on)."""


class PartialLabelNetwork(nn.Module):
    def __init__(self, backbone: Backbone, reducer: FeatureReducer, sarl: SARL, channels_last: bool = False) -> None:
        super().__init__()
        self.channels_last = channels_last
        if channels_last:
            backbone.to(memory_format=torch.channels_last)
        self.backbone = backbone
        self.reducer = reducer
        self.sarl = sarl
        self.feature_dim = reducer.out_channels

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.backbone(images)

    def head(self, feature_map: torch.Tensor) -> NetworkOutput:
        """Everything after the backbone (used directly when backbone features are cached)."""
        out = self.sarl(self.reducer(feature_map))
        return NetworkOutput(out.logits, out.semantic)

    def forward(self, images: torch.Tensor) -> NetworkOutput:
        return self.head(self.feature_map(images))


def build_network(
    config: ModelConfig,
    class_names: list[str],
    train_labels: np.ndarray,
    embeddings: np.ndarray | None = None,
) -> PartialLabelNetwork:
    """Build the network; the GNN graph comes from the known positives of the training labels only."""
    backbone = create_backbone(config.backbone, config.weights, config.trainable)
    reducer = FeatureReducer(backbone.num_features, config.feature_dim, config.avg_pool_2x2)
    if embeddings is None:
        embeddings = load_label_embeddings(class_names, config.embeddings)
    sarl = SARL(
        embeddings=embeddings,
        adjacency=cooccurrence_adjacency(train_labels),
        feature_dim=config.feature_dim,
        hidden_dim=config.hidden_dim,
        output_dim=config.feature_dim,
        time_steps=config.gnn_steps,
        use_gnn=config.use_gnn,
    )
    return PartialLabelNetwork(backbone, reducer, sarl, config.channels_last)
