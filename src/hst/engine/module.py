"""The LightningModule: a network, a method, and evaluation with the project's metrics."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from hst.config import TrainConfig
from hst.engine.trained_model import TrainedModel
from hst.methods import StepContext
from hst.methods.base import FeatureBatch, TorchDistributed
from hst.metrics import evaluate, positives_only_labels
from hst.models.network import NetworkOutput


def _parameter_groups(params: list[torch.nn.Parameter], lr: float, optim: Any) -> list[dict[str, Any]]:
    """Adam groups at ``lr``: decayed weights, then 1-D parameters (biases, norms) undecayed unless asked, since
    decay would pull the class biases away from the class prior they start at."""
    decayed = [p for p in params if optim.decay_biases or p.ndim > 1]
    undecayed = [p for p in params if not optim.decay_biases and p.ndim <= 1]
    groups: list[dict[str, Any]] = [{"params": decayed, "lr": lr, "weight_decay": optim.weight_decay}]
    if undecayed:
        groups.append({"params": undecayed, "lr": lr, "weight_decay": 0.0})
    return groups


class PartialLabelModule(TrainedModel, L.LightningModule):
    """A network and a method trained together (:class:`~hst.engine.trained_model.TrainedModel`, whose state and
    checkpoint entries it shares): the method turns the network's output and the partial labels into the loss
    (:class:`~hst.methods.base.Method`); validation and test are scored with :func:`hst.metrics.evaluate`.
    """

    def __init__(
        self,
        config: TrainConfig,
        class_names: list[str],
        train_labels: np.ndarray,
        num_train: int,
        embeddings: np.ndarray | None = None,
    ) -> None:
        super().__init__(config, class_names, train_labels, num_train, embeddings)
        self._outputs: dict[str, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {"val": [], "test": []}
        self.last_metrics: dict[str, dict[str, Any]] = {}
        self.last_scores: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        """Per stage, the logits and evaluation labels of the last evaluation epoch."""

    features_cached: bool = False
    """True when batches hold cached backbone feature maps instead of images."""
    features_pooled: bool = False
    """True when the cached maps are already 2×2 average-pooled."""

    front_cached: bool = False
    """True when batches hold the cached output of the backbone's frozen front (the rest still trains)."""

    def _network(self, inputs: torch.Tensor) -> NetworkOutput:
        if self.front_cached:
            return self.network.from_front(inputs)
        if self.features_cached:
            return self.network.head(inputs, pooled=self.features_pooled)
        return self.network(inputs)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self._network(images).logits

    # ---- data parallelism -----------------------------------------------------------------------
    @property
    def world_size(self) -> int:
        return self.method.collective.world_size

    def setup(self, stage: str) -> None:
        if self._trainer is not None and self.trainer.world_size > 1:
            self.method.collective = TorchDistributed(self.trainer.strategy.root_device)

    # ---- training -------------------------------------------------------------------------------
    def _feature_source(self, split: str = "train") -> Iterator[FeatureBatch]:
        datamodule = self.trainer.datamodule  # type: ignore[attr-defined]
        if split not in {"train", "val"}:
            raise ValueError(f"feature source split must be 'train' or 'val', got {split!r}")
        # The class's own val loader: under select_on=test the instance's is the test split.
        loader = datamodule.features_dataloader() if split == "train" else type(datamodule).val_dataloader(datamodule)
        group = self.method.collective
        if group.world_size > 1:
            # Each process extracts every world_size-th row; the method gathers what it needs.
            rows = list(range(group.rank, len(loader.dataset), group.world_size))  # type: ignore[arg-type]
            loader = DataLoader(
                loader.dataset,
                batch_size=loader.batch_size,
                sampler=rows,
                num_workers=loader.num_workers,
                collate_fn=loader.collate_fn,
            )
        was_training = self.network.training
        self.network.eval()
        try:
            with torch.no_grad():
                for indices, images, labels, full_labels in loader:
                    output = self._network(images.to(self.device))
                    yield FeatureBatch(
                        indices.to(self.device),
                        output.logits,
                        output.semantic,
                        labels.to(self.device),
                        full_labels.to(self.device),
                        output.pooled,
                    )
        finally:
            self.network.train(was_training)

    def on_train_epoch_start(self) -> None:
        logs = self.method.on_train_epoch_start(self.current_epoch, self._feature_source)
        for key, value in logs.items():
            self.log(f"method/{key}", float(value), on_epoch=True, on_step=False)

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_index: int) -> torch.Tensor:
        indices, images, labels, full_labels = batch
        output = self._network(images)
        ctx = StepContext(
            epoch=self.current_epoch,
            batch_index=batch_index,
            batches_per_epoch=max(int(self.trainer.num_training_batches), 1),
            indices=indices,
            full_labels=full_labels,
        )
        result = self.method.training_loss(output, labels, ctx)
        self._check_finite(result.loss, result.logs)
        # Under data parallelism the logged training values are means over all processes.
        options: dict[str, Any] = {"batch_size": len(images), "sync_dist": self.world_size > 1}
        self.log("train/loss", result.loss, on_step=True, on_epoch=True, prog_bar=True, **options)
        for key, value in result.logs.items():
            self.log(f"train/{key}", value, on_step=False, on_epoch=True, **options)
        return result.loss

    def _check_finite(self, loss: torch.Tensor, parts: dict[str, float]) -> None:
        """Stop on a NaN/inf loss, naming the step; under data parallelism every process stops together."""
        finite = bool(torch.isfinite(loss.detach()))
        where = f"epoch {self.current_epoch}, step {self.global_step}"
        if self.world_size > 1:
            # A process stopping alone would leave the others waiting forever in the gradient all-reduce.
            failed = float(self.method.collective.sum(torch.tensor([0.0 if finite else 1.0], device=self.device)))
            if finite and failed > 0:
                raise FloatingPointError(f"non-finite training loss on another process at {where}")
        if not finite:
            raise FloatingPointError(f"non-finite training loss at {where}: {float(loss)}; parts {parts}")

    def on_train_epoch_end(self) -> None:
        logs = dict(self.method.on_train_epoch_end(self.current_epoch))
        sums = sorted(key for key in logs if key.startswith("epoch_"))
        if self.world_size > 1 and sums:
            # Per-epoch counts are sums over this process's batches: add the other processes' shares.
            local = torch.tensor([float(logs[key]) for key in sums], dtype=torch.float64, device=self.device)
            logs |= dict(zip(sums, self.method.collective.sum(local).tolist(), strict=True))
        for key, value in logs.items():
            self.log(f"method/{key}", float(value), on_epoch=True, on_step=False)

    # ---- evaluation -----------------------------------------------------------------------------
    def _eval_step(self, stage: str, batch: tuple[torch.Tensor, ...]) -> None:
        indices, images, _, eval_labels = batch
        logits = self._network(images).logits
        self._outputs[stage].append((indices.cpu(), logits.detach().float().cpu(), eval_labels.cpu()))

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_index: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: tuple[torch.Tensor, ...], batch_index: int) -> None:
        self._eval_step("test", batch)

    def _gather_outputs(
        self, outputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Logits and labels of the whole evaluation set, each row once, in dataset order."""
        num_classes = len(self.class_names)
        if outputs:
            indices = torch.cat([o[0] for o in outputs]).long()
            scores, labels = torch.cat([o[1] for o in outputs]), torch.cat([o[2] for o in outputs])
        else:
            indices = torch.zeros(0, dtype=torch.long)
            scores, labels = torch.zeros(0, num_classes), torch.zeros(0, num_classes, dtype=torch.int8)
        if self.world_size == 1:
            return (scores, labels) if outputs else None
        group = self.method.collective
        indices, scores, labels = group.gather_rows(indices), group.gather_rows(scores), group.gather_rows(labels)
        # The distributed sampler pads the shares with repeated rows: keep each row once, in row order.
        order = torch.argsort(indices, stable=True)
        indices, scores, labels = indices[order], scores[order], labels[order]
        first = torch.ones_like(indices, dtype=torch.bool)
        first[1:] = indices[1:] != indices[:-1]
        return (scores[first], labels[first]) if bool(first.any()) else None

    def _eval_epoch_end(self, stage: str) -> None:
        outputs = self._outputs[stage]
        self._outputs[stage] = []
        if self.trainer.sanity_checking:
            return
        gathered = self._gather_outputs(outputs)
        if gathered is None:
            return
        scores, labels = gathered[0].numpy(), gathered[1].numpy()
        self.last_scores[stage] = (scores, labels)
        # A validation class without a known negative would score AP 100 for any model: rank its unlabelled entries.
        judged = positives_only_labels(labels) if stage == "val" else labels
        with warnings.catch_warnings():
            # Small validation splits may miss rare classes; they are left out of mAP on purpose.
            warnings.simplefilter("ignore")
            result = evaluate(scores, judged, self.class_names)
        self.last_metrics[stage] = result.to_dict()
        self.log(f"{stage}/mAP", result.mAP, prog_bar=True)
        self.log(f"{stage}/OF1", result.OF1)
        self.log(f"{stage}/CF1", result.CF1)

    def _share_buffers(self) -> None:
        """Under data parallelism, rank 0's buffers on every process before evaluating.

        Each process updates its BatchNorm statistics with its own share of a training batch; rank 0's are
        the ones a checkpoint keeps. Whether DDP re-sends them depends on how Lightning routes the
        evaluation step, so they are sent here explicitly.
        """
        if self.world_size == 1:
            return
        group = self.method.collective
        with torch.no_grad():
            for buffer in self.buffers():
                buffer.copy_(group.broadcast(buffer))

    def on_validation_epoch_start(self) -> None:
        self._share_buffers()

    def on_test_epoch_start(self) -> None:
        self._share_buffers()

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def predict_step(self, batch: tuple[torch.Tensor, ...], batch_index: int) -> torch.Tensor:
        return torch.sigmoid(self._network(batch[1]).logits)

    # ---- optimisation ---------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        optim = self.config.optim
        thresholds = self.method.threshold_parameters()
        threshold_ids = {id(p) for p in thresholds}
        trainable = [p for p in self.parameters() if p.requires_grad and id(p) not in threshold_ids]
        if optim.backbone_lr_scale == 1.0:
            groups = _parameter_groups(trainable, optim.lr, optim)  # the grouping older checkpoints resume into
        else:
            backbone_ids = {id(p) for p in self.network.backbone.parameters()}
            head = [p for p in trainable if id(p) not in backbone_ids]
            backbone = [p for p in trainable if id(p) in backbone_ids]
            groups = _parameter_groups(head, optim.lr, optim)
            if backbone:
                groups += _parameter_groups(backbone, optim.lr * optim.backbone_lr_scale, optim)
        if thresholds:
            if self.config.method.threshold_param_group:
                m = self.config.method
                groups.append({"params": thresholds, "lr": m.threshold_lr, "weight_decay": m.threshold_weight_decay})
            else:
                groups[0]["params"] = groups[0]["params"] + thresholds
        optimizer = torch.optim.Adam(groups)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=optim.step_size, gamma=optim.gamma)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    # ---- checkpoint extras ----------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint.update(self.checkpoint_extras())


def load_module(checkpoint_path: Path | str) -> tuple[PartialLabelModule, TrainConfig]:
    """:meth:`PartialLabelModule.from_checkpoint` and the config it was built from."""
    module = PartialLabelModule.from_checkpoint(checkpoint_path)
    return module, module.config
