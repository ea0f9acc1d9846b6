"""HST: SARL + intra-image (IST) and cross-image (CST) semantic transfer with learned thresholds (DTL).

Objective per step (hst-reference §6.5), e = epoch, w = linear ramp over epoch 0:
    BCE(s, y) + w·λ_co·ASL_cooc(m, y) + w·λ_inst·L_inst(f, y)
  e ≥ pseudo_label_epoch adds
    + BCE(s, ŷ_intra) + λ_dtl·BCE(q_intra, y)              (IST)
    + BCE(s, ŷ_inter) + λ_dtl·BCE(q_inter, y) + λ_p·L_proto  (CST)
Only unknown entries receive pseudo labels (positive only); known labels never change.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hst.engine.config import MethodConfig
from hst.losses import (
    instance_contrastive_loss,
    intra_cooccurrence_loss,
    partial_bce,
    prototype_loss,
    threshold_loss,
    threshold_pseudo_labels,
)
from hst.methods.base import FeatureSource, LossOutput, Method, StepContext
from hst.models.cst import Prototypes, inter_scores, prototypes_from_lists
from hst.models.ist import ISTHead, intra_scores
from hst.models.network import NetworkOutput


def known_and_cooccurrence_loss(
    config: MethodConfig,
    ist_head: ISTHead | None,
    logits: torch.Tensor,
    semantic: torch.Tensor,
    labels: torch.Tensor,
    ramp: float,
) -> tuple[torch.Tensor, dict[str, float], torch.Tensor | None]:
    """The part HST and SST share: BCE on known labels plus the ramped IST co-occurrence loss.

    Returns (loss, logs, pair logits or None without an IST head).
    """
    base = partial_bce(logits, labels)
    logs: dict[str, float] = {"bce": float(base.detach())}
    if ist_head is None:
        return base, logs, None
    pair_logits = ist_head(semantic)
    cooc = intra_cooccurrence_loss(pair_logits, labels, ignore_unknown_pairs=config.ignore_unknown_pairs)
    logs["cooccurrence"] = float(cooc.detach())
    return base + ramp * config.intra_cooccurrence_weight * cooc, logs, pair_logits


def pseudo_label_logs(
    prefix: str, labels: torch.Tensor, pseudo: torch.Tensor, full_labels: torch.Tensor | None
) -> dict[str, float]:
    """Count new pseudo positives and, where ground truth is at hand, how many are right (precision =
    correct / count) and how many withheld positives there were to find (recall = correct / possible)."""
    unknown = labels == 0
    new = unknown & (pseudo > 0)
    logs = {f"{prefix}_pseudo_count": float(new.sum())}
    if full_labels is not None:
        logs[f"{prefix}_pseudo_correct"] = float((new & (full_labels > 0)).sum())
        logs[f"{prefix}_pseudo_possible"] = float((unknown & (full_labels > 0)).sum())
    return logs


class HST(Method):
    name = "hst"
    needs_semantic = True

    def __init__(self, config: MethodConfig, num_classes: int, feature_dim: int, num_train: int) -> None:
        super().__init__(config, num_classes, feature_dim, num_train)
        self.ist_head = (
            ISTHead(num_classes, feature_dim, feature_dim // 2, feature_dim, kernel=config.ist_kernel)
            if config.use_ist
            else None
        )
        learn = config.learn_thresholds
        self.intra_threshold = nn.Parameter(torch.tensor(float(config.intra_threshold)), requires_grad=learn)
        self.inter_threshold = nn.Parameter(torch.tensor(float(config.inter_threshold)), requires_grad=learn)
        self.prototypes: Prototypes | None = None
        self._epoch_counts: dict[str, float] = {}

    def _threshold_logs(self) -> dict[str, float]:
        return {
            "intra_threshold": float(self.intra_threshold.detach()),
            "inter_threshold": float(self.inter_threshold.detach()),
        }

    def threshold_parameters(self) -> list[nn.Parameter]:
        if not self.config.learn_thresholds:
            return []
        out = []
        if self.config.use_ist:
            out.append(self.intra_threshold)
        if self.config.use_cst:
            out.append(self.inter_threshold)
        return out

    # ---- prototypes ------------------------------------------------------------------------------
    def _prototype_epoch(self, epoch: int) -> bool:
        c = self.config
        if not c.use_cst or epoch < c.pseudo_label_epoch:
            return False
        if self.prototypes is None:
            return True  # first time (or after a resume that carried none)
        return c.prototype_every > 0 and (epoch - c.pseudo_label_epoch) % c.prototype_every == 0

    def on_train_epoch_start(self, epoch: int, features: FeatureSource) -> dict[str, float]:
        self._epoch_counts = {}
        logs = self._threshold_logs()
        if not self._prototype_epoch(epoch):
            return logs
        collected_features: list[torch.Tensor] = []
        collected_classes: list[torch.Tensor] = []
        collected_rows: list[torch.Tensor] = []
        for indices, semantic, labels in features():
            rows, classes = torch.nonzero(labels > 0, as_tuple=True)
            collected_features.append(semantic[rows, classes].float())
            collected_classes.append(classes)
            collected_rows.append(indices.to(classes.device)[rows])
        device = self.intra_threshold.device
        feats = torch.cat(collected_features) if collected_features else torch.zeros(0, self.feature_dim)
        classes = torch.cat(collected_classes) if collected_classes else torch.zeros(0, dtype=torch.long)
        group = self.collective
        if group.world_size > 1:
            rows = torch.cat(collected_rows) if collected_rows else torch.zeros(0, dtype=torch.long)
            feats = group.gather_rows(feats.to(device))
            classes = group.gather_rows(classes.to(device))
            rows = group.gather_rows(rows.to(device))
            # One process reads rows in order, classes ascending within a row; K-means++ seeding depends on it.
            order = torch.argsort(rows * self.num_classes + classes)
            feats, classes = feats[order], classes[order]
        # Group the known-positive features by class without a Python loop over samples.
        order = torch.argsort(classes, stable=True)
        counts = torch.bincount(classes, minlength=self.num_classes).tolist()
        per_class = list(torch.split(feats[order].to(device), counts))
        prototypes = prototypes_from_lists(
            per_class, k=self.config.prototypes_per_class, seed=epoch, iters=self.config.kmeans_iters
        )
        if group.world_size > 1:
            # Every process clusters the same features; rank 0's result is taken so that they agree bit for bit.
            prototypes = Prototypes(group.broadcast(prototypes.centers), group.broadcast(prototypes.valid))
        self.prototypes = prototypes
        logs["prototype_classes"] = float(self.prototypes.valid.any(dim=1).sum())
        return logs

    # ---- loss ------------------------------------------------------------------------------------
    def training_loss(self, output: NetworkOutput, labels: torch.Tensor, ctx: StepContext) -> LossOutput:
        c = self.config
        logits, semantic = output.logits, output.semantic
        labels = labels.to(logits.device)
        ramp = ctx.ramp if c.warmup_ramp else 1.0
        pseudo_phase = ctx.epoch >= c.pseudo_label_epoch
        loss, logs, pair_logits = known_and_cooccurrence_loss(c, self.ist_head, logits, semantic, labels, ramp)

        if pair_logits is not None:
            if pseudo_phase:
                scores = intra_scores(pair_logits, labels)
                pseudo, clamped = threshold_pseudo_labels(labels, scores, self.intra_threshold)
                intra_bce = partial_bce(logits, pseudo)
                dtl = threshold_loss(clamped, labels)
                loss = loss + c.intra_pseudo_weight * intra_bce + c.intra_dtl_weight * dtl
                logs |= {"intra_bce": float(intra_bce.detach()), "intra_dtl": float(dtl.detach())}
                logs |= pseudo_label_logs("intra", labels, pseudo, ctx.full_labels)

        if c.use_cst:
            inst = instance_contrastive_loss(semantic, labels)
            loss = loss + ramp * c.instance_contrastive_weight * inst
            logs["instance"] = float(inst.detach())
            if pseudo_phase and self.prototypes is not None:
                scores = inter_scores(semantic, self.prototypes)
                pseudo, clamped = threshold_pseudo_labels(labels, scores, self.inter_threshold)
                inter_bce = partial_bce(logits, pseudo)
                dtl = threshold_loss(clamped, labels)
                proto = prototype_loss(
                    semantic, labels, self.prototypes, published_sign=c.published_prototype_sign
                )
                loss = (
                    loss + c.inter_pseudo_weight * inter_bce + c.inter_dtl_weight * dtl + c.prototype_weight * proto
                )
                logs |= {"inter_bce": float(inter_bce.detach()), "inter_dtl": float(dtl.detach())}
                logs |= {"prototype": float(proto.detach())}
                logs |= pseudo_label_logs("inter", labels, pseudo, ctx.full_labels)

        for key, value in logs.items():
            if key.endswith(("_count", "_correct", "_possible")):
                self._epoch_counts[key] = self._epoch_counts.get(key, 0.0) + value
        return LossOutput(loss, logs)

    def on_train_epoch_end(self, epoch: int) -> dict[str, float]:
        logs = self._threshold_logs()
        for key, value in self._epoch_counts.items():
            logs[f"epoch_{key}"] = value
        return logs

    # ---- state -----------------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        if self.prototypes is None:
            return {"prototypes": None}
        return {"prototypes": {k: v.cpu() for k, v in self.prototypes.state_dict().items()}}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        saved = state.get("prototypes")
        if saved is None:
            self.prototypes = None
            return
        device = self.intra_threshold.device
        self.prototypes = Prototypes.from_state_dict(saved).to(device)
