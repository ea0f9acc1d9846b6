"""The Lightning ``Trainer`` of a run: accelerator, strategy, precision, loggers and the atomic checkpoint IO."""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from hst.config import TrainConfig
from hst.engine.checkpoint_io import AtomicCheckpointIO
from hst.engine.epoch_log import EpochLine, silence_tips

RUN_DIR_ENV = "HST_RUN_DIR"
"""Set by rank 0 for the processes Lightning starts for ``trainer.devices > 1``: they write to its run folder."""


SPAWNING_STRATEGIES = ("ddp_spawn", "ddp_fork", "ddp_notebook", "spawn", "fork")


def quiet_lightning() -> None:
    # These messages are about Lightning's own defaults, not about the run; keep the output readable.
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*TreeSpec.*")
    warnings.filterwarnings("ignore", message=".*number of training batches.*")
    # Threshold tuning validates saved checkpoints with a bare trainer; the training callbacks are not needed.
    warnings.filterwarnings("ignore", message=".*callbacks used to create the checkpoint.*")
    # Frozen backbone stages are in eval mode on purpose (BatchNorm keeps ImageNet statistics).
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
    # Evaluation gathers every process's rows and drops the sampler's padding; epoch values are already global.
    warnings.filterwarnings("ignore", message=".*evaluated exactly once.*")
    warnings.filterwarnings("ignore", message=".*sync_dist=True.*")
    warnings.filterwarnings("ignore", message=".*find_unused_parameters=True.*")
    # A resumed run writes into its own folder on purpose; its CSV rows are carried over (see restore_csv).
    warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: "litlogger" not in record.getMessage() and "limit_train_batches=1.0" not in record.getMessage()
    )
    os.environ.setdefault("PL_DISABLE_FORK", "1")


def _launched_externally(config: TrainConfig) -> bool:
    """True when several processes are started by something else (torchrun, SLURM, one command per node)."""
    slurm = SLURMEnvironment.detect() and int(os.environ.get("SLURM_NTASKS", "1")) > 1
    return TorchElasticEnvironment.detect() or slurm or config.trainer.num_nodes > 1


def new_run_dir(config: TrainConfig) -> Path:
    inherited = os.environ.get(RUN_DIR_ENV)
    if inherited and os.environ.get("LOCAL_RANK", "0") != "0":
        return Path(inherited)  # a process Lightning started for rank 0's run
    name = config.trainer.run_name
    if _launched_externally(config):
        # Processes started apart cannot agree on a time stamp or on a free folder name: the name is given.
        if not name:
            raise ValueError(
                "set trainer.run_name when training runs in several separately started processes "
                "(torchrun, SLURM, trainer.num_nodes > 1), so that they all write to the same run folder"
            )
        path = Path(config.trainer.output_dir) / name
        if any((path / "checkpoints").glob("*.ckpt")):
            raise ValueError(f"{path} already holds a run; continue it with --resume {path} or pick another run_name")
        return path
    name = name or f"{config.method.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    base = Path(config.trainer.output_dir) / name
    # Never write into an earlier run's folder: its checkpoints and logs stay as they were.
    candidate, number = base, 1
    while candidate.exists() and any(candidate.iterdir()):
        number += 1
        candidate = base.with_name(f"{name}-{number}")
    return candidate


def process_count(config: TrainConfig) -> int:
    t = config.trainer
    devices = t.devices if isinstance(t.devices, int) and t.devices > 0 else 1
    return devices * max(t.num_nodes, 1)


def _strategy(config: TrainConfig) -> str:
    strategy = config.trainer.strategy
    if any(name in strategy for name in SPAWNING_STRATEGIES):
        raise ValueError(
            f"trainer.strategy={strategy!r} trains in processes apart from the calling one, whose results "
            "(metrics, thresholds) would be lost; use trainer.strategy=ddp"
        )
    if strategy in {"auto", "ddp"} and (process_count(config) > 1 or TorchElasticEnvironment.detect()):
        # Some parameters (thresholds before pseudo labelling, a disabled module's) get no gradient in
        # some epochs; DDP must be told, or it waits for their gradients forever.
        return "ddp_find_unused_parameters_true"
    return strategy


MIXED_PRECISIONS = ("16-mixed", "bf16-mixed", "16", "bf16", "16-true", "bf16-true")


def _on_cpu(config: TrainConfig) -> bool:
    accelerator = config.trainer.accelerator
    has_gpu = torch.cuda.is_available() or (hasattr(torch.backends, "mps") and torch.backends.mps.is_available())
    return accelerator == "cpu" or (accelerator == "auto" and not has_gpu)


def precision_setting(config: TrainConfig) -> tuple[str, str | None]:
    """The precision Lightning gets, and a note when the requested one falls back to 32-true on a CPU."""
    requested = str(config.trainer.precision)
    if requested in MIXED_PRECISIONS and _on_cpu(config):
        return "32-true", f"trainer.precision={requested} needs a GPU; training on the CPU in 32-true instead"
    return requested, None


def sync_batchnorm_setting(config: TrainConfig) -> tuple[bool, str | None]:
    """Whether BatchNorm is synchronised across processes (PyTorch does it on GPUs only), and a note if not."""
    if config.trainer.sync_batchnorm and _on_cpu(config):
        return False, "trainer.sync_batchnorm=true needs GPUs; each CPU process keeps its own BatchNorm statistics"
    return config.trainer.sync_batchnorm, None


def build_trainer(
    config: TrainConfig,
    run_dir: Path,
    callbacks: list[L.Callback],
    log: bool = True,
    purge_step: int | None = None,
) -> L.Trainer:
    t = config.trainer
    loggers: list[Any] = []
    if log:
        tensorboard_options = {} if purge_step is None else {"purge_step": purge_step}
        loggers = [
            TensorBoardLogger(str(run_dir), name="tensorboard", version="", **tensorboard_options),
            CSVLogger(str(run_dir), name="csv", version=""),
        ]
    # A live bar on a terminal only; in a log file (CI, nohup) one plain line per epoch instead.
    terminal = sys.stdout.isatty()
    if t.progress_bar and terminal:
        from lightning.pytorch.callbacks import RichProgressBar

        callbacks = [*callbacks, RichProgressBar(leave=True)]
    elif not terminal:
        callbacks = [*callbacks, EpochLine(run_dir.name)]
    silence_tips()
    return L.Trainer(
        max_epochs=t.epochs,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=_strategy(config),
        precision=precision_setting(config)[0],  # type: ignore[arg-type]
        sync_batchnorm=sync_batchnorm_setting(config)[0],
        deterministic=t.deterministic,
        logger=loggers or False,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=t.progress_bar and terminal,
        enable_model_summary=False,
        log_every_n_steps=t.log_every_n_steps,
        limit_train_batches=t.limit_train_batches,
        default_root_dir=str(run_dir),
        num_sanity_val_steps=0,
    )
