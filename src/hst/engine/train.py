"""``hst train`` and ``hst evaluate``: Lightning fit / validate / test with saved config and logs.

Fault tolerance: checkpoints are written atomically (temporary file, fsync, rename) and the previous
``last.ckpt`` is kept as ``last.ckpt.prev``; :func:`resume_training` continues a run in its own folder
from the last good end-of-epoch checkpoint, restoring everything the next epoch depends on (weights,
optimizer, scheduler, loop counters, method state, the RNG streams and the shuffling generator), so a
resumed run ends bit for bit where an uninterrupted one would. A run stopped mid-epoch repeats that epoch
from its start. Data parallelism: see ``docs/distributed.md``.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import random
import signal
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.utils.data import DataLoader

from hst.config import ConfigError, TrainConfig, config_to_dict, resolve_config, save_config
from hst.engine.cache import FeatureCache, extract_split_features
from hst.engine.data import PartialLabelDataModule, Splits, describe_splits, prepare_splits
from hst.engine.epoch_log import EpochLine, silence_tips
from hst.engine.module import DEFAULT_THRESHOLD, PartialLabelModule, plain
from hst.io import atomic_path, folder_lock, write_text_atomic
from hst.methods import apply_model_preset

log = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.ckpt"
PREVIOUS_CHECKPOINT = "last.ckpt.prev"
"""The ``last.ckpt`` before the newest one; the fallback when the newest does not load."""
DAMAGED_CHECKPOINT = "last.ckpt.damaged"
"""Where a resumed run moves a ``last.ckpt`` that did not load."""
RUN_DIR_ENV = "HST_RUN_DIR"
"""Set by rank 0 for the processes Lightning starts for ``trainer.devices > 1``: they write to its run folder."""
KILL_AT_STEP_ENV = "HST_FAULT_KILL_AT_STEP"
"""Fault-injection hook for resume tests: SIGKILL the training process when it reaches this global step."""
SPAWNING_STRATEGIES = ("ddp_spawn", "ddp_fork", "ddp_notebook", "spawn", "fork")


@dataclass
class RunResult:
    run_dir: Path
    best_checkpoint: Path | None
    test_metrics: dict[str, Any]
    val_metrics: dict[str, Any]
    summary_lines: list[str]
    rank: int = 0
    """Global rank of this process; under data parallelism only rank 0 writes the run's files and reports."""


def _quiet_lightning() -> None:
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
    # A resumed run writes into its own folder on purpose; its CSV rows are carried over (see _restore_csv).
    warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: "litlogger" not in record.getMessage() and "limit_train_batches=1.0" not in record.getMessage()
    )
    os.environ.setdefault("PL_DISABLE_FORK", "1")


def _launched_externally(config: TrainConfig) -> bool:
    """True when several processes are started by something else (torchrun, SLURM, one command per node)."""
    slurm = SLURMEnvironment.detect() and int(os.environ.get("SLURM_NTASKS", "1")) > 1
    return TorchElasticEnvironment.detect() or slurm or config.trainer.num_nodes > 1


def _run_dir(config: TrainConfig) -> Path:
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


def _processes(config: TrainConfig) -> int:
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
    if strategy in {"auto", "ddp"} and (_processes(config) > 1 or TorchElasticEnvironment.detect()):
        # Some parameters (thresholds before pseudo labelling, a disabled module's) get no gradient in
        # some epochs; DDP must be told, or it waits for their gradients forever.
        return "ddp_find_unused_parameters_true"
    return strategy


MIXED_PRECISIONS = ("16-mixed", "bf16-mixed", "16", "bf16", "16-true", "bf16-true")


def _on_cpu(config: TrainConfig) -> bool:
    accelerator = config.trainer.accelerator
    has_gpu = torch.cuda.is_available() or (hasattr(torch.backends, "mps") and torch.backends.mps.is_available())
    return accelerator == "cpu" or (accelerator == "auto" and not has_gpu)


