"""Checkpoint files: their names, the weights-only reader and the config they carry.

A checkpoint is a plain dict (tensors, numbers, strings, lists, dicts): ``torch.load(weights_only=True)``
reads it without unpickling classes. Its ``hst_*`` entries (format :data:`CHECKPOINT_FORMAT`) carry the
config as a dict, the class names and the method state, so that a file loads without the run folder;
:func:`config_from_dict` rebuilds the config of any version, filling keys added since with what that
version meant. The engine writes them atomically (:mod:`hst.engine.checkpoint_io`);
``TrainedModel.from_checkpoint`` (:mod:`hst.engine.trained_model`) rebuilds a model. Nothing here imports Lightning.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hst.config import TrainConfig
from hst.io import atomic_path

log = logging.getLogger(__name__)


CHECKPOINT_FORMAT = 2
"""Version of the ``hst_*`` entries a checkpoint carries (1: config, class names, method state only)."""


def plain(value: Any, where: str = "checkpoint") -> Any:
    """``value`` as types ``torch.load(weights_only=True)`` accepts: tensors, numbers, strings, lists, dicts."""
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return value.detach().cpu() if isinstance(value, torch.Tensor) else value
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {key: plain(item, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item, f"{where}[{index}]") for index, item in enumerate(value)]
    # Anything else would make the checkpoint unloadable with weights_only=True; fail at save time instead.
    raise TypeError(f"{where}: cannot store {type(value).__name__} in a checkpoint")


CHECKPOINT_FOLDER = "checkpoints"
"""The folder of a run that holds its checkpoints."""
BEST_CHECKPOINT = "best.ckpt"
"""The epoch with the best validation mAP."""
LAST_CHECKPOINT = "last.ckpt"
"""The newest end-of-epoch checkpoint (``trainer.save_last``): where a resumed run starts."""
PREVIOUS_CHECKPOINT = "last.ckpt.prev"
"""The ``last.ckpt`` before the newest one; the fallback when the newest does not load."""
DAMAGED_CHECKPOINT = "last.ckpt.damaged"
"""Where a resumed run moves a ``last.ckpt`` that did not load."""


def resume_checkpoint(run_dir: Path | str) -> Path | None:
    """The newest checkpoint of ``run_dir`` that loads: ``last.ckpt``, else ``last.ckpt.prev`` (with a
    warning naming the damaged file), else None (nothing to resume from: the run starts over)."""
    folder = Path(run_dir) / CHECKPOINT_FOLDER
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


def save_checkpoint(payload: dict[str, Any], path: Path) -> None:
    with atomic_path(path) as temp, temp.open("wb") as handle:
        torch.save(payload, handle)


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


def _known_only(schema: type, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` without keys the config schema no longer has (checkpoints of older versions)."""

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


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    from omegaconf import OmegaConf

    """The config of a checkpoint's ``hst_config`` dict, whichever version saved it."""
    values = {key: dict(value) if isinstance(value, dict) else value for key, value in values.items()}
    for section, defaults in LEGACY_DEFAULTS.items():
        saved = values.get(section)
        if isinstance(saved, dict):
            for key, old in defaults.items():
                saved.setdefault(key, old)
    merged = OmegaConf.merge(OmegaConf.structured(TrainConfig), OmegaConf.create(_known_only(TrainConfig, values)))
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


__all__ = [
    "BEST_CHECKPOINT",
    "CHECKPOINT_FOLDER",
    "CHECKPOINT_FORMAT",
    "DAMAGED_CHECKPOINT",
    "LAST_CHECKPOINT",
    "PREVIOUS_CHECKPOINT",
    "config_from_dict",
    "plain",
    "read_checkpoint",
    "resume_checkpoint",
    "save_checkpoint",
]
