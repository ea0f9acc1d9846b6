"""One interface for every method: its heads, its loss and its pseudo-label policy.

The engine calls ``training_loss`` each step and the epoch hooks; it knows nothing method-specific.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from hst.engine.config import MethodConfig
from hst.losses import partial_bce

if TYPE_CHECKING:
    from hst.models.network import NetworkOutput


@dataclass
class StepContext:
    epoch: int
    batch_index: int
    batches_per_epoch: int
    indices: torch.Tensor
    """Dataset rows of the batch (memory banks and per-image state are keyed by them)."""
    full_labels: torch.Tensor | None = None
    """Ground truth of the batch, used only to log pseudo-label precision, never for training."""

    @property
    def ramp(self) -> float:
        return self.batch_index / max(self.batches_per_epoch, 1) if self.epoch == 0 else 1.0


@dataclass
class LossOutput:
    loss: torch.Tensor
    logs: dict[str, float] = field(default_factory=dict)


FeatureSource = Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]
"""Yields (dataset rows, semantic features B×C×D, training labels) over the training set, no grad."""


class Method(nn.Module):
    """Base class; subclasses own their extra heads and parameters as submodules."""

    name: ClassVar[str] = "base"
    needs_semantic: ClassVar[bool] = False

    def __init__(self, config: MethodConfig, num_classes: int, feature_dim: int, num_train: int) -> None:
        super().__init__()
        self.config = config
        self.num_classes = num_classes
        self.feature_dim = feature_dim
        self.num_train = num_train

    def training_loss(self, output: NetworkOutput, labels: torch.Tensor, ctx: StepContext) -> LossOutput:
        raise NotImplementedError

    def on_train_epoch_start(self, epoch: int, features: FeatureSource) -> dict[str, float]:
        """Per-epoch work before training (e.g. prototypes); returns values to log."""
        return {}

    def on_train_epoch_end(self, epoch: int) -> dict[str, float]:
        """Per-epoch bookkeeping after training (e.g. threshold schedules); returns values to log."""
        return {}

    def threshold_parameters(self) -> list[nn.Parameter]:
        """Learnable thresholds (DTL); the engine may give them their own optimizer group."""
        return []

    def extra_state(self) -> dict[str, Any]:
        """Non-parameter state to checkpoint (prototypes, memory banks, schedules)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass


class PartialBCE(Method):
    """SARL trained on the known labels only (the SSGRL baseline of the papers)."""

    name = "partial_bce"

    def training_loss(self, output: NetworkOutput, labels: torch.Tensor, ctx: StepContext) -> LossOutput:
        loss = partial_bce(output.logits, labels)
        return LossOutput(loss, {"bce": float(loss.detach())})


class AssumeNegative(Method):
    """Unknown labels treated as negatives (the naive baseline)."""

    name = "assume_negative"

    def training_loss(self, output: NetworkOutput, labels: torch.Tensor, ctx: StepContext) -> LossOutput:
        filled = torch.where(labels == 0, torch.full_like(labels, -1), labels)
        loss = partial_bce(output.logits, filled)
        return LossOutput(loss, {"bce": float(loss.detach())})
