"""LL-R, large loss rejection (Kim et al., "Large Loss Matters in Weakly Supervised Multi-Label
Classification", CVPR 2022), adapted to partial labels.

Unknown labels are assumed negative and known labels keep their values. From the second epoch on (0-based
epoch e ≥ 1) the ``k = ⌈r(e)·B·C⌉`` unknown-as-negative entries of the batch with the largest loss are
rejected (weight 0), with rejection rate ``r(e) = min(Δ_rel·e, 1)``; known entries are never rejected.
The loss is the sum of the kept entries divided by all ``B·C`` entries, as in the published objective
(λ_i = 0 for rejected entries inside the assume-negative mean).

Published-code details followed: the rate starts at 0 and grows by Δ_rel after every epoch, and ``k`` is a
fraction of all batch entries, not of the unknown ones. Deviations: ``Δ_rel`` is a fraction (the published
command line takes percent), exactly ``k`` entries are rejected (the published ``≥`` comparison rejects
ties too), and ``k`` is capped at the number of unknown entries (the published code can then reject known
entries whose masked loss is 0).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from hst.config import MethodConfig
from hst.methods.base import FeatureSource, LossOutput, Method, StepContext
from hst.models.network import NetworkOutput


def rejection_rate(delta_rel: float, epoch: int) -> float:
    """LL-R rejection rate of 0-based ``epoch``: ``min(Δ_rel·epoch, 1)``."""
    return min(max(delta_rel * epoch, 0.0), 1.0)


def large_loss_rejection_loss(
    logits: torch.Tensor, labels: torch.Tensor, rate: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Assume-negative BCE with the largest-loss unknown entries rejected.

    Returns ``(loss, rejected)``: the scalar loss and the ``B×C`` bool mask of rejected entries.
    """
    labels = labels.to(logits.device)
    unknown = labels == 0
    losses = F.binary_cross_entropy_with_logits(logits, (labels > 0).to(logits.dtype), reduction="none")
    rejected = torch.zeros_like(unknown)
    # The tolerance keeps float noise in rate·B·C (e.g. 1.0000000000000002) from adding one more entry.
    k = min(math.ceil(rate * losses.numel() - 1e-9), int(unknown.sum()))
    if k > 0:
        candidates = losses.detach().masked_fill(~unknown, float("-inf")).flatten()
        rejected.view(-1)[torch.topk(candidates, k).indices] = True
    kept = losses.masked_fill(rejected, 0.0)
    return kept.sum() / max(losses.numel(), 1), rejected


class LargeLossRejection(Method):
    """LL-R on the assume-negative loss; the rejection rate grows by ``llr_delta_rel`` per epoch."""

    name = "large_loss_rejection"

    def __init__(self, config: MethodConfig, num_classes: int, feature_dim: int, num_train: int) -> None:
        super().__init__(config, num_classes, feature_dim, num_train)
        self._epoch_counts: dict[str, float] = {}

    def rate(self, epoch: int) -> float:
        return rejection_rate(self.config.llr_delta_rel, epoch)

    def class_prior(self, labels: np.ndarray) -> np.ndarray:
        # Built on assume-negative: unknown entries are negatives.
        return ((labels > 0).sum(0) + 0.5) / (labels.shape[0] + 1.0)

    def on_train_epoch_start(self, epoch: int, features: FeatureSource) -> dict[str, float]:
        self._epoch_counts = {}
        return {"llr_rejection_rate": self.rate(epoch)}

    def training_loss(self, output: NetworkOutput, labels: torch.Tensor, ctx: StepContext) -> LossOutput:
        rate = self.rate(ctx.epoch)
        loss, rejected = large_loss_rejection_loss(output.logits, labels, rate)
        logs = {"bce": float(loss.detach()), "llr_rejection_rate": rate, "llr_rejected_count": float(rejected.sum())}
        if ctx.full_labels is not None:
            # Rejected entries that are truly positive: the false negatives LL-R is meant to catch.
            truth = ctx.full_labels.to(rejected.device) > 0
            logs["llr_rejected_positive"] = float((rejected & truth).sum())
        for key in ("llr_rejected_count", "llr_rejected_positive"):
            if key in logs:
                self._epoch_counts[key] = self._epoch_counts.get(key, 0.0) + logs[key]
        return LossOutput(loss, logs)

    def on_train_epoch_end(self, epoch: int) -> dict[str, float]:
        return {f"epoch_{key}": value for key, value in self._epoch_counts.items()}
