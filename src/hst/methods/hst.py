"""HST: SARL + intra-image (IST) and cross-image (CST) semantic transfer with pseudo-label thresholds.

Objective per step (hst-reference §6.5), e = epoch, w = linear ramp over epoch 0:
    L_cls + w·λ_co·ASL_cooc(m, y) + w·λ_inst·L_inst(f, y)  [+ λ_p·L_proto once prototypes exist]

``method.thresholds=calibrated`` (default): before ``pseudo_label_epoch`` L_cls is BCE on the known labels
plus the unknown entries as negatives at weight ``unknown_negative_weight``; from then on, at the start of
every epoch, per-class thresholds are calibrated on the known entries (``hst.methods.thresholds``) and the
unknown entries get pseudo positives and pseudo negatives from IST, CST and classifier evidence; L_cls is BCE on
known + pseudo-labelled entries, the rest ignored.

``method.thresholds=learned`` (the published DTL) or ``fixed``: L_cls = BCE(s, y), and e ≥ pseudo_label_epoch
adds + BCE(s, ŷ_intra) + λ_dtl·BCE(q_intra, y) (IST) + BCE(s, ŷ_inter) + λ_dtl·BCE(q_inter, y) (CST), pseudo
positives only. Known labels never change.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from hst.config import MethodConfig
from hst.losses import (
    instance_contrastive_loss,
    partial_bce,
    prototype_loss,
    threshold_loss,
    threshold_pseudo_labels,
    weighted_bce,
)
from hst.methods.base import Evidence, FeatureBatch, FeatureSource, LossOutput, Method, StepContext
from hst.methods.neighbour_evidence import neighbour_evidence
from hst.methods.semantic_transfer import cooccurrence_term, known_and_cooccurrence_loss, pseudo_label_logs
from hst.methods.thresholds import (
    ORACLES,
    ClassThresholds,
    by_agreement,
    calibrate,
    decide,
    oracle_targets,
    quality,
)
from hst.models.cst import Prototypes, inter_scores, prototype_similarity, prototypes_from_lists
from hst.models.ist import ISTHead, intra_scores, intra_scores_leave_one_out
from hst.models.network import NetworkOutput

THRESHOLD_MODES = ("calibrated", "learned", "fixed")
CALIBRATION_SPLITS = ("validation", "training")
CALIBRATION_KEEP_ELEMENTS = 2**26
"""Semantic features of the training split up to this many floats (256 MiB) stay in memory between the two
uses of a calibration pass; larger splits are read twice instead."""


def _pooled_of(batch: FeatureBatch) -> torch.Tensor:
    if batch.pooled is None:
        raise ValueError("method.cst_neighbours needs pooled backbone features, which this network does not give")
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
        if config.calibration_split not in CALIBRATION_SPLITS:
            raise ValueError(
                f"method.calibration_split must be one of {CALIBRATION_SPLITS}, got {config.calibration_split!r}"
            )
        if config.pseudo_label_oracle not in ORACLES:
            raise ValueError(f"method.pseudo_label_oracle must be one of {ORACLES}, got {config.pseudo_label_oracle!r}")
        if config.pseudo_label_oracle != "none" and config.thresholds != "calibrated":
            raise ValueError("method.pseudo_label_oracle needs method.thresholds=calibrated")
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
        self._epoch_counts: dict[str, float] = {}

    @property
    def calibrated(self) -> bool:
        return self.config.thresholds == "calibrated"

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
            if ist_ok and "ist" in self.calibration:
                out.append(Evidence("IST", self._ist_evidence, self.calibration["ist"].positive))
            if cst_ok and "cst" in self.calibration:
                out.append(Evidence("CST", self._cst_evidence, self.calibration["cst"].positive))
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
        if self.calibrated:
            if self._relabel_epoch(epoch):
                logs |= self._calibrate(epoch, features)
            return logs
        if not self._prototype_epoch(epoch):
            return logs
        feats, classes, rows = self._known_positive_features(features)
        self.prototypes = self._cluster(feats, classes, rows, seed=epoch)
        logs["prototype_classes"] = float(self.prototypes.valid.any(dim=1).sum())
        return logs

    # calibrated pseudo labels ------------------------------------------------------------------------
    def _relabel_epoch(self, epoch: int) -> bool:
        """Whether this epoch decides new pseudo labels (calibrated mode)."""
        c = self.config
        if epoch < c.pseudo_label_epoch:
            return False
        if self.pseudo_targets is None:
            return True  # first time (or after a resume that carried none)
        return c.relabel_every > 0 and (epoch - c.pseudo_label_epoch) % c.relabel_every == 0

    def _gather_sorted(self, rows: torch.Tensor, *arrays: torch.Tensor) -> list[np.ndarray]:
        """Rows of every process in dataset-row order (each process scored its own share)."""
        group = self.collective
        if group.world_size > 1:
            rows = group.gather_rows(rows)
            arrays = tuple(group.gather_rows(a) for a in arrays)
        order = torch.argsort(rows.cpu(), stable=True)
        return [rows.cpu()[order].numpy(), *(a.cpu()[order].numpy() for a in arrays)]

    @torch.no_grad()
    def _calibrate(self, epoch: int, features: FeatureSource) -> dict[str, float]:
        """Score every training entry with each evidence source, calibrate per-class thresholds on the known
        entries, and fix this epoch's pseudo labels (``self.pseudo_targets``)."""
        c = self.config
        nan = float("nan")
        parts: dict[str, list[torch.Tensor]] = {
            k: [] for k in ("rows", "labels", "full", "logit", "ist", "semantic", "pooled")
        }
        positives: tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]] = ([], [], [])
        neighbours = c.use_cst and c.cst_neighbours > 0
        kept = 0
        for batch in features("train"):
            parts["rows"].append(batch.indices.long())
            parts["labels"].append(batch.labels.to(torch.int8))
            full = batch.full_labels if batch.full_labels is not None else torch.zeros_like(batch.labels)
            parts["full"].append(full.to(torch.int8))
            parts["logit"].append(batch.logits.float())
            if neighbours:
                parts["pooled"].append(_pooled_of(batch))
            if self.ist_head is not None:
                parts["ist"].append(self._ist_scores(batch))
            else:
                parts["ist"].append(torch.full(batch.logits.shape, nan, device=batch.logits.device))
            if c.use_cst:
                rows, classes = torch.nonzero(batch.labels > 0, as_tuple=True)
                positives[0].append(batch.semantic[rows, classes].float())
                positives[1].append(classes)
                positives[2].append(batch.indices.to(classes.device)[rows])
                # Small splits keep their features for the CST scores; large ones are read a second time.
                kept += batch.semantic.numel()
                if kept <= CALIBRATION_KEEP_ELEMENTS:
                    parts["semantic"].append(batch.semantic.float())
        if c.use_cst:
            feats = torch.cat(positives[0]) if positives[0] else torch.zeros(0, self.feature_dim)
            classes = torch.cat(positives[1]) if positives[1] else torch.zeros(0, dtype=torch.long)
            rows = torch.cat(positives[2]) if positives[2] else torch.zeros(0, dtype=torch.long)
            self.prototypes = self._cluster(feats, classes, rows, seed=epoch)
            # Cross-fitting: each half of the images is scored against prototypes of the other half only.
            half = rows % 2
            folds = (
                self._cluster(feats[half == 0], classes[half == 0], rows[half == 0], seed=epoch),
                self._cluster(feats[half == 1], classes[half == 1], rows[half == 1], seed=epoch),
            )
            if kept <= CALIBRATION_KEEP_ELEMENTS:
                semantic_batches = zip(parts["rows"], parts["semantic"], strict=True)
            else:
                semantic_batches = ((b.indices.long(), b.semantic.float()) for b in features("train"))
            parts["cst"] = [self._cross_fitted_cst(rows, semantic, folds) for rows, semantic in semantic_batches]
        else:
            parts["cst"] = [torch.full_like(logit, nan) for logit in parts["logit"]]
        parts.pop("semantic")
        if not parts["rows"]:
            return {}
        cat = {k: torch.cat(v) for k, v in parts.items() if v}
        names = ["labels", "full", "logit", "ist", "cst", *(["pooled"] if neighbours else [])]
        rows_np, *gathered = self._gather_sorted(cat["rows"], *(cat[name] for name in names))
        train = dict(zip(names, gathered, strict=True))
        labels, full, ist, cst = train["labels"].astype(np.int8), train["full"], train["ist"], train["cst"]
        prob = torch.sigmoid(torch.from_numpy(train["logit"])).numpy()
        scores: dict[str, np.ndarray] = {}
        thresholds: dict[str, ClassThresholds] = {}
        settings = (c.target_precision, c.negative_precision, c.calibration_min_positives)
        z = c.calibration_z
        # IST and CST score the category features, which the head fits to the known training labels: calibrated on
        # those entries they overstate the precision on unknown ones, so by default they are calibrated on validation.
        on_val = {
            "ist": c.use_ist and c.calibration_split == "validation",
            "cst": c.use_cst and c.calibration_split == "validation" and self.prototypes is not None,
        }
        module_scores = {
            name: score for name, score, used in (("ist", ist, c.use_ist), ("cst", cst, c.use_cst)) if used
        }
        for name, score in module_scores.items():
            scores[name] = score
            if not on_val[name]:
                thresholds[name] = calibrate(score, labels, *settings, z=z)
        rank_by = prob
        if c.classifier_evidence or neighbours or any(on_val.values()):
            # The classifier was fit to the training split's known entries; its validation scores are unbiased.
            val = self._validation_pass(features, with_pooled=neighbours, with_modules=any(on_val.values()))
            for name in (n for n, flag in on_val.items() if flag):
                thresholds[name] = (
                    calibrate(val[name], val["labels"], *settings, pooled=True, z=z)
                    if len(val["labels"])
                    else calibrate(module_scores[name], labels, *settings, z=z)  # no validation split
                )
            if neighbours and len(train["pooled"]) == len(rows_np):
                found = neighbour_evidence(
                    train["pooled"],
                    labels,
                    train["logit"],
                    val["pooled"],
                    val["logit"],
                    c.cst_neighbours,
                    c.neighbour_bank,
                )
                # Leave-one-out margins of known entries: calibrated on the training split like IST and CST.
                scores["neighbours"] = found.margin
                thresholds["neighbours"] = calibrate(found.margin, labels, *settings, z=z)
                if c.classifier_evidence and len(val["labels"]):
                    scores["joint"], rank_by = found.joint, found.joint
                    thresholds["joint"] = calibrate(found.joint_val, val["labels"], *settings, pooled=True, z=z)
            elif c.classifier_evidence and len(val["labels"]):
                vp = torch.sigmoid(torch.from_numpy(val["logit"])).numpy()
                scores["classifier"] = prob
                thresholds["classifier"] = calibrate(vp, val["labels"], *settings, pooled=True, z=z)
        decision = decide(
            labels, scores, thresholds, rank_by=rank_by, negatives=c.pseudo_negatives, cap_share=c.positive_cap
        )
        decision.targets = oracle_targets(decision.targets, labels, full, c.pseudo_label_oracle)
        table = torch.zeros(max(self.num_train, int(rows_np.max()) + 1), self.num_classes, dtype=torch.int8)
        table[torch.from_numpy(rows_np)] = torch.from_numpy(decision.targets)
        self.pseudo_targets = table.to(self.intra_threshold.device)
        self.calibration = thresholds
        has_truth = bool((full != 0).any())
        logs: dict[str, float] = {}
        for name, values in {**decision.sources, "all": decision.targets, **by_agreement(decision)}.items():
            for key, value in quality(values, labels, full if has_truth else None).items():
                logs[f"pseudo_{name}_{key}"] = value
        for name, t in thresholds.items():
            logs[f"calibrated_{name}_classes"] = float(np.isfinite(t.positive).sum())
        if self.prototypes is not None:
            logs["prototype_classes"] = float(self.prototypes.valid.any(dim=1).sum())
        return logs

    def _validation_pass(
        self, features: FeatureSource, with_pooled: bool, with_modules: bool = False
    ) -> dict[str, np.ndarray]:
        """Logits, labels (pooled features; IST and CST scores) of the whole validation split, the same on every
        process."""
        parts: dict[str, list[torch.Tensor]] = {"logit": [], "labels": [], "pooled": [], "ist": [], "cst": []}
        for batch in features("val"):
            parts["logit"].append(batch.logits.float())
            parts["labels"].append(batch.labels.to(torch.int8))
            if with_pooled:
                parts["pooled"].append(_pooled_of(batch))
            if with_modules and self.ist_head is not None:
                parts["ist"].append(self._ist_scores(batch))
            if with_modules and self.prototypes is not None:
                parts["cst"].append(self._prototype_scores(batch.semantic.float(), self.prototypes))
        device = self.intra_threshold.device
        out: dict[str, np.ndarray] = {}
        for name, values in parts.items():
            if not values:
                out[name] = np.zeros((0, self.num_classes), dtype=np.float32)
                continue
            # Under data parallelism every process calibrates on the whole validation split, so all agree.
            out[name] = self.collective.gather_rows(torch.cat(values).to(device)).cpu().numpy()
        return out

    def _ist_scores(self, batch: FeatureBatch) -> torch.Tensor:
        """Leave-one-out IST scores of a batch against its own known labels."""
        assert self.ist_head is not None
        return intra_scores_leave_one_out(self.ist_head(batch.semantic), batch.labels).float()

    @staticmethod
    def _prototype_scores(semantic: torch.Tensor, prototypes: Prototypes) -> torch.Tensor:
        """Mean cosine of each category feature to its class's prototypes (NaN: the class has none)."""
        similarity, available = prototype_similarity(semantic, prototypes)
        return similarity.masked_fill(~available.to(similarity.device), float("nan"))

    @staticmethod
    def _cross_fitted_cst(
        rows: torch.Tensor, semantic: torch.Tensor, folds: tuple[Prototypes, Prototypes]
    ) -> torch.Tensor:
        """CST scores of images against the prototypes of the other half of the images (NaN: none there)."""
        scored = [HST._prototype_scores(semantic, fold) for fold in folds]
        in_first_half = (rows.to(semantic.device) % 2 == 0)[:, None]
        return torch.where(in_first_half, scored[1], scored[0])

    def _classification_loss(
        self, logits: torch.Tensor, labels: torch.Tensor, ctx: StepContext
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Calibrated mode: BCE on known entries and, per phase, unknown-as-negative or pseudo-labelled ones."""
        c = self.config
        known = labels != 0
        if ctx.epoch >= c.pseudo_label_epoch and self.pseudo_targets is not None:
            pseudo = self.pseudo_targets[ctx.indices.to(self.pseudo_targets.device)].to(labels.device, labels.dtype)
            targets = torch.where(known, labels, pseudo)
            weights = torch.where(known, 1.0, torch.where(pseudo != 0, c.pseudo_label_weight, 0.0))
            loss = weighted_bce(logits, targets, weights)
            return loss, {"bce": float(loss.detach()), "pseudo_entries": float((~known & (pseudo != 0)).sum())}
        targets = torch.where(known, labels, torch.full_like(labels, -1))
        weights = torch.where(known, 1.0, c.unknown_negative_weight)
        loss = weighted_bce(logits, targets, weights)
        return loss, {"bce": float(loss.detach())}

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
        }
        return state

    def load_extra_state(self, state: dict[str, Any]) -> None:
        device = self.intra_threshold.device
        saved = state.get("prototypes")
        self.prototypes = None if saved is None else Prototypes.from_state_dict(saved).to(device)
        table = state.get("pseudo_targets")
        self.pseudo_targets = None if table is None else table.to(device)
        self.calibration = {
            name: ClassThresholds(np.asarray(t["positive"], dtype=float), np.asarray(t["negative"], dtype=float))
            for name, t in (state.get("calibration") or {}).items()
        }
