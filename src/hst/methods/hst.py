"""HST: SARL + intra-image (IST) and cross-image (CST) semantic transfer with pseudo-label thresholds.

Objective per step (hst-reference §6.5), e = epoch, w = linear ramp over epoch 0:
    L_cls + w·λ_co·ASL_cooc(m, y) + w·λ_inst·L_inst(f, y)  [+ λ_p·L_proto once prototypes exist]

``method.thresholds=calibrated`` (default): before the first training step, the pseudo labels of the unknown training
entries are decided once by the cross-fitted rule (``hst.methods.pseudo_label_round``: a K-fold linear probe and
the image-level CST neighbours on the label-free pooled features, one threshold per class calibrated on the known
entries to ``target_precision``). Before ``pseudo_label_epoch`` L_cls is BCE on the known labels plus the unknown
entries as negatives at weight ``unknown_negative_weight``; from then on BCE on known + pseudo-labelled entries, the
rest ignored. Classes with no known negative (single-positive labels) cannot be calibrated: their unknown entries
are negatives at ``weak_negative_weight`` throughout (1 by default; 1/(C−1) is the "weak assume negative" of Cole
et al., 2021) except those most like a positive (``weak_negative_withhold``, ``hst.methods.weak_negatives``), and
their initial biases start from the rate that weighted loss trains towards.

``method.thresholds=learned`` (the published DTL) or ``fixed``: L_cls = BCE(s, y), and e ≥ pseudo_label_epoch
adds + BCE(s, ŷ_intra) + λ_dtl·BCE(q_intra, y) (IST) + BCE(s, ŷ_inter) + λ_dtl·BCE(q_inter, y) (CST), pseudo
positives only. Known labels never change.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from hst.config import MethodConfig
from hst.labels import classes_without_negatives
from hst.losses import (
    instance_contrastive_loss,
    partial_bce,
    prototype_loss,
    threshold_loss,
    threshold_pseudo_labels,
    weighted_bce,
)
from hst.methods.base import Evidence, FeatureBatch, FeatureSource, LossOutput, Method, StepContext
from hst.methods.pseudo_label_round import PseudoLabelRound, RoundSettings, pseudo_label_round, round_logs
from hst.methods.semantic_transfer import cooccurrence_term, known_and_cooccurrence_loss, pseudo_label_logs
from hst.methods.thresholds import NO_THRESHOLD_LOW, ORACLES, ClassThresholds, oracle_targets, quality
from hst.methods.weak_negatives import withheld_counts, withheld_weak_negatives
from hst.models.cst import Prototypes, inter_scores, prototypes_from_lists
from hst.models.ist import ISTHead, intra_scores, intra_scores_leave_one_out
from hst.models.network import NetworkOutput

THRESHOLD_MODES = ("calibrated", "learned", "fixed")
log = logging.getLogger(__name__)


def _pooled_of(batch: FeatureBatch) -> torch.Tensor:
    if batch.pooled is None:
        raise ValueError(
            "method.thresholds=calibrated needs pooled backbone features, which this network does not give"
        )
    return batch.pooled.float()


class HST(Method):
    """Heterogeneous Semantic Transfer: SARL features, an IST co-occurrence head, CST prototypes, and
    pseudo labels for the unknown entries (``method.thresholds`` says how they are thresholded)."""

    name = "hst"
    needs_semantic = True

    def __init__(self, config: MethodConfig, num_classes: int, feature_dim: int, num_train: int) -> None:
        super().__init__(config, num_classes, feature_dim, num_train)
        if config.thresholds not in THRESHOLD_MODES:
            raise ValueError(f"method.thresholds must be one of {THRESHOLD_MODES}, got {config.thresholds!r}")
        if config.pseudo_label_oracle not in ORACLES:
            raise ValueError(f"method.pseudo_label_oracle must be one of {ORACLES}, got {config.pseudo_label_oracle!r}")
        if config.pseudo_label_oracle != "none" and config.thresholds != "calibrated":
            raise ValueError("method.pseudo_label_oracle needs method.thresholds=calibrated")
        RoundSettings.from_method(config)  # a bad calibration key fails here, not at the first epoch
        self.ist_head = (
            ISTHead(num_classes, feature_dim, feature_dim // 2, feature_dim, kernel=config.ist_kernel)
            if config.use_ist
            else None
        )
        learn = config.learn_thresholds and config.thresholds == "learned"
        self.intra_threshold = nn.Parameter(torch.tensor(float(config.intra_threshold)), requires_grad=learn)
        self.inter_threshold = nn.Parameter(torch.tensor(float(config.inter_threshold)), requires_grad=learn)
        self.prototypes: Prototypes | None = None
        self.pseudo_targets: torch.Tensor | None = None
        """Calibrated mode: int8 ``num_train×C`` pseudo labels of the current epoch, by training row."""
        self.calibration: dict[str, ClassThresholds] = {}
        self.weak_negative_classes: torch.Tensor | None = None
        """Calibrated mode: bool C, classes without a known negative (their unknown entries are weak negatives)."""
        self.withheld: torch.Tensor | None = None
        """Calibrated mode: bool ``num_train×C``, the weak negatives left out of the loss (``weak_negatives``)."""
        self._epoch_counts: dict[str, float] = {}

    @property
    def calibrated(self) -> bool:
        return self.config.thresholds == "calibrated"

    @property
    def weak_weight(self) -> float:
        """Loss weight of the unknown entries of classes without a known negative (None in the config: 1/(C − 1))."""
        weight = self.config.weak_negative_weight
        return 1.0 / max(self.num_classes - 1, 1) if weight is None else weight

    def class_prior(self, labels: np.ndarray) -> np.ndarray:
        """The known positive rate, except in classes without a known negative (calibrated mode), whose unknown
        entries are weak negatives: there the rate the weighted BCE trains towards (the withheld ones left out), not
        the ~1 of positives only."""
        prior = super().class_prior(labels)
        weak = classes_without_negatives(labels)
        if not self.calibrated or not weak.any():
            return prior
        positives, unknown = (labels > 0).sum(0), (labels == 0).sum(0)
        negatives = unknown - withheld_counts(labels, self.config.weak_negative_withhold)
        weighted = (positives + 0.5) / (positives + self.weak_weight * negatives + 1.0)
        return np.where(weak, weighted, prior)

    def _threshold_logs(self) -> dict[str, float]:
        if self.calibrated:
            return {}
        return {
            "intra_threshold": float(self.intra_threshold.detach()),
            "inter_threshold": float(self.inter_threshold.detach()),
        }

    def threshold_parameters(self) -> list[nn.Parameter]:
        if not (self.config.learn_thresholds and self.config.thresholds == "learned"):
            return []
        out = []
        if self.config.use_ist:
            out.append(self.intra_threshold)
        if self.config.use_cst:
            out.append(self.inter_threshold)
        return out

    def evidence(self, missing: set[str] = frozenset()) -> list[Evidence]:  # type: ignore[assignment]
        """IST and CST scores with the thresholds this model was trained with: per class the calibrated ones
        (``≥``), or the learned / fixed scalars (``>``, as ``clamp(s − θ, 0, 1) > 0``)."""
        out: list[Evidence] = []
        num = self.num_classes
        ist_ok = self.ist_head is not None and not any(key.startswith("ist_head.") for key in missing)
        cst_ok = self.prototypes is not None
        if self.calibrated:
            # The calibrated rule scores a whole dataset at once (cross-fitted): `hst complete --precision` runs it.
            return out
        if ist_ok and "intra_threshold" not in missing:
            out.append(Evidence("IST", self._ist_evidence, np.full(num, float(self.intra_threshold)), strict=True))
        if cst_ok and "inter_threshold" not in missing:
            out.append(Evidence("CST", self._cst_evidence, np.full(num, float(self.inter_threshold)), strict=True))
        return out

    def _ist_evidence(self, output: NetworkOutput, known: torch.Tensor) -> torch.Tensor:
        assert self.ist_head is not None
        known = known.to(output.semantic.device)
        # On unknown entries the leave-one-out score equals the published mean; NaN without a known positive.
        return intra_scores_leave_one_out(self.ist_head(output.semantic).float(), known)

    def _cst_evidence(self, output: NetworkOutput, known: torch.Tensor) -> torch.Tensor:
        assert self.prototypes is not None
        return inter_scores(output.semantic.float(), self.prototypes.to(output.semantic.device))

    # prototypes ---------------------------------------------------------------------------------------
    def _prototype_epoch(self, epoch: int) -> bool:
        c = self.config
        if not c.use_cst or epoch < c.pseudo_label_epoch:
            return False
        if self.prototypes is None:
            return True  # first time (or after a resume that carried none)
        return c.prototype_every > 0 and (epoch - c.pseudo_label_epoch) % c.prototype_every == 0

    def _cluster(self, feats: torch.Tensor, classes: torch.Tensor, rows: torch.Tensor, seed: int) -> Prototypes:
        """K-means prototypes per class of the given known-positive features, the same on every process."""
        group = self.collective
        device = self.intra_threshold.device
        if group.world_size > 1:
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
            per_class, k=self.config.prototypes_per_class, seed=seed, iters=self.config.kmeans_iters
        )
        if group.world_size > 1:
            # Every process clusters the same features; rank 0's result is taken so that they agree bit for bit.
            prototypes = Prototypes(group.broadcast(prototypes.centers), group.broadcast(prototypes.valid))
        return prototypes

    def _known_positive_features(self, features: FeatureSource) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        collected: tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]] = ([], [], [])
        for batch in features("train"):
            rows, classes = torch.nonzero(batch.labels > 0, as_tuple=True)
            collected[0].append(batch.semantic[rows, classes].float())
            collected[1].append(classes)
            collected[2].append(batch.indices.to(classes.device)[rows])
        if not collected[0]:
            return torch.zeros(0, self.feature_dim), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
        return torch.cat(collected[0]), torch.cat(collected[1]), torch.cat(collected[2])

    def on_train_epoch_start(self, epoch: int, features: FeatureSource) -> dict[str, float]:
        self._epoch_counts = {}
        logs = self._threshold_logs()
        if self.calibrated and self.pseudo_targets is None:
            if epoch > 0:
                log.warning(
                    "pseudo labels decided at epoch %d: the pooled features may have been trained by then", epoch
                )
            logs |= self._pseudo_label_round(epoch, features)
        if not self._prototype_epoch(epoch):
            return logs
        feats, classes, rows = self._known_positive_features(features)
        self.prototypes = self._cluster(feats, classes, rows, seed=epoch)
        logs["prototype_classes"] = float(self.prototypes.valid.any(dim=1).sum())
        return logs

    # calibrated pseudo labels ------------------------------------------------------------------------
    def _gather_sorted(self, rows: torch.Tensor, *arrays: torch.Tensor) -> list[np.ndarray]:
        """Rows of every process in dataset-row order (each process scored its own share)."""
        group = self.collective
        if group.world_size > 1:
            rows = group.gather_rows(rows)
            arrays = tuple(group.gather_rows(a) for a in arrays)
        order = torch.argsort(rows.cpu(), stable=True)
        return [rows.cpu()[order].numpy(), *(a.cpu()[order].numpy() for a in arrays)]

    @torch.no_grad()
    def _pseudo_label_round(self, epoch: int, features: FeatureSource) -> dict[str, float]:
        """Decide the pseudo labels of the unknown training entries once, from label-free features.

        Called before the first training step, so the pooled backbone features have seen no label even when the
        backbone trains; the rule is cross-fitted and calibrated where it is applied
        (:mod:`hst.methods.pseudo_label_round`)."""
        c = self.config
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("rows", "labels", "full", "pooled")}
        for batch in features("train"):
            parts["rows"].append(batch.indices.long())
            parts["labels"].append(batch.labels.to(torch.int8))
            full = batch.full_labels if batch.full_labels is not None else torch.zeros_like(batch.labels)
            parts["full"].append(full.to(torch.int8))
            parts["pooled"].append(_pooled_of(batch))
        if not parts["rows"]:
            return {}
        rows_np, labels, full, pooled = self._gather_sorted(*(torch.cat(parts[k]) for k in parts))
        labels = labels.astype(np.int8)
        weak = classes_without_negatives(labels)
        self.weak_negative_classes = torch.from_numpy(weak)
        if weak.any():
            log.warning("%d classes have no known negative: their unknown entries are weak negatives", int(weak.sum()))
        chosen = None if self.calibration_labels is None else np.asarray(self.calibration_labels)[rows_np]
        settings = RoundSettings.from_method(c, seed=epoch)
        result = pseudo_label_round(pooled, labels, settings, chosen)
        targets = oracle_targets(result.targets, labels, full, c.pseudo_label_oracle)
        table = torch.zeros(max(self.num_train, int(rows_np.max()) + 1), self.num_classes, dtype=torch.int8)
        table[torch.from_numpy(rows_np)] = torch.from_numpy(targets)
        self.pseudo_targets = table.to(self.intra_threshold.device)
        self.calibration = {"cross_fitted": ClassThresholds(result.positive.threshold, self._negative_of(result))}
        withheld = withheld_weak_negatives(
            pooled,
            labels,
            weak,
            c.weak_negative_withhold,
            settings.neighbours,
            settings.probe,
            epoch,
            settings.bank_limit,
        )
        self.withheld = None  # nothing withheld: the loss skips the mask
        if withheld.any():
            held = torch.zeros(table.shape, dtype=torch.bool)
            held[torch.from_numpy(rows_np)] = torch.from_numpy(withheld)
            self.withheld = held.to(self.intra_threshold.device)
        refused = result.positive.summary()
        if refused:
            num = self.num_classes
            log.warning("no pseudo positives for %d of %d classes: %s", len(refused), num, "; ".join(refused))
        has_truth = bool((full != 0).any())
        result.targets = targets
        logs = round_logs(result, labels, full if has_truth else None)
        logs["uncalibrated_classes"] = float((~result.positive.calibrated).sum())
        if weak.any():
            # Withheld entries as if positives: their count, and how many hidden positives they hold.
            counts = quality(withheld.astype(np.int8), labels, full if has_truth else None)
            logs |= {f"withheld_{key.removeprefix('pos_')}": v for key, v in counts.items() if key.startswith("pos_")}
        return logs

    @staticmethod
    def _negative_of(result: PseudoLabelRound) -> np.ndarray:
        if result.negative is None:
            return np.full(len(result.positive.threshold), NO_THRESHOLD_LOW)
        return -result.negative.threshold

    def _classification_loss(
        self, logits: torch.Tensor, labels: torch.Tensor, ctx: StepContext
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Calibrated mode: BCE on known entries and, per phase, unknown-as-negative or pseudo-labelled ones."""
        c = self.config
        known = labels != 0
        weak = torch.zeros(labels.shape[1], dtype=torch.bool, device=labels.device)
        if self.weak_negative_classes is not None:
            weak = self.weak_negative_classes.to(labels.device)
        weak_weight = self.weak_weight
        if ctx.epoch >= c.pseudo_label_epoch and self.pseudo_targets is not None:
            pseudo = self.pseudo_targets[ctx.indices.to(self.pseudo_targets.device)].to(labels.device, labels.dtype)
            given = float((~known & (pseudo != 0)).sum())  # the rule's labels, not the weak negatives filled next
            pseudo = torch.where((pseudo == 0) & weak[None, :], torch.full_like(pseudo, -1), pseudo)
            targets = torch.where(known, labels, pseudo)
            unknown_weight = torch.where(weak[None, :] & (pseudo < 0), weak_weight, c.pseudo_label_weight)
            weights = torch.where(known, 1.0, torch.where(pseudo != 0, unknown_weight, 0.0))
            weights = self._without_withheld(weights, ctx)
            loss = weighted_bce(logits, targets, weights)
            return loss, {"bce": float(loss.detach()), "pseudo_entries": given}
        targets = torch.where(known, labels, torch.full_like(labels, -1))
        unknown_weight = torch.where(weak[None, :], weak_weight, c.unknown_negative_weight)
        weights = self._without_withheld(torch.where(known, 1.0, unknown_weight), ctx)
        loss = weighted_bce(logits, targets, weights)
        return loss, {"bce": float(loss.detach())}

    def _without_withheld(self, weights: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """``weights`` with the batch's withheld weak negatives at 0."""
        if self.withheld is None:
            return weights
        held = self.withheld[ctx.indices.to(self.withheld.device)].to(weights.device)
        return weights.masked_fill(held, 0.0)

    # loss ---------------------------------------------------------------------------------------------
    def training_loss(self, output: NetworkOutput, labels: torch.Tensor, ctx: StepContext) -> LossOutput:
        c = self.config
        logits, semantic = output.logits, output.semantic
        labels = labels.to(logits.device)
        ramp = ctx.ramp if c.warmup_ramp else 1.0
        if self.calibrated:
            loss, logs = self._classification_loss(logits, labels, ctx)
            term, cooc_logs, _ = cooccurrence_term(c, self.ist_head, semantic, labels, ramp)
            logs |= cooc_logs
            if term is not None:
                loss = loss + term
            if c.use_cst:
                inst = instance_contrastive_loss(semantic, labels)
                loss = loss + ramp * c.instance_contrastive_weight * inst
                logs["instance"] = float(inst.detach())
                if self.prototypes is not None:
                    proto = prototype_loss(semantic, labels, self.prototypes, published_sign=c.published_prototype_sign)
                    loss = loss + c.prototype_weight * proto
                    logs["prototype"] = float(proto.detach())
            return LossOutput(loss, logs)
        return self._published_loss(logits, semantic, labels, ctx, ramp)

    def _published_loss(
        self, logits: torch.Tensor, semantic: torch.Tensor, labels: torch.Tensor, ctx: StepContext, ramp: float
    ) -> LossOutput:
        c = self.config
        pseudo_phase = ctx.epoch >= c.pseudo_label_epoch
        loss, logs, pair_logits = known_and_cooccurrence_loss(c, self.ist_head, logits, semantic, labels, ramp)

        if pair_logits is not None and pseudo_phase:
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
                proto = prototype_loss(semantic, labels, self.prototypes, published_sign=c.published_prototype_sign)
                loss = loss + c.inter_pseudo_weight * inter_bce + c.inter_dtl_weight * dtl + c.prototype_weight * proto
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

    # state --------------------------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "prototypes": None
            if self.prototypes is None
            else {k: v.cpu() for k, v in self.prototypes.state_dict().items()},
            "pseudo_targets": None if self.pseudo_targets is None else self.pseudo_targets.cpu(),
            "calibration": {name: t.to_dict() for name, t in self.calibration.items()},
            "weak_negative_classes": self.weak_negative_classes,
            "withheld": None if self.withheld is None else self.withheld.cpu(),
        }
        return state

    def load_extra_state(self, state: dict[str, Any]) -> None:
        device = self.intra_threshold.device
        saved = state.get("prototypes")
        self.prototypes = None if saved is None else Prototypes.from_state_dict(saved).to(device)
        self.weak_negative_classes = state.get("weak_negative_classes")
        withheld = state.get("withheld")
        self.withheld = None if withheld is None else withheld.to(device)
        table = state.get("pseudo_targets")
        self.pseudo_targets = None if table is None else table.to(device)
        self.calibration = {
            name: ClassThresholds(np.asarray(t["positive"], dtype=float), np.asarray(t["negative"], dtype=float))
            for name, t in (state.get("calibration") or {}).items()
        }
