"""Lightning's checkpoint writer made atomic: a checkpoint is written whole or not at all."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from hst.checkpoint import LAST_CHECKPOINT, PREVIOUS_CHECKPOINT
from hst.io import atomic_path


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


__all__ = ["AtomicCheckpointIO"]
