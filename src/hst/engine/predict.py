"""``hst predict``: class probabilities of new images from a trained checkpoint.

Inputs are one image file, a folder (searched recursively), a list of image paths, or any data spec
(``csv:FILE``, ``yolo:ROOT:SPLIT``, ...). Probabilities are ``sigmoid(logits)`` of the checkpoint's
network on the evaluation transform (bicubic resize to the training size, backbone normalisation).
A label is predicted when its probability reaches the threshold: one number for all classes, or
``"tuned"``: the per-class thresholds tuned on validation F1 after training and stored in the checkpoint.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from hst.config import ConfigError
from hst.data.base import DataError, MultiLabelData
from hst.data.datasets import InferenceImages
from hst.engine.module import DEFAULT_THRESHOLD, PartialLabelModule
from hst.io import write_text_atomic
from hst.models.network import NetworkOutput
from hst.progress import progress_bar

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
ON_ERROR_CHOICES = ("error", "skip")
THRESHOLD_HELP = (
    "a probability in [0, 1] for every class, 'tuned' (the per-class thresholds stored in the checkpoint) "
    "or 'auto' (tuned when the checkpoint has them, else 0.5)"
)

PredictInput = str | Path | Sequence[str | Path] | MultiLabelData


@dataclass
class Predictions:
    """Probabilities of ``images`` × ``class_names`` and the rule that turns them into labels."""

    images: list[str]
    """Image names: paths relative to the input folder, the file name, or a data spec's image ids."""
    class_names: list[str]
    probabilities: np.ndarray
    """N×C float32 in [0, 1]."""
    threshold: float = 0.5
    top_k: int | None = None
    """When set, the k most probable labels of each image are predicted regardless of ``threshold``."""
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(image, reason) of unreadable images left out under ``on_error='skip'``."""
    thresholds: np.ndarray | None = None
    """Per-class thresholds (C); when set they replace ``threshold``."""

    def __len__(self) -> int:
        return len(self.images)

    def cutoffs(self) -> np.ndarray:
        """The threshold of each class (C)."""
        if self.thresholds is not None:
            return np.asarray(self.thresholds, dtype=np.float64)
        return np.full(len(self.class_names), float(self.threshold))

    @property
    def rule(self) -> str:
        """How labels are chosen, for printing: ``top 3``, ``p ≥ 0.5`` or ``p ≥ tuned per-class threshold``."""
        if self.top_k is not None:
            return f"top {self.top_k}"
        return "p ≥ tuned per-class threshold" if self.thresholds is not None else f"p ≥ {self.threshold:g}"

    def selected(self) -> np.ndarray:
        """N×C boolean matrix of predicted labels."""
        probs = self.probabilities
        if self.top_k is None:
            return probs >= self.cutoffs()[None, :]
        k = min(self.top_k, probs.shape[1])
        # A stable sort on -p keeps class order among equal probabilities.
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        mask = np.zeros(probs.shape, dtype=bool)
        np.put_along_axis(mask, order, True, axis=1)
        return mask

    def ranked(self, index: int, only_selected: bool = True) -> list[tuple[str, float]]:
        """(label, probability) of image ``index``, most probable first."""
        probs = self.probabilities[index]
        order = np.argsort(-probs, kind="stable")
        if only_selected:
            order = order[: self.top_k] if self.top_k is not None else order[probs[order] >= self.cutoffs()[order]]
        return [(self.class_names[c], float(probs[c])) for c in order]

    def to_records(self, all_scores: bool = False) -> list[dict[str, object]]:
        """One dict per image: ``{"image", "labels": [{"label", "probability"}]}`` (+ ``"probabilities"``)."""
        records: list[dict[str, object]] = []
        for i, image in enumerate(self.images):
            labels = [{"label": label, "probability": round(p, 6)} for label, p in self.ranked(i)]
            record: dict[str, object] = {"image": image, "labels": labels}
            if all_scores:
                probs = self.probabilities[i]
                record["probabilities"] = {
                    name: round(float(p), 6) for name, p in zip(self.class_names, probs, strict=True)
                }
            records.append(record)
        return records

    def write(self, path: Path, all_scores: bool = False) -> None:
        """Write by suffix: ``.json``, or ``.csv`` (long ``image,label,probability``; wide with ``all_scores``)."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix == ".json":
            text = json.dumps(self.to_records(all_scores), indent=2) + "\n"
            _write_atomic(path, text)
        elif suffix == ".csv" and all_scores:
            from hst.data.scores import write_scores_csv

            write_scores_csv(path, self.images, self.class_names, self.probabilities)
        elif suffix == ".csv":
            rows = [["image", "label", "probability"]]
            for i, image in enumerate(self.images):
                rows.extend([image, label, f"{p:.6g}"] for label, p in self.ranked(i))
            _write_atomic(path, _csv_text(rows))
        else:
            raise ConfigError(f"predictions output must end in .csv or .json, got {path}")

    def table_lines(self, limit: int | None = 20, top: int = 3) -> list[str]:
        """A readable table: image, predicted labels with probabilities; the top few when none is predicted."""
        rule = self.rule
        shown = range(len(self) if limit is None else min(limit, len(self)))
        width = max([len("image"), *(len(self.images[i]) for i in shown)])
        lines = [f"{'image':<{width}}  predicted labels ({rule})"]
        for i in shown:
            chosen = self.ranked(i)
            if chosen:
                text = ", ".join(f"{label} {p:.2f}" for label, p in chosen)
            else:
                best = self.ranked(i, only_selected=False)[:top]
                text = "— (top: " + ", ".join(f"{label} {p:.2f}" for label, p in best) + ")"
            lines.append(f"{self.images[i]:<{width}}  {text}")
        if len(shown) < len(self):
            lines.append(f"… {len(self) - len(shown)} more images")
        return lines


