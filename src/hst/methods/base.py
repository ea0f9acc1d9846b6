"""One interface for every method: its heads, its loss and its pseudo-label policy.

The engine calls ``training_loss`` each step and the epoch hooks; it knows nothing method-specific.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from hst.config import MethodConfig
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


class FeatureBatch(NamedTuple):
    """One batch of a no-grad pass over a split (see :data:`FeatureSource`)."""

    indices: torch.Tensor
    """Dataset rows of the split."""
    logits: torch.Tensor
    """B×C class logits."""
    semantic: torch.Tensor
    """B×C×D pre-GNN semantic features."""
    labels: torch.Tensor
    """B×C labels a user has: partial training labels, or the validation split's (partial) labels."""
    full_labels: torch.Tensor | None
    """B×C ground truth where the dataset has it, for logging pseudo-label quality only; never for training."""
    pooled: torch.Tensor | None = None
    """B×F globally pooled backbone features (None where the network gives none)."""


FeatureSource = Callable[..., Iterator[FeatureBatch]]
"""``features(split="train")`` yields :class:`FeatureBatch` es over the training split (or ``"val"``), without
gradients, the network in evaluation mode.

Under data parallelism each process sees only its share of the rows; a method gathers what it needs
through its :class:`Collective`.
"""


@dataclass
class Evidence:
    """One pseudo-label evidence source of a trained method, for ``hst complete`` and ``hst review``.

    ``score(output, known)`` maps a network output and the known labels (B×C, +1/−1/0) to B×C scores (NaN: no
    evidence); an entry votes "present" when its score passes its class's threshold (``>`` when ``strict``).
    """

    name: str
    score: Callable[[NetworkOutput, torch.Tensor], torch.Tensor]
    thresholds: np.ndarray
    strict: bool = False

    def votes(self, scores: np.ndarray, classes: np.ndarray | int | None = None) -> np.ndarray:
        """Votes of ``scores`` (B×C, or entries of ``classes``); NaN never votes."""
        t = self.thresholds if classes is None else self.thresholds[classes]
        with np.errstate(invalid="ignore"):
            return np.asarray(scores > t if self.strict else scores >= t)


class Collective:
    """Cross-process operations a method may use; this base class is the single-process case (identities)."""

    @property
    def world_size(self) -> int:
        return 1

    @property
    def rank(self) -> int:
        return 0

    def gather_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every process's ``tensor`` concatenated along dim 0 in rank order (first dims may differ)."""
        return tensor

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        """Process ``src``'s ``tensor`` (same shape on every process)."""
        return tensor

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over processes."""
        return tensor


class TorchDistributed(Collective):
    """:class:`Collective` over the default ``torch.distributed`` process group.

    ``device`` is where tensors travel (the accelerator for NCCL, the CPU for gloo); results come back on
    the device of the input.
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)

    @property
    def world_size(self) -> int:
        return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1

    @property
    def rank(self) -> int:
        return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0

    def gather_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        world = self.world_size
        if world == 1:
            return tensor
        home, is_bool = tensor.device, tensor.dtype == torch.bool
        # Not every backend reduces or gathers bool tensors; bytes carry the same values.
        local = (tensor.to(torch.uint8) if is_bool else tensor).to(self.device).contiguous()
        size = torch.tensor([local.shape[0]], dtype=torch.long, device=self.device)
        sizes = [torch.zeros_like(size) for _ in range(world)]
        dist.all_gather(sizes, size)
        counts = [int(s.item()) for s in sizes]
        # all_gather needs equal shapes: pad every share to the longest one, then cut the padding off.
        padded = local.new_zeros((max(counts), *local.shape[1:]))
        padded[: local.shape[0]] = local
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
        out = torch.cat([part[:count] for part, count in zip(parts, counts, strict=True)]).to(home)
        return out.bool() if is_bool else out

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        if self.world_size == 1:
            return tensor
        home, is_bool = tensor.device, tensor.dtype == torch.bool
        local = (tensor.to(torch.uint8) if is_bool else tensor).to(self.device).contiguous().clone()
        dist.broadcast(local, src)
        out = local.to(home)
        return out.bool() if is_bool else out

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return tensor
        home = tensor.device
        local = tensor.to(self.device).contiguous().clone()
        dist.all_reduce(local, op=dist.ReduceOp.SUM)
        return local.to(home)


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
        self.collective: Collective = Collective()
        self.calibration_labels: np.ndarray | None = None
        """``num_train×C`` known entries chosen at random, by training row, where a person chose others
        (``data.calibration_labels``); None: every known entry was hidden at random."""
        """Set by the engine under data parallelism; methods gather cross-process state through it."""

    def training_loss(self, output: NetworkOutput, labels: torch.Tensor, ctx: StepContext) -> LossOutput:
        raise NotImplementedError

    def on_train_epoch_start(self, epoch: int, features: FeatureSource) -> dict[str, float]:
        """Per-epoch work before training (e.g. prototypes); returns values to log."""
        return {}

    def on_train_epoch_end(self, epoch: int) -> dict[str, float]:
        """Per-epoch bookkeeping after training (e.g. threshold schedules); returns values to log.

        Keys starting with ``epoch_`` are per-epoch sums over this process's batches; the engine sums
        them over processes.
        """
        return {}

    def threshold_parameters(self) -> list[nn.Parameter]:
        """Learnable thresholds (DTL); the engine may give them their own optimizer group."""
        return []

    def evidence(self, missing: set[str] = frozenset()) -> list[Evidence]:  # type: ignore[assignment]
        """The evidence sources this trained method can give for unknown labels (besides the classifier).

        ``missing``: parameter names a loaded checkpoint did not provide; sources needing them are left out.
        """
        return []

    def class_prior(self, labels: np.ndarray) -> np.ndarray:
        """Per-class positive rate of the targets this method trains on (for the initial class biases).

        Default: the positive rate of the known entries (unknown entries are not trained on, or become
        pseudo labels at about that rate); smoothed so that a class without known positives is not 0.
        """
        known = (labels != 0).sum(0)
        return ((labels > 0).sum(0) + 0.5) / (known + 1.0)

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

    def class_prior(self, labels: np.ndarray) -> np.ndarray:
        # Unknown entries are negatives here: the target rate is known positives over all entries.
        return ((labels > 0).sum(0) + 0.5) / (labels.shape[0] + 1.0)

    def training_loss(self, output: NetworkOutput, labels: torch.Tensor, ctx: StepContext) -> LossOutput:
        filled = torch.where(labels == 0, torch.full_like(labels, -1), labels)
        loss = partial_bce(output.logits, filled)
        return LossOutput(loss, {"bce": float(loss.detach())})
