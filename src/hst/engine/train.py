"""``hst train`` and ``hst evaluate``: Lightning fit / validate / test with saved config and logs."""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from hst.config import config_to_dict, save_config
from hst.engine.cache import FeatureCache, extract_features
from hst.engine.config import TrainConfig
from hst.engine.data import PartialLabelDataModule, Splits, describe_splits, prepare_splits
from hst.engine.module import PartialLabelModule
from hst.methods import apply_model_preset


@dataclass
class RunResult:
    run_dir: Path
    best_checkpoint: Path | None
    test_metrics: dict[str, Any]
    val_metrics: dict[str, Any]
    summary_lines: list[str]


def _quiet_lightning() -> None:
    # These messages are about Lightning's own defaults, not about the run; keep the output readable.
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*TreeSpec.*")
    warnings.filterwarnings("ignore", message=".*number of training batches.*")
    # Frozen backbone stages are in eval mode on purpose (BatchNorm keeps ImageNet statistics).
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: "litlogger" not in record.getMessage() and "limit_train_batches=1.0" not in record.getMessage()
    )
    os.environ.setdefault("PL_DISABLE_FORK", "1")


def _run_dir(config: TrainConfig) -> Path:
    name = config.trainer.run_name or f"{config.method.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    base = Path(config.trainer.output_dir) / name
    # Never write into an earlier run's folder: its checkpoints and logs stay as they were.
    candidate, number = base, 1
    while candidate.exists() and any(candidate.iterdir()):
        number += 1
        candidate = base.with_name(f"{name}-{number}")
    return candidate


def _trainer(config: TrainConfig, run_dir: Path, callbacks: list[L.Callback], log: bool = True) -> L.Trainer:
    t = config.trainer
    loggers: list[Any] = []
    if log:
        loggers = [
            TensorBoardLogger(str(run_dir), name="tensorboard", version=""),
            CSVLogger(str(run_dir), name="csv", version=""),
        ]
    if t.progress_bar:
        from lightning.pytorch.callbacks import RichProgressBar

        callbacks = [*callbacks, RichProgressBar(leave=True)]
    return L.Trainer(
        max_epochs=t.epochs,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=t.precision,  # type: ignore[arg-type]
        deterministic=t.deterministic,
        logger=loggers or False,
        callbacks=callbacks,
        enable_progress_bar=t.progress_bar,
        enable_model_summary=False,
        log_every_n_steps=t.log_every_n_steps,
        limit_train_batches=t.limit_train_batches,
        default_root_dir=str(run_dir),
        num_sanity_val_steps=0,
    )


def _feature_caches(
    config: TrainConfig, splits: Splits, module: PartialLabelModule
) -> tuple[FeatureCache, FeatureCache] | None:
    """Extract (or reuse) backbone features when the backbone is frozen; None when images are needed."""
    mode = config.data.feature_cache
    if mode not in {"auto", "off"}:
        raise ValueError(f"data.feature_cache must be 'auto' or 'off', got {mode!r}")
    if mode == "off" or config.model.trainable != "none":
        return None
    assert splits.source is not None and splits.test_source is not None
    backbone = module.network.backbone
    kwargs = {
        "image_size": config.data.image_size,
        "cache_dir": Path(config.data.cache_dir),
        "batch_size": config.data.eval_batch_size,
        "num_workers": config.data.num_workers,
        "progress": config.trainer.progress_bar,
        "channels_last": config.model.channels_last,
    }
    source_cache = extract_features(backbone, splits.source, **kwargs)
    test_cache = source_cache
    if splits.test_source is not splits.source:
        test_cache = extract_features(backbone, splits.test_source, **kwargs)
    module.features_cached = True
    return source_cache, test_cache


