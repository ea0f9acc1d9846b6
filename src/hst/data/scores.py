"""Score files: the CSV manifest layout with real numbers (``image,<class names…>``)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from hst.data.base import DataError


def read_scores_csv(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """Return (image ids, class names, N×C float64 scores); every cell must be a finite number."""
    if not path.is_file():
        raise DataError(f"score file not found: {path}")
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if not header or header[0].strip() != "image":
            raise DataError(f"{path}:1: the header must start with 'image' followed by class names")
        class_names = [name.strip() for name in header[1:]]
        if not class_names:
            raise DataError(f"{path}:1: no class columns")
        ids: list[str] = []
        rows: list[list[float]] = []
        for line_number, row in enumerate(reader, start=2):
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise DataError(f"{path}:{line_number}: expected {len(header)} columns, found {len(row)}")
            values: list[float] = []
            for name, cell in zip(class_names, row[1:], strict=True):
                try:
                    value = float(cell)
                except ValueError:
                    raise DataError(f"{path}:{line_number}: column {name!r}: {cell!r} is not a number") from None
                if not math.isfinite(value):
                    raise DataError(f"{path}:{line_number}: column {name!r}: {cell!r} is not finite")
                values.append(value)
            ids.append(row[0].strip())
            rows.append(values)
    if not rows:
        raise DataError(f"{path}: no score rows")
    return ids, class_names, np.asarray(rows, dtype=np.float64)


def write_scores_csv(path: Path, image_ids: list[str], class_names: list[str], scores: np.ndarray) -> None:
    """Write scores atomically (temporary file, then rename)."""
    from hst.io import atomic_write

    with atomic_write(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", *class_names])
        for image_id, row in zip(image_ids, np.asarray(scores), strict=True):
            writer.writerow([image_id, *(f"{float(v):.6g}" for v in row)])


def align_scores(
    score_ids: list[str],
    score_classes: list[str],
    scores: np.ndarray,
    label_ids: list[str],
    label_classes: list[str],
    where: str,
) -> np.ndarray:
    """Reorder score rows/columns to the label file's images and classes; error on any mismatch."""
    missing_classes = [name for name in label_classes if name not in score_classes]
    if missing_classes:
        raise DataError(f"{where}: classes missing from the score file: {missing_classes}")
    row_of = {image_id: row for row, image_id in enumerate(score_ids)}
    missing_images = [image_id for image_id in label_ids if image_id not in row_of]
    if missing_images:
        raise DataError(f"{where}: {len(missing_images)} labelled images have no score row, e.g. {missing_images[:3]}")
    column_of = {name: col for col, name in enumerate(score_classes)}
    rows = np.array([row_of[i] for i in label_ids])
    cols = np.array([column_of[name] for name in label_classes])
    return scores[np.ix_(rows, cols)]
