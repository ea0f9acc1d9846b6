"""The full network: backbone → feature reducer → SARL (semantic features, GNN, per-class logits)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from hst.config import ModelConfig
from hst.models.backbone import Backbone, FeatureReducer, create_backbone
from hst.models.embeddings import load_label_embeddings
from hst.models.sarl import SARL, cooccurrence_adjacency


class NetworkOutput(NamedTuple):
    logits: torch.Tensor
    """B×C class logits (the prediction)."""
    semantic: torch.Tensor
    """B×C×D pre-GNN category features (what IST and CST work on)."""
    pooled: torch.Tensor | None = None
    """B×F globally average-pooled backbone features (image-level CST neighbours work on them)."""


class LinearHead(nn.Module):
    """Global average pool (+ per-dimension standardisation) + one linear layer: the linear probe.

    Used alone as the frozen-feature baseline, and as the residual path of the SARL head.
    """

    def __init__(self, in_channels: int, num_classes: int, standardize: bool = False) -> None:
        super().__init__()
        # BatchNorm without affine parameters standardises with running statistics at evaluation time.
        self.norm = nn.BatchNorm1d(in_channels, affine=False) if standardize else None
        self.classifier = nn.Linear(in_channels, num_classes)

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        return self.classify(feature_map.float().mean(dim=(2, 3)))

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        """The probe on already pooled ``B×F`` features."""
        if self.norm is not None:
            pooled = self.norm(pooled)
        return self.classifier(pooled)


def prior_logits(prior: np.ndarray) -> torch.Tensor:
    """Logits of class priors, clipped to [1e-4, 1 − 1e-4] so that no bias starts infinite."""
    p = np.clip(np.asarray(prior, dtype=np.float64), 1e-4, 1 - 1e-4)
    return torch.from_numpy(np.log(p / (1 - p))).float()


class PartialLabelNetwork(nn.Module):
    """Backbone → optional feature reducer → head (SARL: one semantic vector and one logit per class; linear:
    global pooling and a linear classifier). :meth:`forward` gives a :class:`NetworkOutput`: the logits and
    the per-class semantic features the methods transfer between labels (empty for the linear head);
    :meth:`head` runs the same from a backbone feature map (training from cached features)."""

    def __init__(
        self,
        backbone: Backbone,
        reducer: FeatureReducer | None,
        sarl: SARL | LinearHead,
        channels_last: bool = False,
        linear: LinearHead | None = None,
    ) -> None:
        super().__init__()
        self.channels_last = channels_last
        if channels_last:
            backbone.to(memory_format=torch.channels_last)
        self.backbone = backbone
        self.reducer = reducer
        self.sarl = sarl
        self.linear = linear
        """The linear-probe residual of the SARL head (None: the published head)."""
        self.feature_dim = reducer.out_channels if reducer is not None else backbone.num_features

    def init_class_bias(self, prior: np.ndarray) -> None:
        """Start the class biases at the logit of ``prior`` (C), so that the head need not learn the label
        frequency through saturated units; the other bias of a residual pair starts at 0."""
        target = prior_logits(prior)
        with torch.no_grad():
            if isinstance(self.sarl, LinearHead):
                self.sarl.classifier.bias.copy_(target)
                return
            if self.linear is not None:
                self.linear.classifier.bias.copy_(target)
                self.sarl.classifier.bias.zero_()
            else:
                self.sarl.classifier.bias.copy_(target)

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.backbone(images)

    def head(self, feature_map: torch.Tensor, pooled: bool = False) -> NetworkOutput:
        """Everything after the backbone (used directly when backbone features are cached).

        ``pooled``: the map already went through the reducer's 2×2 average pool (a pooled feature cache).
        """
        # Averaging a 2×2-pooled map equals averaging the full map, so either input gives the same features.
        image_features = feature_map.float().mean(dim=(2, 3))
        if isinstance(self.sarl, LinearHead):
            logits = self.sarl.classify(image_features)
            empty = logits.new_zeros(logits.shape[0], logits.shape[1], 0)
            return NetworkOutput(logits, empty, image_features)
        assert self.reducer is not None
        out = self.sarl(self.reducer(feature_map, pooled=pooled))
        logits = out.logits
        if self.linear is not None:
            logits = logits + self.linear.classify(image_features)
        return NetworkOutput(logits, out.semantic, image_features)

    def forward(self, images: torch.Tensor) -> NetworkOutput:
        return self.head(self.feature_map(images))

    def from_front(self, front_maps: torch.Tensor) -> NetworkOutput:
        """The network from the output of the backbone's frozen front (training from a front cache)."""
        if self.channels_last:
            front_maps = front_maps.contiguous(memory_format=torch.channels_last)
        return self.head(self.backbone.forward_rest(front_maps))


def build_network(
    config: ModelConfig,
    class_names: list[str],
    train_labels: np.ndarray,
    embeddings: np.ndarray | None = None,
) -> PartialLabelNetwork:
    """Build the network; the GNN graph comes from the known positives of the training labels only."""
    backbone = create_backbone(config.backbone, config.weights, config.trainable)
    if config.head == "linear":
        head = LinearHead(backbone.num_features, len(class_names), config.standardize_pooled)
        return PartialLabelNetwork(backbone, None, head, config.channels_last)
    if config.head != "sarl":
        raise ValueError(f"model.head must be 'sarl' or 'linear', got {config.head!r}")
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
    linear = (
        LinearHead(backbone.num_features, len(class_names), config.standardize_pooled)
        if config.linear_residual
        else None
    )
    return PartialLabelNetwork(backbone, reducer, sarl, config.channels_last, linear)