def _precision(config: TrainConfig) -> tuple[str, str | None]:
    """The precision Lightning gets, and a note when the requested one falls back to 32-true on a CPU."""
    requested = str(config.trainer.precision)
    if requested in MIXED_PRECISIONS and _on_cpu(config):
        return "32-true", f"trainer.precision={requested} needs a GPU; training on the CPU in 32-true instead"
    return requested, None


def _sync_batchnorm(config: TrainConfig) -> tuple[bool, str | None]:
    """Whether BatchNorm is synchronised across processes (PyTorch does it on GPUs only), and a note if not."""
    if config.trainer.sync_batchnorm and _on_cpu(config):
        return False, "trainer.sync_batchnorm=true needs GPUs; each CPU process keeps its own BatchNorm statistics"
    return config.trainer.sync_batchnorm, None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written whole or not at all (temporary file, fsync, rename), loaded weights-only.

    Before ``last.ckpt`` is replaced, the previous one is renamed to ``last.ckpt.prev``: a run stopped while
    the newest checkpoint is written, or whose newest file is damaged, resumes from the one before.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        target = Path(path)

        def keep_previous() -> None:
            # Only once the new file is whole on disk: a failed write leaves last.ckpt and last.ckpt.prev as they were.
            if target.name == LAST_CHECKPOINT and target.is_file():
                os.replace(target, target.with_name(PREVIOUS_CHECKPOINT))

        with atomic_path(target, before_replace=keep_previous) as temp, temp.open("wb") as handle:
            torch.save(checkpoint, handle)

    def load_checkpoint(self, path: Any, map_location: Any | None = None, weights_only: bool | None = None) -> Any:
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)


def resume_checkpoint(run_dir: Path | str) -> Path | None:
    """The newest checkpoint of ``run_dir`` that loads: ``last.ckpt``, else ``last.ckpt.prev`` (with a
    warning naming the damaged file), else None (nothing to resume from: the run starts over)."""
    folder = Path(run_dir) / "checkpoints"
    for name in (LAST_CHECKPOINT, PREVIOUS_CHECKPOINT):
        path = folder / name
        if not path.is_file():
            continue
        try:
            payload = read_checkpoint(path)
            for key in ("loops", "optimizer_states", "epoch", "global_step"):
                if key not in payload:
                    raise ValueError(f"{path}: not a training checkpoint (missing {key!r})")
        except ValueError as error:
            log.warning("cannot resume from %s (%s); trying the previous checkpoint", path, error)
            continue
        return path
    return None