def train(config: TrainConfig) -> RunResult:
    """Fit on the training split, select the best epoch on validation, then test that checkpoint."""
    _quiet_lightning()
    config = apply_model_preset(config)
    if config.trainer.select_on not in {"val", "test"}:
        raise ValueError(f"trainer.select_on must be 'val' or 'test', got {config.trainer.select_on!r}")
    L.seed_everything(config.trainer.seed, workers=True, verbose=False)
    torch.set_float32_matmul_precision("high")
    run_dir = _run_dir(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / "config.yaml")

    splits = prepare_splits(config.data)
    summary = describe_splits(splits)
    module = PartialLabelModule(config, splits.train.class_names, splits.train.labels, len(splits.train))
    backbone = module.network.backbone
    caches = _feature_caches(config, splits, module)
    if caches is not None:
        summary.append(f"frozen backbone: training from cached features in {config.data.cache_dir}")
    datamodule = PartialLabelDataModule(
        splits, config.data, backbone.mean, backbone.std, seed=config.trainer.seed, caches=caches
    )
    if config.trainer.select_on == "test":
        # Published-protocol parity only: the reported test score then selects its own epoch.
        datamodule.val_dataloader = datamodule.test_dataloader  # type: ignore[method-assign]
        summary.append("WARNING: selecting the best epoch on the TEST set (trainer.select_on=test)")
    checkpoint = ModelCheckpoint(
        dirpath=str(run_dir / "checkpoints"),
        filename="best",
        monitor="val/mAP",
        mode="max",
        save_last=config.trainer.save_last,
        save_top_k=1,
        auto_insert_metric_name=False,
    )
    trainer = _trainer(config, run_dir, [checkpoint])
    trainer.fit(module, datamodule=datamodule)
    val_metrics = dict(module.last_metrics.get("val", {}))
    best = Path(checkpoint.best_model_path) if checkpoint.best_model_path else None
    trainer.test(module, datamodule=datamodule, ckpt_path=str(best) if best else None, verbose=False)
    test_metrics = dict(module.last_metrics.get("test", {}))
    if best is not None:
        summary.append(f"best epoch by val/mAP: {best.name} (score {float(checkpoint.best_model_score or 0):.2f})")
    _write_json(run_dir / "metrics.json", {"test": test_metrics, "val_last_epoch": val_metrics})
    (run_dir / "summary.txt").write_text("\n".join(summary) + "\n")
    return RunResult(run_dir, best, test_metrics, val_metrics, summary)


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(path)


def load_module(checkpoint_path: Path) -> tuple[PartialLabelModule, TrainConfig]:
    """Rebuild the model of a checkpoint (config and class names travel inside it)."""
    if not checkpoint_path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint_path}")
    payload = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    for key in ("hst_config", "hst_class_names", "state_dict"):
        if key not in payload:
            raise ValueError(f"{checkpoint_path}: not an hst checkpoint (missing {key!r})")
    config = _from_dict(payload["hst_config"])
    class_names = payload["hst_class_names"]
    # The adjacency is a saved buffer; a placeholder label matrix only sizes it before loading.
    placeholder = np.zeros((1, len(class_names)), dtype=np.int8)
    embed_shape = payload["state_dict"]["network.sarl.embeddings"].shape
    # Weights, embeddings and graph come from the checkpoint; nothing pretrained is read.
    config.model.weights = "none"
    module = PartialLabelModule(
        config, class_names, placeholder, num_train=1, embeddings=np.zeros(tuple(embed_shape), np.float32)
    )
    module.load_state_dict(payload["state_dict"])
    module.on_load_checkpoint(payload)
    module.eval()
    return module, config


def _from_dict(values: dict[str, Any]) -> TrainConfig:
    from omegaconf import OmegaConf

    merged = OmegaConf.merge(OmegaConf.structured(TrainConfig), OmegaConf.create(values))
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def evaluate_checkpoint(checkpoint_path: Path, data_spec: str, batch_size: int = 64) -> dict[str, Any]:
    """Score a dataset with a trained checkpoint and return the metrics dict."""
    from torch.utils.data import DataLoader

    from hst.data.spec import load_dataset
    from hst.engine.data import ImageLabelDataset, build_transform
    from hst.metrics import evaluate

    module, config = load_module(checkpoint_path)
    data = load_dataset(data_spec)
    if data.class_names != module.class_names:
        raise ValueError(f"{data_spec}: classes differ from the checkpoint's {len(module.class_names)} classes")
    backbone = module.network.backbone
    transform = build_transform(config.data.image_size, "none", backbone.mean, backbone.std)
    loader = DataLoader(ImageLabelDataset(data, data.labels, data.labels, transform), batch_size=batch_size)
    scores = []
    with torch.no_grad():
        for _, images, _, _ in loader:
            scores.append(module(images))
    result = evaluate(torch.cat(scores).numpy(), data.labels, data.class_names)
    return result.to_dict()


__all__ = ["RunResult", "config_to_dict", "evaluate_checkpoint", "load_module", "train"]
