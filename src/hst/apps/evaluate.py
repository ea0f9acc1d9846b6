"""``hst evaluate`` and ``hst metrics``: the metrics of a trained checkpoint on a labelled dataset, or of a score
file against a label file."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from hst.apps.inference import run_network
from hst.data.readers import read_csv_manifest
from hst.data.scores import align_scores, read_scores_csv
from hst.data.spec import load_dataset
from hst.engine.trained_model import TrainedModel
from hst.metrics import MultiLabelMetrics, evaluate


def evaluate_checkpoint(checkpoint_path: Path, data_spec: str, batch_size: int = 64) -> dict[str, Any]:
    """Score a dataset with a trained checkpoint and return the metrics dict.

    The images go through :func:`hst.apps.inference.run_network` (decoded ahead, the backbone through the fastest
    runtime at hand) as for ``hst predict``; every image must be readable."""
    module = TrainedModel.from_checkpoint(checkpoint_path)
    data = load_dataset(data_spec)
    if data.class_names != module.class_names:
        raise ValueError(f"{data_spec}: classes differ from the checkpoint's {len(module.class_names)} classes")
    rows, collected, _ = run_network(module, data, lambda output, _rows: {"logits": output.logits}, batch_size)
    result = evaluate(collected["logits"], data.labels[np.asarray(rows)], data.class_names)
    return result.to_dict()


def evaluate_score_files(
    scores_csv: str | Path, labels_csv: str | Path, scores_are_probabilities: bool = False
) -> tuple[MultiLabelMetrics, list[str]]:
    """The metrics of a scores CSV (``image,<classes…>``) against a CSV manifest, and the warnings raised on the
    way (e.g. classes left out of mAP for lack of positives)."""
    labels = read_csv_manifest(Path(labels_csv))
    score_ids, score_classes, scores = read_scores_csv(Path(scores_csv))
    scores = align_scores(score_ids, score_classes, scores, labels.image_ids, labels.class_names, where=str(scores_csv))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = evaluate(scores, labels.labels, labels.class_names, scores_are_probabilities=scores_are_probabilities)
    return result, [str(warning.message) for warning in caught]


__all__ = ["evaluate_checkpoint", "evaluate_score_files"]
