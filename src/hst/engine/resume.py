"""Resuming a run exactly: the RNG streams, the shuffling generator and the logs up to the checkpoint.

Lightning's checkpoints restore weights, optimizer, scheduler and loop counters; :class:`ResumeState` adds
what the next epoch also depends on, so that a resumed run ends bit for bit where an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from hst.checkpoint import (
    DAMAGED_CHECKPOINT,
    LAST_CHECKPOINT,
    PREVIOUS_CHECKPOINT,
    plain,
    read_checkpoint,
    resume_checkpoint,
)
from hst.engine.datamodule import PartialLabelDataModule

log = logging.getLogger(__name__)


def rng_state() -> dict[str, Any]:
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


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    keys = numpy_state["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, numpy_state["pos"], numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class ResumableData(PartialLabelDataModule):
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


class ResumeState(L.Callback):
    """Carries what Lightning's checkpoints leave out: the RNG streams of every process and the shuffling
    generator (``hst_resume``); flushes the loggers at checkpoints and epoch starts so that a killed run
    leaves its logs up to its last checkpoint on disk."""

    def __init__(self) -> None:
        self.datamodule: ResumableData | None = None
        self._pending_rng: dict[str, Any] | None = None

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        states: list[Any] = [rng_state()]
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            states = [None] * trainer.world_size
            dist.all_gather_object(states, rng_state())
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
            set_rng_state(self._pending_rng)
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


def restore_csv(trainer: L.Trainer, header: list[str], rows: list[dict[str, str]]) -> None:
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


def prepare_resume(
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