def _csv_text(rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def _write_atomic(path: Path, text: str) -> None:
    write_text_atomic(path, text, newline="")


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


def _collate(items: list[tuple[int, torch.Tensor | None, str]]) -> list[tuple[int, torch.Tensor | None, str]]:
    return items


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_threshold(threshold: float | str, module: PartialLabelModule) -> tuple[float, np.ndarray | None]:
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
    module: PartialLabelModule,
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

    Returns (rows that were read, concatenated outputs in that row order, skipped (image, reason)).
    """
    from hst.data.transforms import build_transform

    if on_error not in ON_ERROR_CHOICES:
        raise ConfigError(f"on_error must be one of {', '.join(ON_ERROR_CHOICES)}, got {on_error!r}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    network = module.network
    size = image_size or module.config.data.image_size
    transform = build_transform(size, "none", network.backbone.mean, network.backbone.std)
    loader = DataLoader(
        # The limit the model was trained under (the default for older checkpoints) guards what it predicts on.
        InferenceImages(data.with_max_pixels(module.config.data.max_image_pixels), transform, catch_errors=True),
        batch_size=batch_size, num_workers=num_workers, collate_fn=_collate
    )
    target = _device(device)
    was_training = module.training
    # The whole module moves: method heads (IST) are used on the same device by callers of outputs().
    module.eval().to(target)
    rows: list[int] = []
    chunks: dict[str, list[np.ndarray]] = {}
    skipped: list[tuple[str, str]] = []
    show = sys.stderr.isatty() if progress is None else progress
    try:
        with torch.inference_mode():
            with progress_bar(len(data), show, "predicting", transient=True, plain_lines=False) as advance:
                for batch in loader:
                    good = []
                    for index, tensor, message in batch:
                        if tensor is None:
                            if on_error == "error":
                                raise DataError(message)
                            skipped.append((data.image_ids[index], message))
                        else:
                            good.append((index, tensor))
                    if good:
                        images = torch.stack([tensor for _, tensor in good]).to(target)
                        batch_rows = [index for index, _ in good]
                        for key, value in outputs(network(images), batch_rows).items():
                            chunks.setdefault(key, []).append(value.float().cpu().numpy())
                        rows.extend(batch_rows)
                    advance(len(batch))
    finally:
        module.train(was_training)
    if not rows:
        raise DataError(f"{data.source}: none of the {len(data)} images could be read")
    return rows, {key: np.concatenate(parts) for key, parts in chunks.items()}, skipped


def predict_module(
    module: PartialLabelModule,
    inputs: PredictInput,
    batch_size: int = 32,
    threshold: float | str = 0.5,
    top_k: int | None = None,
    on_error: str = "error",
    image_size: int | None = None,
    device: str = "cpu",
    num_workers: int = 0,
    progress: bool | None = None,
) -> Predictions:
    """Like :func:`predict`, with a module already loaded (see ``hst.engine.train.load_module``)."""
    value, per_class = resolve_threshold(threshold, module)
    if top_k is not None and top_k < 1:
        raise ConfigError(f"top_k must be at least 1, got {top_k}")
    class_names = list(module.class_names)
    data = resolve_inputs(inputs, class_names)

    def probabilities(output: NetworkOutput, rows: list[int]) -> dict[str, torch.Tensor]:
        return {"probabilities": torch.sigmoid(output.logits.float())}

    rows, collected, skipped = run_network(
        module, data, probabilities, batch_size, on_error, image_size, device, num_workers, progress
    )
    return Predictions(
        images=[data.image_ids[i] for i in rows],
        class_names=class_names,
        probabilities=collected["probabilities"].astype(np.float32),
        threshold=value,
        top_k=top_k,
        skipped=skipped,
        thresholds=per_class,
    )


def predict(
    checkpoint: str | Path,
    inputs: PredictInput,
    batch_size: int = 32,
    threshold: float | str = 0.5,
    top_k: int | None = None,
    on_error: str = "error",
    image_size: int | None = None,
    device: str = "cpu",
    num_workers: int = 0,
    progress: bool | None = None,
) -> Predictions:
    """Probabilities of ``inputs`` (image file, folder, list of paths or data spec) under ``checkpoint``.

    ``threshold`` (a probability, ``"tuned"`` or ``"auto"``, see :data:`THRESHOLD_HELP`) or ``top_k`` decides
    the predicted labels; ``on_error='skip'`` leaves unreadable images out and lists them in
    ``Predictions.skipped``. ``device='auto'`` picks CUDA when present.
    """
    from hst.engine.module import load_module

    module, _ = load_module(Path(checkpoint))
    return predict_module(
        module,
        inputs,
        batch_size=batch_size,
        threshold=threshold,
        top_k=top_k,
        on_error=on_error,
        image_size=image_size,
        device=device,
        num_workers=num_workers,
        progress=progress,
    )


__all__ = [
    "IMAGE_SUFFIXES",
    "THRESHOLD_HELP",
    "Predictions",
    "find_images",
    "predict",
    "predict_module",
    "resolve_inputs",
    "resolve_threshold",
    "run_network",
]
