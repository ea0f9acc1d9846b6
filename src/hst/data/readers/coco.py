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


def _names_by_id(
    records: list[dict[str, object]], key: str, name_key: str, kind: str, path: Path, allow_empty: bool
) -> dict[int, str]:
    """``{id: record[name_key]}`` of the ``key`` records: unique integer ids, names strings (empty only if allowed)."""
    rule = "a string" if allow_empty else "a non-empty string"
    names: dict[int, str] = {}
    for index, record in enumerate(records):
        where = f"{key}[{index}]"
        record_id = _field(record, "id", where, path)
        name = _field(record, name_key, where, path)
        if not _is_int(record_id):
            raise DataError(f"{path}: {where}: 'id' must be an integer, got {record_id!r}")
        if not isinstance(name, str) or not (name or allow_empty):
            raise DataError(f"{path}: {where}: {name_key!r} must be {rule}, got {name!r}")
        if record_id in names:
            raise DataError(f"{path}: {where}: duplicate {kind} id {record_id}")
        names[record_id] = name
    return names


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

    # An empty category name passes here: check_class_names reports it with its class index.
    category_names = _names_by_id(categories, "categories", "name", "category", annotations, allow_empty=True)
    category_ids = sorted(category_names)
    class_names = check_class_names([category_names[i] for i in category_ids], annotations, "'categories'")
    col_of: dict[object, int] = {category_id: col for col, category_id in enumerate(category_ids)}

    by_id = _names_by_id(images, "images", "file_name", "image", annotations, allow_empty=False)
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