def _rng_state() -> dict[str, Any]:
    """The global RNG streams (torch, CUDA, numpy, Python) as plain tensors, numbers and lists."""
    _, keys, position, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": int(version), "internal": [int(v) for v in internal], "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    keys = numpy_state["keys"].numpy().astype(np.uint32)
    np.random.set_state(
        ("MT19937", keys, numpy_state["pos"], numpy_state["has_gauss"], numpy_state["cached_gaussian"])
    )
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _ResumableData(PartialLabelDataModule):
    """The data module, remembering the training loader's shuffling generator so that it can be restored."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.train_generator: torch.Generator | None = None
        self.pending_generator_state: torch.Tensor | None = None

    def train_dataloader(self) -> DataLoader:
        loader = super().train_dataloader()
        self.train_generator = loader.generator
        if self.pending_generator_state is not None and loader.generator is not None:
            # Before Lightning draws the first epoch's order from it: the resumed epoch reads the same batches.
            loader.generator.set_state(self.pending_generator_state)
        self.pending_generator_state = None
        return loader


class _ResumeState(L.Callback):
    """Carries what Lightning's checkpoints leave out: the RNG streams of every process and the shuffling
    generator (``hst_resume``); flushes the loggers at checkpoints and epoch starts so that a killed run
    leaves its logs up to its last checkpoint on disk."""

    def __init__(self) -> None:
        self.datamodule: _ResumableData | None = None
        self._pending_rng: dict[str, Any] | None = None

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        states: list[Any] = [_rng_state()]
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            states = [None] * trainer.world_size
            dist.all_gather_object(states, _rng_state())
        generator = self.datamodule.train_generator if self.datamodule is not None else None
        checkpoint["hst_resume"] = plain(
            {"rng": states, "train_generator": generator.get_state() if generator is not None else None},
            "hst_resume",
        )
        _flush_loggers(trainer)

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if trainer.checkpoint_callback is not None:
            _relocate_checkpoint_state(checkpoint, str(trainer.checkpoint_callback.dirpath))
        saved = checkpoint.get("hst_resume")
        if not saved:
            log.warning("the checkpoint carries no RNG state; the resumed run will not repeat the original exactly")
            return
        states = saved.get("rng") or []
        if states:
            rank = trainer.global_rank
            if len(states) != trainer.world_size:
                log.warning("checkpoint of %d processes resumed by %d", len(states), trainer.world_size)
            self._pending_rng = states[rank] if rank < len(states) else states[0]
        if self.datamodule is not None and saved.get("train_generator") is not None:
            self.datamodule.pending_generator_state = saved["train_generator"]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # As late as possible before the first resumed epoch, so that setting up draws nothing after it.
        if self._pending_rng is not None:
            _set_rng_state(self._pending_rng)
            self._pending_rng = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        _flush_loggers(trainer)


def _relocate_checkpoint_state(checkpoint: dict[str, Any], dirpath: str) -> None:
    """Point the saved ModelCheckpoint state at ``dirpath`` when the run folder has moved since it was saved.

    Lightning keeps absolute paths there and drops the best score of a moved folder, after which the next
    best checkpoint would go to a new ``best-v1.ckpt``.
    """
    for key, state in (checkpoint.get("callbacks") or {}).items():
        old = state.get("dirpath") if isinstance(state, dict) else None
        if not str(key).startswith("ModelCheckpoint") or not old or old == dirpath:
            continue

        state["dirpath"] = dirpath
        for name in ("best_model_path", "kth_best_model_path", "last_model_path"):
            if name in state:
                state[name] = _moved(state[name], old, dirpath)
        if isinstance(state.get("best_k_models"), dict):
            state["best_k_models"] = {_moved(p, old, dirpath): score for p, score in state["best_k_models"].items()}


def _moved(path: Any, old: str, new: str) -> Any:
    return str(Path(new) / Path(path).name) if path and Path(path).parent == Path(old) else path


def _flush_loggers(trainer: L.Trainer) -> None:
    for logger in trainer.loggers:
        logger.save()


class _KillAtStep(L.Callback):
    """Fault injection for resume tests (env ``HST_FAULT_KILL_AT_STEP``): SIGKILL at a global step."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def _kept_csv_rows(run_dir: Path, epoch: int) -> tuple[list[str], list[dict[str, str]]] | None:
    """Header and rows of the run's CSV log up to ``epoch`` (the resumed checkpoint's); None without a log."""
    path = run_dir / "csv" / "metrics.csv"
    if not path.is_file():
        return None
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        header = list(reader.fieldnames or [])
    if not header:
        return None

    def kept(row: dict[str, str]) -> bool:
        try:
            return float(row.get("epoch") or 0) <= epoch
        except ValueError:
            return True

    return header, [row for row in rows if kept(row)]


