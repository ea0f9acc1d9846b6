"""``hst train``: Lightning fit / validate / test with saved config and logs.

Fault tolerance: checkpoints are written atomically (temporary file, fsync, rename) and the previous
``last.ckpt`` is kept as ``last.ckpt.prev``; :func:`resume_training` continues a run in its own folder
from the last good end-of-epoch checkpoint, restoring everything the next epoch depends on (weights,
optimizer, scheduler, loop counters, method state, the RNG streams and the shuffling generator), so a
resumed run ends bit for bit where an uninterrupted one would. A run stopped mid-epoch repeats that epoch
from its start. Data parallelism: see ``docs/distributed.md``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from hst.checkpoint import BEST_CHECKPOINT, CHECKPOINT_FOLDER, LAST_CHECKPOINT
from hst.config import ConfigError, TrainConfig, resolve_config, save_config
from hst.data.splits import Splits, describe_splits, prepare_splits
from hst.engine.decision_thresholds import tune_checkpoints, write_json
from hst.engine.module import PartialLabelModule
from hst.engine.resume import ResumableData, ResumeState, prepare_resume, restore_csv
from hst.engine.trainer import (
    RUN_DIR_ENV,
    build_trainer,
    new_run_dir,
    precision_setting,
    process_count,
    quiet_lightning,
    sync_batchnorm_setting,
)
from hst.feature_cache import FeatureCache, extract_split_features
from hst.io import folder_lock, write_text_atomic
from hst.methods import apply_model_preset
from hst.midlevel_cache import FrontCache, cacheable_augment, extract_split_fronts

log = logging.getLogger(__name__)

KILL_AT_STEP_ENV = "HST_FAULT_KILL_AT_STEP"
"""Fault-injection hook for resume tests: SIGKILL the training process when it reaches this global step."""


@dataclass
class RunResult:
    run_dir: Path
    best_checkpoint: Path | None
    test_metrics: dict[str, Any]
    val_metrics: dict[str, Any]
    summary_lines: list[str]
    rank: int = 0
    """Global rank of this process; under data parallelism only rank 0 writes the run's files and reports."""


