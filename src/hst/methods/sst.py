"""SST, the predecessor of HST: IST and CST pseudo labels with a fixed threshold schedule (hst-reference §9).

Objective per step, e = epoch, w = linear ramp over epoch 0:
    BCE(s, y) + w·λ_co·ASL_cooc(m, y) + w·λ_inst·L_inst(f, y)
  e ≥ pseudo_label_epoch adds
    + λ_intra·BCE(s, ŷ_intra) + λ_inter·BCE(s, ŷ_inter)
with θ(e) = max(θ_min, θ_start − step·(e − pseudo_label_epoch)) for both modules and no learned parts
besides the IST head. CST compares each feature with a per-class memory bank of the most recent known-positive
features instead of HST's K-means prototypes.

Published behaviour kept on purpose: the bank starts as zeros and the CST score is the mean cosine over all
bank slots, zero slots included (cosine 0), so scores are deflated until a class's bank has filled.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from hst.config import MethodConfig
from hst.losses import instance_contrastive_loss, partial_bce
from hst.methods.base import Evidence, FeatureSource, LossOutput, Method, StepContext
from hst.methods.semantic_transfer import known_and_cooccurrence_loss, pseudo_label_logs
from hst.models.cst import COSINE_EPS
from hst.models.ist import ISTHead, intra_scores
from hst.models.network import NetworkOutput


def sst_threshold(config: MethodConfig, epoch: int) -> float | None:
    """The fixed SST threshold of ``epoch``; None before pseudo labelling starts."""
    if epoch < config.pseudo_label_epoch:
        return None
    value = config.sst_threshold_start - config.sst_threshold_step * (epoch - config.pseudo_label_epoch)
    return max(config.sst_threshold_min, value)


def fixed_threshold_pseudo_labels(labels: torch.Tensor, scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """``ŷ = y + 1[y = 0]·1[s ≥ θ]``: unknown entries scoring at least θ become positive, known ones stay."""
    labels = labels.to(scores.device)
    added = (labels == 0) & (scores.detach() >= threshold)
    return labels + added.to(labels.dtype)


class FeatureBank:
    """Per-class FIFO ring buffer ``C×S×D`` of detached features, zero-initialised.

    ``position[c]`` is the slot the next feature of class ``c`` goes to; ``count[c]`` how many slots hold a
    real feature. Within one push, features enter in the order given (row-major over the batch).
    """

    def __init__(self, num_classes: int, size: int, dim: int, device: torch.device | str | None = None) -> None:
        if size < 1:
            raise ValueError(f"the memory bank needs at least one slot per class, got {size}")
        self.size = size
        self.features = torch.zeros(num_classes, size, dim, device=device)
        self.position = torch.zeros(num_classes, dtype=torch.long, device=device)
        self.count = torch.zeros(num_classes, dtype=torch.long, device=device)

    @property
    def num_classes(self) -> int:
        return self.features.shape[0]

    def push(self, classes: torch.Tensor, features: torch.Tensor) -> None:
        """Append ``features`` (``N×D``) to the banks of ``classes`` (``N``), in order, without a class loop."""
        if classes.numel() == 0:
            return
        device = self.features.device
        classes = classes.to(device)
        features = features.detach().to(device, self.features.dtype)
        order = torch.argsort(classes, stable=True)
        classes, features = classes[order], features[order]
        per_class = torch.bincount(classes, minlength=self.num_classes)
        starts = torch.cumsum(per_class, 0) - per_class
        rank = torch.arange(classes.numel(), device=device) - starts[classes]
        # Only the last `size` features of a class survive this push; dropping the rest keeps each slot
        # written once (scatter with duplicate indices has no defined winner).
        keep = rank >= per_class[classes] - self.size
        classes, features, rank = classes[keep], features[keep], rank[keep]
        slots = (self.position[classes] + rank) % self.size
        self.features[classes, slots] = features
        self.position = (self.position + per_class) % self.size
        self.count = torch.clamp(self.count + per_class, max=self.size)

    def newest_first(self) -> torch.Tensor:
        """The bank ``C×S×D`` ordered from the newest feature to the oldest slot of each class."""
        steps = torch.arange(self.size, device=self.features.device)
        slots = (self.position[:, None] - 1 - steps[None, :]) % self.size  # C×S
        return torch.gather(self.features, 1, slots.unsqueeze(2).expand(-1, -1, self.features.shape[2]))

    def mean_cosine(self, semantic: torch.Tensor) -> torch.Tensor:
        """``B×C`` mean cosine of ``semantic`` (``B×C×D``) to every slot of its class bank, zero slots included."""
        bank = self.features.to(semantic.device, semantic.dtype)
        unit_bank = bank / bank.norm(dim=2, keepdim=True).clamp_min(COSINE_EPS)
        unit = semantic / semantic.norm(dim=2, keepdim=True).clamp_min(COSINE_EPS)
        # Cosine is linear in the unit bank vector, so the mean over slots is one dot with the mean unit vector.
        return (unit * unit_bank.mean(1).unsqueeze(0)).sum(2)

    def to(self, device: torch.device | str) -> FeatureBank:
        self.features = self.features.to(device)
        self.position = self.position.to(device)
        self.count = self.count.to(device)
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        # Copies, so that a saved state does not change with later pushes.
        return {key: getattr(self, key).detach().cpu().clone() for key in ("features", "position", "count")}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        features = state["features"]
        if features.shape != self.features.shape:
            raise ValueError(
                f"saved memory bank has shape {tuple(features.shape)}, expected {tuple(self.features.shape)}"
            )
        device = self.features.device
        self.features = features.to(device, self.features.dtype).clone()
        self.position = state["position"].to(device, torch.long).clone()
        self.count = state["count"].to(device, torch.long).clone()


class SST(Method):
    """Semantic-Specific Transfer (the predecessor of HST): IST and memory-bank CST pseudo labels under a fixed,
    decaying threshold schedule; the IST head is its only learned part besides the network."""

    name = "sst"
    needs_semantic = True

    def __init__(self, config: MethodConfig, num_classes: int, feature_dim: int, num_train: int) -> None:
        super().__init__(config, num_classes, feature_dim, num_train)
        self.ist_head = (
            ISTHead(num_classes, feature_dim, feature_dim // 2, feature_dim, kernel=config.ist_kernel)
            if config.use_ist
            else None
        )
        self.bank = FeatureBank(num_classes, config.sst_bank_size, feature_dim) if config.use_cst else None
        self._epoch_counts: dict[str, float] = {}

    def threshold(self, epoch: int) -> float | None:
        return sst_threshold(self.config, epoch)

    def _threshold_logs(self, epoch: int) -> dict[str, float]:
        value = self.threshold(epoch)
        return {} if value is None else {"sst_threshold": value}

    def on_train_epoch_start(self, epoch: int, features: FeatureSource) -> dict[str, float]:
        self._epoch_counts = {}
        return self._threshold_logs(epoch)

    def training_loss(self, output: NetworkOutput, labels: torch.Tensor, ctx: StepContext) -> LossOutput:
        c = self.config
        logits, semantic = output.logits, output.semantic
        labels = labels.to(logits.device)
        ramp = ctx.ramp if c.warmup_ramp else 1.0
        threshold = self.threshold(ctx.epoch)
        loss, logs, pair_logits = known_and_cooccurrence_loss(c, self.ist_head, logits, semantic, labels, ramp)

        if pair_logits is not None:
            if threshold is not None:
                pseudo = fixed_threshold_pseudo_labels(labels, intra_scores(pair_logits.detach(), labels), threshold)
                intra_bce = partial_bce(logits, pseudo)
                loss = loss + c.intra_pseudo_weight * intra_bce
                logs["intra_bce"] = float(intra_bce.detach())
                logs |= pseudo_label_logs("intra", labels, pseudo, ctx.full_labels)

        if self.bank is not None:
            inst = instance_contrastive_loss(semantic, labels)
            loss = loss + ramp * c.instance_contrastive_weight * inst
            logs["instance"] = float(inst.detach())
            if self.bank.features.device != semantic.device:
                self.bank.to(semantic.device)
            # Published order: the batch's own known positives enter the bank before it scores the batch.
            rows, classes = torch.nonzero(labels > 0, as_tuple=True)
            pushed = semantic.detach()[rows, classes]
            if self.collective.world_size > 1:
                # Every process pushes the whole global batch (rank order), so that the banks stay identical.
                classes, pushed = self.collective.gather_rows(classes), self.collective.gather_rows(pushed)
            self.bank.push(classes, pushed)
            logs["bank_fill"] = float(self.bank.count.float().mean() / self.bank.size)
            if threshold is not None:
                with torch.no_grad():
                    scores = self.bank.mean_cosine(semantic.detach().float())
                pseudo = fixed_threshold_pseudo_labels(labels, scores, threshold)
                inter_bce = partial_bce(logits, pseudo)
                loss = loss + c.inter_pseudo_weight * inter_bce
                logs["inter_bce"] = float(inter_bce.detach())
                logs |= pseudo_label_logs("inter", labels, pseudo, ctx.full_labels)

        if threshold is not None:
            logs["sst_threshold"] = threshold
        for key, value in logs.items():
            if key.endswith(("_count", "_correct", "_possible")):
                self._epoch_counts[key] = self._epoch_counts.get(key, 0.0) + value
        return LossOutput(loss, logs)

    def on_train_epoch_end(self, epoch: int) -> dict[str, float]:
        logs = self._threshold_logs(epoch)
        for key, value in self._epoch_counts.items():
            logs[f"epoch_{key}"] = value
        return logs

    def evidence(self, missing: set[str] = frozenset()) -> list[Evidence]:  # type: ignore[assignment]
        """IST with the final threshold of the fixed schedule (the one the model ended training with)."""
        if self.ist_head is None or any(key.startswith("ist_head.") for key in missing):
            return []
        head = self.ist_head

        def score(output: NetworkOutput, known: torch.Tensor) -> torch.Tensor:
            known = known.to(output.semantic.device)
            scores = intra_scores(head(output.semantic).float(), known)
            # Without a known positive an image has no co-occurrence evidence (its published scores are all 0).
            return scores.masked_fill(~(known > 0).any(1, keepdim=True), float("nan"))

        return [Evidence("IST", score, np.full(self.num_classes, float(self.config.sst_threshold_min)))]

    def extra_state(self) -> dict[str, Any]:
        return {"bank": None if self.bank is None else self.bank.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        saved = state.get("bank")
        if self.bank is not None and saved is not None:
            self.bank.load_state_dict(saved)
