"""COCO instances JSON (2014 / 2017): image-level labels from object annotations."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hst.data.base import DataError, MultiLabelData
from hst.data.readers._common import check_class_names, load_json, positives_matrix


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _records(document: dict[str, object], key: str, path: Path) -> list[dict[str, object]]:
    if key not in document:
        raise DataError(f"{path}: missing key {key!r} (not a COCO instances file?)")
    records = document[key]
    if not isinstance(records, list):
        raise DataError(f"{path}: {key!r} must be a list, got {type(records).__name__}")
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise DataError(f"{path}: {key}[{index}] must be an object, got {type(record).__name__}")
    return records


def _field(record: dict[str, object], key: str, where: str, path: Path) -> object:
    if key not in record:
        raise DataError(f"{path}: {where}: missing key {key!r}")
    return record[key]


def _bad_annotation(
    annotations: list[dict[str, object]], row_of: dict[object, int], col_of: dict[object, int], path: Path
) -> DataError:
    """Find the first annotation that the fast pass could not map and describe it."""
    for index, annotation in enumerate(annotations):
        where = f"annotations[{index}] (id {annotation.get('id', '?')})"
        image_id = _field(annotation, "image_id", where, path)
        category_id = _field(annotation, "category_id", where, path)
        if not _is_int(image_id) or not _is_int(category_id):
            return DataError(
                f"{path}: {where}: image_id and category_id must be integers, got {image_id!r} and {category_id!r}"
            )
        if category_id not in col_of:
            return DataError(f"{path}: {where}: unknown category_id {category_id!r}")
        if image_id not in row_of:
            return DataError(f"{path}: {where}: unknown image_id {image_id!r}")
    return DataError(f"{path}: malformed annotations")


def read_coco(images_dir: Path, annotations: Path, keep_empty: bool = False) -> MultiLabelData:
    """Categories sorted by id become classes 0..C-1; rows are images sorted by id."""
    images_dir = Path(images_dir)
    annotations = Path(annotations)
    document = load_json(annotations, "COCO annotation file")
    if not isinstance(document, dict):
        raise DataError(f"{annotations}: expected a JSON object with 'images', 'annotations', 'categories'")
    images = _records(document, "images", annotations)
    objects = _records(document, "annotations", annotations)
    categories = _records(document, "categories", annotations)

    category_names: dict[int, str] = {}
    for index, category in enumerate(categories):
        where = f"categories[{index}]"
        category_id = _field(category, "id", where, annotations)
        name = _field(category, "name", where, annotations)
        if not _is_int(category_id):
            raise DataError(f"{annotations}: {where}: 'id' must be an integer, got {category_id!r}")
        if not isinstance(name, str):
            raise DataError(f"{annotations}: {where}: 'name' must be a string, got {name!r}")
        if category_id in category_names:
            raise DataError(f"{annotations}: {where}: duplicate category id {category_id}")
        category_names[category_id] = name
    category_ids = sorted(category_names)
    class_names = check_class_names([category_names[i] for i in category_ids], annotations, "'categories'")
    col_of: dict[object, int] = {category_id: col for col, category_id in enumerate(category_ids)}

    by_id: dict[int, str] = {}
    for index, image in enumerate(images):
        where = f"images[{index}]"
        image_id = _field(image, "id", where, annotations)
        file_name = _field(image, "file_name", where, annotations)
        if not _is_int(image_id):
            raise DataError(f"{annotations}: {where}: 'id' must be an integer, got {image_id!r}")
        if not isinstance(file_name, str) or not file_name:
            raise DataError(f"{annotations}: {where}: 'file_name' must be a non-empty string")
        if image_id in by_id:
            raise DataError(f"{annotations}: {where}: duplicate image id {image_id}")
        by_id[image_id] = file_name
    ordered_ids = sorted(by_id)
    row_of: dict[object, int] = {image_id: row for row, image_id in enumerate(ordered_ids)}

    # One pass per column with plain dict lookups: the 2014 train file has ~600k annotations.
    try:
        rows = [row_of[annotation["image_id"]] for annotation in objects]
        cols = [col_of[annotation["category_id"]] for annotation in objects]
        # True and 1.0 hash like 1, so the lookups alone would accept them as id 1.
        exact = all(type(a["image_id"]) is int and type(a["category_id"]) is int for a in objects)
    except (KeyError, TypeError):
        raise _bad_annotation(objects, row_of, col_of, annotations) from None
    if not exact:
        raise _bad_annotation(objects, row_of, col_of, annotations)

    labels = positives_matrix(len(ordered_ids), len(class_names), rows, cols)
    annotated = np.zeros(len(ordered_ids), dtype=bool)
    annotated[np.asarray(rows, dtype=np.int64)] = True
    keep = np.arange(len(ordered_ids)) if keep_empty else np.flatnonzero(annotated)
    return MultiLabelData(
        image_ids=[str(ordered_ids[row]) for row in keep],
        labels=labels[keep],
        class_names=class_names,
        image_paths=[images_dir / by_id[ordered_ids[row]] for row in keep],
        source=f"coco:{images_dir}:{annotations}",
        info={
            "format": "coco",
            "category_ids": category_ids,
            "images_without_annotations": int((~annotated).sum()),
            "keep_empty": keep_empty,
        },
    )