class _KillAtStep(L.Callback):
    """Fault injection for resume tests (env ``HST_FAULT_KILL_AT_STEP``): SIGKILL at a global step."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def _feature_caches(
    config: TrainConfig, splits: Splits, module: PartialLabelModule
) -> tuple[FeatureCache, FeatureCache] | tuple[FrontCache, FrontCache] | None:
    """Extract (or reuse) what the frozen part of the backbone computes: its final maps when all of it is frozen,
    the maps of its frozen front when only the rest trains; None when images are needed."""
    # YAML reads a bare `off` as false, which the string field then holds as 'False'
    mode = "off" if config.data.feature_cache in {"False", "false"} else config.data.feature_cache
    if mode not in {"auto", "off"}:
        raise ValueError(f"data.feature_cache must be 'auto' or 'off', got {mode!r}")
    if mode == "off":
        return None
    assert splits.source is not None and splits.test_source is not None
    backbone = module.network.backbone
    if config.model.trainable != "none":
        if backbone.split is None:
            return None
        if not cacheable_augment(config.data.augment):
            log.warning(
                "data.augment=%s cannot be applied after the backbone's frozen front: every step runs the whole "
                "backbone (data.augment=flip trains from cached front maps, several times faster)",
                config.data.augment,
            )
            return None
        with torch.random.fork_rng():
            fronts = extract_split_fronts(
                backbone, splits, config.data, config.model.channels_last, config.trainer.progress_bar
            )
        module.front_cached = True
        return fronts
    # Iterating a DataLoader draws from the global generator: a run that builds the cache must train like one that
    # reuses it.
    with torch.random.fork_rng():
        caches = extract_split_features(
            backbone, splits, config.data, config.model.channels_last, config.trainer.progress_bar
        )
    module.features_cached = True
    # Heads that pool 2×2 first (or average globally) read the pooled maps from memory: 4× less data per epoch.
    pools = config.model.head == "linear" or config.model.avg_pool_2x2
    module.features_pooled = pools and all(cache.poolable() for cache in caches)
    return caches


def resume_training(run_dir: Path | str, overrides: Sequence[str] = ()) -> RunResult:
    """Continue the run in ``run_dir`` with its saved ``config.yaml`` (plus ``overrides``, e.g. more epochs)."""
    folder = Path(run_dir)
    config_file = folder / "config.yaml"
    if not config_file.is_file():
        raise FileNotFoundError(f"{folder}: not a run folder (no config.yaml)")
    config = resolve_config(TrainConfig, config_file, list(overrides))
    return train(config, resume=folder)


def train(config: TrainConfig, resume: Path | str | None = None, callbacks: Sequence[L.Callback] = ()) -> RunResult:
    """Fit on the training split, select the best epoch on validation, then test that checkpoint.

    ``resume``: a run folder to continue in place from its last good checkpoint (see :func:`resume_training`);
    ``callbacks``: extra Lightning callbacks for the fit.
    """
    quiet_lightning()
    config = apply_model_preset(config)
    if config.trainer.select_on not in {"val", "test"}:
        raise ValueError(f"trainer.select_on must be 'val' or 'test', got {config.trainer.select_on!r}")
    if resume is not None and config.data.num_workers > 0:
        raise ConfigError(
            f"hst train --resume {resume}: data.num_workers={config.data.num_workers} is refused, because the "
            "random state of data-loader worker processes (augmentation, and the shuffling of persistent workers) "
            "is not saved in checkpoints, so the resumed run could not repeat the original. Resume with "
            "data.num_workers=0 (exact from the checkpoint on, loading in the main process)"
        )
    L.seed_everything(config.trainer.seed, workers=True, verbose=False)
    torch.set_float32_matmul_precision("high")
    run_dir = Path(resume) if resume is not None else new_run_dir(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    # One writer per run folder; the processes of a data-parallel run write into rank 0's folder under its lock.
    lock = folder_lock(run_dir, "run") if _env_rank() == 0 else contextlib.nullcontext()
    with lock:
        return _train_in(config, run_dir, resume, callbacks)


def _env_rank() -> int:
    """This process's global rank as launchers announce it before any process group exists (0 when alone)."""
    for key in ("RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return int(os.environ.get("NODE_RANK", "0") or 0) + int(os.environ.get("LOCAL_RANK", "0") or 0)


def _train_in(
    config: TrainConfig, run_dir: Path, resume: Path | str | None, callbacks: Sequence[L.Callback]
) -> RunResult:
    start, notes, kept_rows, purge_step = prepare_resume(run_dir) if resume is not None else (None, [], None, None)
    batchnorm_note = sync_batchnorm_setting(config)[1] if process_count(config) > 1 else None
    for note in (precision_setting(config)[1], batchnorm_note):
        if note:
            log.warning(note)
            notes.append(note)

    state = ResumeState()
    checkpoint = ModelCheckpoint(
        dirpath=str(run_dir / CHECKPOINT_FOLDER),
        filename=BEST_CHECKPOINT.removesuffix(".ckpt"),
        monitor="val/mAP",
        mode="max",
        save_top_k=1,
        auto_insert_metric_name=False,
    )
    fit_callbacks: list[L.Callback] = [checkpoint, state, *callbacks]
    last: ModelCheckpoint | None = None
    if config.trainer.save_last:
        # Lightning's save_last refreshes last.ckpt only in epochs that improve the best; this one writes every epoch.
        last = ModelCheckpoint(
            dirpath=str(run_dir / CHECKPOINT_FOLDER),
            filename=LAST_CHECKPOINT.removesuffix(".ckpt"),
            save_top_k=1,
            enable_version_counter=False,
        )
        fit_callbacks.append(last)
    if config.trainer.early_stopping_patience > 0:
        patience = config.trainer.early_stopping_patience
        fit_callbacks.append(EarlyStopping(monitor="val/mAP", mode="max", patience=patience, check_finite=False))
    if os.environ.get(KILL_AT_STEP_ENV):
        fit_callbacks.append(_KillAtStep(int(os.environ[KILL_AT_STEP_ENV])))
    trainer = build_trainer(config, run_dir, fit_callbacks, purge_step=purge_step)
    is_zero = trainer.is_global_zero
    if is_zero:
        if kept_rows is not None:
            restore_csv(trainer, *kept_rows)
        save_config(config, run_dir / "config.yaml")

    splits = prepare_splits(config.data)
    summary = describe_splits(splits) + notes
    module = PartialLabelModule(config, splits.train.class_names, splits.train.labels, len(splits.train))
    module.method.calibration_labels = splits.train_calibration
    backbone = module.network.backbone
    caches = _feature_caches(config, splits, module)
    if module.front_cached:
        summary.append(f"backbone front frozen: training its rest from cached front maps in {config.data.cache_dir}")
    elif caches is not None:
        summary.append(f"frozen backbone: training from cached features in {config.data.cache_dir}")
    datamodule = ResumableData(
        splits,
        config.data,
        backbone.mean,
        backbone.std,
        seed=config.trainer.seed,
        caches=caches,
        pooled=module.features_pooled,
    )
    state.datamodule = datamodule
    if config.trainer.select_on == "test":
        # Published-protocol parity only: the reported test score then selects its own epoch.
        datamodule.val_dataloader = datamodule.test_dataloader  # type: ignore[method-assign]
        summary.append("WARNING: selecting the best epoch on the TEST set (trainer.select_on=test)")
    if trainer.world_size > 1:
        summary.append(
            f"data parallel: {trainer.world_size} processes × batch {config.data.batch_size} = "
            f"{trainer.world_size * config.data.batch_size} images per step"
        )
    previous_env = os.environ.get(RUN_DIR_ENV)
    if trainer.world_size > 1:
        os.environ[RUN_DIR_ENV] = str(run_dir)  # inherited by the processes Lightning starts for the fit
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(start) if start is not None else None)
    finally:
        if previous_env is None:
            os.environ.pop(RUN_DIR_ENV, None)
        else:
            os.environ[RUN_DIR_ENV] = previous_env
    val_metrics = dict(module.last_metrics.get("val", {}))
    best = Path(checkpoint.best_model_path) if checkpoint.best_model_path else None
    trainer.test(module, datamodule=datamodule, ckpt_path=str(best) if best else None, verbose=False)
    test_metrics = dict(module.last_metrics.get("test", {}))
    if best is not None:
        summary.append(f"best epoch by val/mAP: {best.name} (score {float(checkpoint.best_model_score or 0):.2f})")
    # The files themselves: the last-epoch callback's own record of its path is not kept across trainer.test.
    last_file = run_dir / CHECKPOINT_FOLDER / LAST_CHECKPOINT
    written = [p for p in (last_file if last is not None and last_file.is_file() else None, best) if p is not None]
    summary.extend(tune_checkpoints(config, run_dir, module, datamodule, written, best))
    if is_zero:
        write_json(run_dir / "metrics.json", {"test": test_metrics, "val_last_epoch": val_metrics})
        write_text_atomic(run_dir / "summary.txt", "\n".join(summary) + "\n")
    return RunResult(run_dir, best, test_metrics, val_metrics, summary, rank=trainer.global_rank)


__all__ = ["KILL_AT_STEP_ENV", "RunResult", "resume_training", "train"]
