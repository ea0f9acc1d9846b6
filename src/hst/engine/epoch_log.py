"""Output for logs: one plain line per epoch when stdout is not a terminal, and no third-party tips.

A progress bar written to a file, CI or nohup turns into columns of metric fragments; :class:`EpochLine`
prints instead, once per epoch::

    [run] epoch 3/8  loss 1.0714 (bce 0.6828, cooccurrence 0.1211)  val mAP 53.06  pseudo labels IST 12, CST 40  4.1 s

Lightning also prints advertisements for other products ("💡 Tip: ... litlogger / litmodels") through its
rank-zero logger; :func:`silence_tips` filters them out.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import Any, TextIO

import lightning as L

# Loggers Lightning's rank_zero_info writes to, depending on which of its packages set it last.
_RANK_ZERO_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "pytorch_lightning.utilities.rank_zero",
    "lightning_fabric.utilities.rank_zero",
    "lightning_utilities.core.rank_zero",
)
# train/* epoch values that are counters, not losses
_COUNTERS = ("_count", "_correct", "_possible")


class _NoTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in record.getMessage()


_NO_TIPS = _NoTips()


def silence_tips() -> None:
    """Drop Lightning's "💡 Tip" messages (idempotent)."""
    for name in _RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if _NO_TIPS not in logger.filters:
            logger.addFilter(_NO_TIPS)


def _value(metrics: dict[str, Any], key: str) -> float | None:
    value = metrics.get(key)
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def epoch_line(name: str, epoch: int, epochs: int, metrics: dict[str, Any], seconds: float) -> str:
    """The line :class:`EpochLine` prints for one epoch (``epoch`` counts from 0)."""
    parts = [f"[{name}] epoch {epoch + 1}/{epochs}"]
    loss = _value(metrics, "train/loss_epoch")
    if loss is None:
        loss = _value(metrics, "train/loss")
    terms = []
    for key in sorted(metrics):
        short = key.removeprefix("train/")
        if key.startswith("train/") and not short.startswith("loss") and not short.endswith(_COUNTERS):
            value = _value(metrics, key)
            if value is not None:
                terms.append(f"{short} {value:.4f}")
    if loss is not None:
        parts.append(f"loss {loss:.4f}" + (f" ({', '.join(terms)})" if terms else ""))
    val_map = _value(metrics, "val/mAP")
    if val_map is not None:
        parts.append(f"val mAP {val_map:.2f}")
    pseudo = []
    for source, key in (
        ("positive", "method/pseudo_all_pos_count"),  # calibrated HST
        ("negative", "method/pseudo_all_neg_count"),
        ("IST", "method/epoch_intra_pseudo_count"),  # published thresholds, SST
        ("CST", "method/epoch_inter_pseudo_count"),
    ):
        value = _value(metrics, key)
        if value is not None:
            pseudo.append(f"{source} {value:.0f}")
    if pseudo:
        parts.append("pseudo labels " + ", ".join(pseudo))
    withheld = _value(metrics, "method/withheld_count")  # classes without a known negative
    if withheld is not None:
        parts.append(f"weak negatives withheld {withheld:.0f}")
    parts.append(f"{seconds:.1f} s")
    return "  ".join(parts)


class EpochLine(L.Callback):
    """Prints :func:`epoch_line` once per epoch on the global rank 0.

    An epoch's values are complete only after the LightningModule's own ``on_train_epoch_end`` (pseudo-label
    counts), which runs after the callbacks' hook; so an epoch is printed when the next one starts, and the
    last one when training ends.
    """

    def __init__(self, name: str, stream: TextIO | None = None) -> None:
        self.name = name
        self.stream = stream
        self._pending: tuple[int, float] | None = None

    def _flush(self, trainer: L.Trainer) -> None:
        if self._pending is None:
            return
        epoch, started = self._pending
        self._pending = None
        if trainer.is_global_zero:
            metrics = dict(trainer.callback_metrics)
            line = epoch_line(self.name, epoch, int(trainer.max_epochs or 0), metrics, time.perf_counter() - started)
            stream = self.stream or sys.stdout
            print(line, file=stream, flush=True)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flush(trainer)
        self._pending = (trainer.current_epoch, time.perf_counter())

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flush(trainer)


__all__ = ["EpochLine", "epoch_line", "silence_tips"]