def _restore_csv(trainer: L.Trainer, header: list[str], rows: list[dict[str, str]]) -> None:
    """Put the rows logged before the resumed checkpoint back into the CSV log (Lightning starts it afresh)."""
    for logger in trainer.loggers:
        if not isinstance(logger, CSVLogger):
            continue
        writer = logger.experiment  # creating the writer removes the old file
        keys = sorted(header)
        path = Path(writer.metrics_file_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as handle:
            out = csv.DictWriter(handle, fieldnames=keys)
            out.writeheader()
            out.writerows(rows)
        # Later rows are appended under this header (rewritten by Lightning when new columns appear).
        writer.metrics_keys = keys


def _trainer(
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
        precision=_precision(config)[0],  # type: ignore[arg-type]
        sync_batchnorm=_sync_batchnorm(config)[0],
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
    caches = extract_split_features(
        module.network.backbone, splits, config.data, config.model.channels_last, config.trainer.progress_bar
    )
    module.features_cached = True
    # Heads that pool 2×2 first (or average globally) read the pooled maps from memory: 4× less data per epoch.
    pools = config.model.head == "linear" or config.model.avg_pool_2x2
    module.features_pooled = pools and all(cache.poolable() for cache in caches)
    return caches


def _prepare_resume(
    run_dir: Path,
) -> tuple[Path | None, list[str], tuple[list[str], list[dict[str, str]]] | None, int | None]:
    """For a resumed run: (checkpoint to start from, summary notes, CSV rows to keep, TensorBoard purge step)."""
    start = resume_checkpoint(run_dir)
    if start is None:
        return None, ["no checkpoint to resume from: the run starts over in its folder"], None, None
    notes: list[str] = []
    if start.name == PREVIOUS_CHECKPOINT and (start.parent / LAST_CHECKPOINT).exists():
        # Set the damaged newest file aside; the next save would otherwise rotate it into the fallback.
        with contextlib.suppress(FileNotFoundError):
            os.replace(start.parent / LAST_CHECKPOINT, start.parent / DAMAGED_CHECKPOINT)
        notes.append(f"checkpoints/{LAST_CHECKPOINT} did not load; kept as checkpoints/{DAMAGED_CHECKPOINT}")
    saved = read_checkpoint(start)
    epoch, step = int(saved["epoch"]), int(saved["global_step"])
    notes.append(f"resumed from {start.relative_to(run_dir).as_posix()} (end of epoch {epoch})")
    # TensorBoard hides the interrupted epoch's events: everything after the checkpoint's own step.
    return start, notes, _kept_csv_rows(run_dir, epoch), step + 1


def resume_training(run_dir: Path | str, overrides: Sequence[str] = ()) -> RunResult:
    """Continue the run in ``run_dir`` with its saved ``config.yaml`` (plus ``overrides``, e.g. more epochs)."""
    folder = Path(run_dir)
    config_file = folder / "config.yaml"
    if not config_file.is_file():
        raise FileNotFoundError(f"{folder}: not a run folder (no config.yaml)")
    config = resolve_config(TrainConfig, config_file, list(overrides))
    return train(config, resume=folder)


def train(
    config: TrainConfig, resume: Path | str | None = None, callbacks: Sequence[L.Callback] = ()
) -> RunResult:
    """Fit on the training split, select the best epoch on validation, then test that checkpoint.

    ``resume``: a run folder to continue in place from its last good checkpoint (see :func:`resume_training`);
    ``callbacks``: extra Lightning callbacks for the fit.
    """
    _quiet_lightning()
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
    run_dir = Path(resume) if resume is not None else _run_dir(config)
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
    start, notes, kept_rows, purge_step = _prepare_resume(run_dir) if resume is not None else (None, [], None, None)
    for note in (_precision(config)[1], _sync_batchnorm(config)[1] if _processes(config) > 1 else None):
        if note:
            log.warning(note)
            notes.append(note)

    state = _ResumeState()
    checkpoint = ModelCheckpoint(
        dirpath=str(run_dir / "checkpoints"),
        filename="best",
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
            dirpath=str(run_dir / "checkpoints"),
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
    trainer = _trainer(config, run_dir, fit_callbacks, purge_step=purge_step)
    is_zero = trainer.is_global_zero
    if is_zero:
        if kept_rows is not None:
            _restore_csv(trainer, *kept_rows)
        save_config(config, run_dir / "config.yaml")

    splits = prepare_splits(config.data)
    summary = describe_splits(splits) + notes
    module = PartialLabelModule(config, splits.train.class_names, splits.train.labels, len(splits.train))
    backbone = module.network.backbone
    caches = _feature_caches(config, splits, module)
    if caches is not None:
        summary.append(f"frozen backbone: training from cached features in {config.data.cache_dir}")
    datamodule = _ResumableData(
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
    written = [Path(p) for p in (last.best_model_path if last else "", checkpoint.best_model_path) if p]
    summary.extend(_tune_checkpoints(config, run_dir, module, datamodule, written, best))
    if is_zero:
        _write_json(run_dir / "metrics.json", {"test": test_metrics, "val_last_epoch": val_metrics})
        write_text_atomic(run_dir / "summary.txt", "\n".join(summary) + "\n")
    return RunResult(run_dir, best, test_metrics, val_metrics, summary, rank=trainer.global_rank)


@dataclass
class ThresholdTuning:
    """Per-class thresholds maximising F1 over the known validation labels of each class."""

    thresholds: np.ndarray
    """C float64; ``default`` for classes with too few known positives."""
    f1: np.ndarray
    """C float64, F1 (in [0, 1]) at the chosen threshold; NaN where not tuned."""
    known: np.ndarray
    """C int, known entries per class."""
    positives: np.ndarray
    """C int, known positives per class."""

    @property
    def tuned(self) -> np.ndarray:
        return ~np.isnan(self.f1)


def tune_thresholds(
    probabilities: np.ndarray, labels: np.ndarray, default: float = DEFAULT_THRESHOLD, min_positives: int = 1
) -> ThresholdTuning:
    """Per class, the threshold τ (predict positive when p ≥ τ) with the best F1 on the known entries.

    Only cuts between distinct probabilities are candidates; τ is the midpoint between the lowest
    probability kept and the highest one left out (the lowest probability when all are kept). Among
    equal F1 the highest τ wins. Classes with fewer than ``min_positives`` known positives (at least one)
    keep ``default``: a threshold fitted to one or two examples is noise.
    """
    probs = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels)
    if probs.shape != labels.shape or probs.ndim != 2:
        raise ValueError(f"probabilities {probs.shape} and labels {labels.shape} must be the same N×C shape")
    num_classes = probs.shape[1]
    thresholds = np.full(num_classes, float(default))
    f1 = np.full(num_classes, np.nan)
    known_counts = (labels != 0).sum(axis=0)
    positive_counts = (labels > 0).sum(axis=0)
    for c in range(num_classes):
        known = labels[:, c] != 0
        if positive_counts[c] < max(1, min_positives):
            continue
        order = np.argsort(-probs[known, c], kind="stable")
        scores = probs[known, c][order]
        positive = labels[known, c][order] > 0
        true_pos = np.cumsum(positive)
        predicted = np.arange(1, len(scores) + 1)
        values = 2 * true_pos / (predicted + positive_counts[c])
        # Only cut where the next probability is strictly lower: equal probabilities share one decision.
        cut = np.append(scores[:-1] > scores[1:], True)
        best = int(np.flatnonzero(cut)[np.argmax(values[cut])])
        below = scores[best + 1] if best + 1 < len(scores) else scores[best]
        thresholds[c] = (scores[best] + below) / 2
        f1[c] = values[best]
    return ThresholdTuning(thresholds, f1, known_counts, positive_counts)


def _save_checkpoint(payload: dict[str, Any], path: Path) -> None:
    with atomic_path(path) as temp, temp.open("wb") as handle:
        torch.save(payload, handle)


def _tune_checkpoints(
    config: TrainConfig,
    run_dir: Path,
    module: PartialLabelModule,
    datamodule: PartialLabelDataModule,
    paths: list[Path],
    best: Path | None,
) -> list[str]:
    """Tune each written checkpoint's thresholds on the validation split and store them in the file.

    The best checkpoint's thresholds also go to ``run_dir/thresholds.json``. The validation pass runs on
    the trainer's accelerator, without loggers, on the validation split even under ``select_on=test``.
    """
    paths = sorted(set(paths), key=lambda p: p == best)  # the best one last, so the module ends with it
    if not paths:
        return []
    # The class attribute, not the instance's: under select_on=test the instance's loader is the test split.
    loader = PartialLabelDataModule.val_dataloader(datamodule)
    trainer = _trainer(config, run_dir, [], log=False)
    lines: list[str] = []
    done: dict[tuple[int, int], ThresholdTuning] = {}
    for path in paths:
        payload = read_checkpoint(path)
        # best.ckpt and last.ckpt of the same step hold the same weights: one validation pass serves both.
        step = (int(payload.get("epoch", -1)), int(payload.get("global_step", -1)))
        if step not in done:
            trainer.validate(module, dataloaders=loader, ckpt_path=str(path), verbose=False)
            logits, labels = module.last_scores["val"]
            probs = torch.sigmoid(torch.from_numpy(logits).double()).numpy()
            done[step] = tune_thresholds(probs, labels, min_positives=config.trainer.threshold_min_positives)
        tuning = done[step]
        module.decision_thresholds = [float(t) for t in tuning.thresholds]
        module.thresholds_tuned = True
        if not trainer.is_global_zero:
            continue
        payload["hst_thresholds"] = list(module.decision_thresholds)
        payload["hst_thresholds_tuned"] = True
        _save_checkpoint(payload, path)
        if best is not None and path == best:
            _write_thresholds_json(run_dir / "thresholds.json", config, module.class_names, tuning, path, run_dir)
            lines.append(
                f"per-class thresholds tuned on validation F1 for {int(tuning.tuned.sum())}/{len(tuning.tuned)} "
                "classes (the rest keep 0.5): thresholds.json"
            )
    return lines


def _write_thresholds_json(
    path: Path,
    config: TrainConfig,
    class_names: list[str],
    tuning: ThresholdTuning,
    checkpoint: Path,
    run_dir: Path,
) -> None:
    classes = {
        name: {
            "threshold": float(tuning.thresholds[c]),
            "f1": None if np.isnan(tuning.f1[c]) else float(tuning.f1[c]),
            "known": int(tuning.known[c]),
            "known_positives": int(tuning.positives[c]),
            "tuned": bool(tuning.tuned[c]),
        }
        for c, name in enumerate(class_names)
    }
    _write_json(
        path,
        {
            "checkpoint": Path(os.path.relpath(checkpoint.resolve(), run_dir.resolve())).as_posix(),
            "split": "val",
            "val_labels": config.data.val_labels,
            "rule": "per class, the probability threshold with the best F1 over the known validation labels; "
            f"classes with fewer than {config.trainer.threshold_min_positives} known validation positives keep "
            f"{DEFAULT_THRESHOLD}",
            "classes": classes,
        },
    )


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2))


REQUIRED_KEYS = ("hst_config", "hst_class_names", "state_dict")


def read_checkpoint(checkpoint_path: Path | str) -> dict[str, Any]:
    """The checkpoint's dict, read with ``torch.load(weights_only=True)`` (no arbitrary objects)."""
    path = Path(checkpoint_path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"{path}: cannot be read as a weights-only checkpoint: {error}") from error
    if not isinstance(payload, dict):
        raise ValueError(f"{path}: not an hst checkpoint (a {type(payload).__name__}, not a dict)")
    for key in REQUIRED_KEYS:
        if key not in payload:
            raise ValueError(f"{path}: not an hst checkpoint (missing {key!r})")
    return payload


def load_module(checkpoint_path: Path | str) -> tuple[PartialLabelModule, TrainConfig]:
    """Rebuild the model of a checkpoint for inference (config and class names travel inside it).

    The network's weights must match its saved config exactly. Method parameters (IST head, learned
    thresholds) are loaded where names and shapes match; the others keep their initial values and are
    listed in ``module.method_keys_missing`` (``module.method_keys_ignored``: saved ones not used).
    """
    path = Path(checkpoint_path)
    payload = read_checkpoint(path)
    config = _from_dict(payload["hst_config"])
    class_names = [str(name) for name in payload["hst_class_names"]]
    state: dict[str, torch.Tensor] = payload["state_dict"]
    # Weights, embeddings and graph come from the checkpoint; nothing pretrained is read.
    config.model.weights = "none"
    embeddings = None
    if config.model.head == "sarl":
        if "network.sarl.embeddings" not in state:
            raise ValueError(f"{path}: SARL checkpoint without the label embeddings 'network.sarl.embeddings'")
        embeddings = np.zeros(tuple(state["network.sarl.embeddings"].shape), np.float32)
    # The adjacency is a saved buffer; a placeholder label matrix only sizes it before loading.
    placeholder = np.zeros((1, len(class_names)), dtype=np.int8)
    module = PartialLabelModule(config, class_names, placeholder, num_train=1, embeddings=embeddings)

    network_state = {key[len("network.") :]: value for key, value in state.items() if key.startswith("network.")}
    try:
        module.network.load_state_dict(network_state)
    except RuntimeError as error:
        raise ValueError(f"{path}: the network weights do not fit the checkpoint's own config: {error}") from error
    saved_method = {key[len("method.") :]: value for key, value in state.items() if key.startswith("method.")}
    own = module.method.state_dict()
    usable = {k: v for k, v in saved_method.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    module.method.load_state_dict(usable, strict=False)
    module.method_keys_missing = sorted(k for k in own if k not in usable)
    module.method_keys_ignored = sorted(k for k in saved_method if k not in usable)
    module.on_load_checkpoint(payload)
    module.checkpoint_info = {
        key: payload.get(key) for key in ("hst_format", "hst_version", "hst_backbone", "hst_embeddings_source")
    }
    module.eval()
    return module, config


def _known_only(schema: type, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` without keys the config schema no longer has (checkpoints of older versions)."""
    import dataclasses

    fields = {f.name: f for f in dataclasses.fields(schema)}
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            continue
        default = fields[key].default_factory
        nested = default() if default is not dataclasses.MISSING else None  # type: ignore[misc]
        if dataclasses.is_dataclass(nested) and isinstance(value, dict):
            value = _known_only(type(nested), value)
        out[key] = value
    return out


LEGACY_DEFAULTS: dict[str, dict[str, Any]] = {
    "model": {"linear_residual": False, "standardize_pooled": False, "prior_bias": False},
    "method": {"thresholds": "learned", "ignore_unknown_pairs": False},
    "optim": {"decay_biases": True},
}
"""What a config saved before these keys existed meant by leaving them out (the behaviour of that version)."""


def _from_dict(values: dict[str, Any]) -> TrainConfig:
    from omegaconf import OmegaConf

    values = {key: dict(value) if isinstance(value, dict) else value for key, value in values.items()}
    for section, defaults in LEGACY_DEFAULTS.items():
        saved = values.get(section)
        if isinstance(saved, dict):
            for key, old in defaults.items():
                saved.setdefault(key, old)
    merged = OmegaConf.merge(OmegaConf.structured(TrainConfig), OmegaConf.create(_known_only(TrainConfig, values)))
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def evaluate_checkpoint(checkpoint_path: Path, data_spec: str, batch_size: int = 64) -> dict[str, Any]:
    """Score a dataset with a trained checkpoint and return the metrics dict."""
    from torch.utils.data import DataLoader

    from hst.data.spec import load_dataset
    from hst.engine.data import ImageLabelDataset, build_transform
    from hst.metrics import evaluate

    module, config = load_module(checkpoint_path)
    data = load_dataset(data_spec).with_max_pixels(config.data.max_image_pixels)
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


__all__ = [
    "RunResult",
    "ThresholdTuning",
    "config_to_dict",
    "evaluate_checkpoint",
    "load_module",
    "read_checkpoint",
    "train",
    "tune_thresholds",
]
