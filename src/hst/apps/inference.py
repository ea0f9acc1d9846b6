"""What the inference commands share (predict, complete, review): inputs, thresholds, one pass of the network.

:func:`run_network` reads images on the evaluation transform (bicubic resize to the training size, backbone
normalisation) and collects what an ``outputs`` function picks from each batch; an unreadable image stops
the pass or is skipped and listed.
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Callable, Sequence
from contextlib import closing
from pathlib import Path
from typing import TypedDict

import numpy as np
import torch

from hst.config import ConfigError
from hst.data.base import DataError, MultiLabelData
from hst.engine.trained_model import DEFAULT_THRESHOLD, TrainedModel
from hst.models.frozen_runtime import frozen_features
from hst.models.network import NetworkOutput
from hst.progress import progress_bar

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


ON_ERROR_CHOICES = ("error", "skip")


THRESHOLD_HELP = (
    "a probability in [0, 1] for every class, 'tuned' (the per-class thresholds stored in the checkpoint) "
    "or 'auto' (tuned when the checkpoint has them, else 0.5)"
)


PredictInput = str | Path | Sequence[str | Path] | MultiLabelData


class RunOptions(TypedDict, total=False):
    """How :func:`run_network` reads the images: the keyword arguments a command passes on to it unchanged."""

    batch_size: int
    on_error: str
    image_size: int | None
    device: str
    num_workers: int
    progress: bool | None


def load_module(model: str | Path | TrainedModel) -> TrainedModel:
    """A loaded module as it is, or the module a checkpoint file holds."""
    if isinstance(model, (str, Path)):
        return TrainedModel.from_checkpoint(Path(model))
    return model


def csv_text(rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def find_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively, hidden entries skipped), sorted by relative path."""
    found = [
        path
        for path in folder.rglob("*")
        if path.suffix.lower() in IMAGE_SUFFIXES
        and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    ]
    return sorted(found, key=lambda path: path.relative_to(folder).as_posix())


def _from_paths(paths: list[Path], names: list[str], class_names: list[str], source: str) -> MultiLabelData:
    # Labels are irrelevant for prediction; an all-unknown matrix satisfies the container.
    return MultiLabelData(
        image_ids=names,
        labels=np.zeros((len(paths), len(class_names)), dtype=np.int8),
        class_names=list(class_names),
        image_paths=paths,
        source=source,
    )


def resolve_inputs(inputs: PredictInput, class_names: list[str]) -> MultiLabelData:
    """Turn an image file, folder, list of paths or data spec into images with names."""
    if isinstance(inputs, MultiLabelData):
        return inputs
    if isinstance(inputs, (list, tuple)):
        paths = [Path(p) for p in inputs]
        if not paths:
            raise DataError("no input images given")
        return _from_paths(paths, [str(p) for p in inputs], class_names, "image list")
    assert isinstance(inputs, (str, Path))
    text = str(inputs)
    path = Path(text)
    if path.is_dir():
        images = find_images(path)
        if not images:
            raise DataError(
                f"{path}: no images found ({', '.join(s[1:] for s in IMAGE_SUFFIXES)}, searched recursively)"
            )
        names = [image.relative_to(path).as_posix() for image in images]
        return _from_paths(images, names, class_names, str(path))
    if path.is_file():
        if path.suffix.lower() in {".csv", ".jsonl"}:
            kind = path.suffix.lower()[1:]
            raise DataError(f"{path}: a manifest, not an image; pass it as a data spec: {kind}:{path}")
        return _from_paths([path], [path.name], class_names, str(path))
    if ":" in text:
        from hst.data.spec import load_dataset

        return load_dataset(text)
    raise FileNotFoundError(f"input not found: {text} (expected an image file, a folder or a data spec)")


def device_of(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_threshold(threshold: float | str, module: TrainedModel) -> tuple[float, np.ndarray | None]:
    """``(threshold for all classes, per-class thresholds or None)`` from a number or ``tuned`` / ``auto``."""
    text = str(threshold).strip().lower()
    if text in {"tuned", "auto"}:
        if getattr(module, "thresholds_tuned", False):
            return DEFAULT_THRESHOLD, np.asarray(module.decision_thresholds, dtype=np.float64)
        if text == "tuned":
            raise ConfigError(
                "threshold 'tuned': this checkpoint holds no tuned thresholds (written before tuning existed or "
                "by an interrupted run); pass a number such as 0.5"
            )
        return DEFAULT_THRESHOLD, None
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"threshold must be {THRESHOLD_HELP}; got {threshold!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"threshold is a probability in [0, 1], got {threshold}")
    return value, None


OutputFn = Callable[[NetworkOutput, list[int]], dict[str, torch.Tensor]]
"""Maps a batch's network output and its dataset rows to named B×… tensors to collect."""


def run_network(
    module: TrainedModel,
    data: MultiLabelData,
    outputs: OutputFn,
    batch_size: int = 32,
    on_error: str = "error",
    image_size: int | None = None,
    device: str = "cpu",
    num_workers: int = 0,
    progress: bool | None = None,
) -> tuple[list[int], dict[str, np.ndarray], list[tuple[str, str]]]:
    """Run the network over ``data`` on the evaluation transform; ``outputs`` picks what to keep per batch.

    The backbone runs through the fastest runtime at hand (:func:`hst.models.frozen_runtime.frozen_features`; its
    exported graph is kept in the checkpoint's ``data.cache_dir``), the rest of the network in torch. Returns
    (rows that were read, concatenated outputs in that row order, skipped (image, reason)).
    """

    if on_error not in ON_ERROR_CHOICES:
        raise ConfigError(f"on_error must be one of {', '.join(ON_ERROR_CHOICES)}, got {on_error!r}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    network = module.network
    size = image_size or module.config.data.image_size
    # The limit the model was trained under (the default for older checkpoints) guards what it predicts on.
    limited = data.with_max_pixels(module.config.data.max_image_pixels)
    target = device_of(device)
    was_training = module.training
    # The whole module moves: method heads (IST) are used on the same device by callers of outputs().
    module.eval().to(target)
    rows: list[int] = []
    chunks: dict[str, list[np.ndarray]] = {}
    skipped: list[tuple[str, str]] = []
    show = sys.stderr.isatty() if progress is None else progress
    try:
        batches = frozen_features(
            network.backbone,
            limited,
            size,
            module.config.data.cache_dir,
            batch_size,
            num_workers,
            network.channels_last,
            catch_errors=True,
        )
        with torch.inference_mode(), closing(batches):
            with progress_bar(len(data), show, "predicting", transient=True, plain_lines=False) as advance:
                for batch in batches:
                    for index, message in batch.skipped:
                        if on_error == "error":
                            raise DataError(message)
                        skipped.append((data.image_ids[index], message))
                    if batch.features is not None:
                        # the same as network(images): head(backbone map) is what its forward runs
                        for key, value in outputs(network.head(batch.features), batch.rows).items():
                            chunks.setdefault(key, []).append(value.float().cpu().numpy())
                        rows.extend(batch.rows)
                    advance(len(batch))
    finally:
        module.train(was_training)
    if not rows:
        raise DataError(f"{data.source}: none of the {len(data)} images could be read")
    return rows, {key: np.concatenate(parts) for key, parts in chunks.items()}, skipped
