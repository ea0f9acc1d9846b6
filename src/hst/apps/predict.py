"""``hst predict``: class probabilities of new images from a trained checkpoint.

Inputs are one image file, a folder (searched recursively), a list of image paths, or any data spec
(``csv:FILE``, ``yolo:ROOT:SPLIT``, ...). Probabilities are ``sigmoid(logits)`` of the checkpoint's
network on the evaluation transform (bicubic resize to the training size, backbone normalisation).
A label is predicted when its probability reaches the threshold: one number for all classes, or
``"tuned"``: the per-class thresholds tuned on validation F1 after training and stored in the checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from hst.apps.inference import (
    IMAGE_SUFFIXES,
    THRESHOLD_HELP,
    PredictInput,
    RunOptions,
    csv_text,
    find_images,
    load_module,
    resolve_inputs,
    resolve_threshold,
    run_network,
)
from hst.config import ConfigError
from hst.engine.trained_model import TrainedModel
from hst.io import write_text_atomic
from hst.models.network import NetworkOutput

if TYPE_CHECKING:
    from typing_extensions import Unpack  # in typing from Python 3.11 only


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
            write_text_atomic(path, text, newline="")
        elif suffix == ".csv" and all_scores:
            from hst.data.scores import write_scores_csv

            write_scores_csv(path, self.images, self.class_names, self.probabilities)
        elif suffix == ".csv":
            rows = [["image", "label", "probability"]]
            for i, image in enumerate(self.images):
                rows.extend([image, label, f"{p:.6g}"] for label, p in self.ranked(i))
            write_text_atomic(path, csv_text(rows), newline="")
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


def predict(
    checkpoint: str | Path | TrainedModel,
    inputs: PredictInput,
    threshold: float | str = 0.5,
    top_k: int | None = None,
    **run: Unpack[RunOptions],
) -> Predictions:
    """Probabilities of ``inputs`` (image file, folder, list of paths or data spec) under ``checkpoint``.

    ``checkpoint``: a checkpoint file or a module already loaded (see ``TrainedModel.from_checkpoint``).
    ``threshold`` (a probability, ``"tuned"`` or ``"auto"``, see :data:`THRESHOLD_HELP`) or ``top_k`` decides
    the predicted labels; ``run`` is how the images are read (:func:`run_network`): ``on_error='skip'`` leaves
    unreadable images out and lists them in ``Predictions.skipped``, ``device='auto'`` picks CUDA when present.
    """
    module = load_module(checkpoint)
    value, per_class = resolve_threshold(threshold, module)
    if top_k is not None and top_k < 1:
        raise ConfigError(f"top_k must be at least 1, got {top_k}")
    class_names = list(module.class_names)
    data = resolve_inputs(inputs, class_names)

    def probabilities(output: NetworkOutput, rows: list[int]) -> dict[str, torch.Tensor]:
        return {"probabilities": torch.sigmoid(output.logits.float())}

    rows, collected, skipped = run_network(module, data, probabilities, **run)
    return Predictions(
        images=[data.image_ids[i] for i in rows],
        class_names=class_names,
        probabilities=collected["probabilities"].astype(np.float32),
        threshold=value,
        top_k=top_k,
        skipped=skipped,
        thresholds=per_class,
    )


# The name callers holding a loaded module have used; predict takes a module as well as a checkpoint.
predict_module = predict


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
