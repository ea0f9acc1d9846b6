"""YOLO detection layout: ROOT/images/SPLIT, ROOT/labels/SPLIT/<stem>.txt, ROOT/classes.yaml."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from hst.data.base import DataError, MultiLabelData
from hst.data.readers._common import at, check_class_names, positives_matrix, read_text

IMAGE_SUFFIXES = frozenset({".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"})


def read_yolo_class_names(path: Path) -> list[str]:
    """Class names from a YOLO dataset YAML (``names:`` as an index → name mapping or a list)."""
    text = read_text(path, "YOLO classes file")
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise DataError(f"{at(path, line)}: invalid YAML: {error}") from error
    except RecursionError as error:
        raise DataError(f"{path}: YAML nested too deeply to parse") from error
    if not isinstance(document, dict) or "names" not in document:
        raise DataError(f"{path}: field 'names' missing (expected names: {{0: person, 1: bicycle, ...}})")
    raw = document["names"]
    if isinstance(raw, list):
        values = raw
    elif isinstance(raw, dict):
        by_index: dict[int, object] = {}
        for key, value in raw.items():
            index = key if isinstance(key, int) and not isinstance(key, bool) else None
            # isdecimal, not isdigit: int() rejects superscript digits such as '²'.
            if isinstance(key, str) and key.strip().isdecimal():
                index = int(key)
            if index is None:
                raise DataError(f"{path}: field 'names': key {key!r} is not a class index")
            by_index[index] = value
        if set(by_index) != set(range(len(by_index))):
            missing = sorted(set(range(len(by_index))) - set(by_index))
            raise DataError(
                f"{path}: field 'names': class indices must be 0..{len(by_index) - 1} without gaps "
                f"(missing {missing[:5]})"
            )
        values = [by_index[index] for index in range(len(by_index))]
    else:
        raise DataError(f"{path}: field 'names' must be a mapping or a list, got {type(raw).__name__}")
    names: list[str] = []
    for index, value in enumerate(values):
        if value is None or isinstance(value, (dict, list)):
            raise DataError(f"{path}: field 'names': class {index} has no usable name ({value!r})")
        names.append(str(value).strip())
    names = check_class_names(names, path, "field 'names'")
    declared = document.get("nc")
    if declared is not None and declared != len(names):
        raise DataError(f"{path}: field 'nc' is {declared!r} but 'names' lists {len(names)} classes")
    return names


def _parse_label_file(path: Path, num_classes: int) -> set[int]:
    """Class ids in one label file; boxes (class xc yc w h) and polygons (class x1 y1 x2 y2 ...) both count."""
    classes: set[int] = set()
    for line, raw in enumerate(read_text(path, "YOLO label file").split("\n"), start=1):
        parts = raw.split()
        if not parts:
            continue
        if len(parts) < 5 or len(parts) % 2 == 0:
            raise DataError(
                f"{at(path, line)}: malformed line {raw.strip()!r}; expected 'class x_center y_center width height'"
            )
        try:
            class_id = int(parts[0])
            for value in parts[1:]:
                float(value)
        except ValueError as error:
            raise DataError(
                f"{at(path, line)}: malformed line {raw.strip()!r}; the class must be an integer and the "
                "coordinates numbers"
            ) from error
        if not 0 <= class_id < num_classes:
            raise DataError(
                f"{at(path, line)}: class id {class_id} out of range 0..{num_classes - 1} "
                f"({num_classes} classes in classes.yaml)"
            )
        classes.add(class_id)
    return classes


def read_yolo(root: Path, split: str) -> MultiLabelData:
    """Image-level labels from YOLO detection labels: the classes of an image's objects are positive."""
    root = Path(root)
    images_dir = root / "images" / split
    labels_dir = root / "labels" / split
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: images folder not found (expected ROOT/images/{split})")
    if not labels_dir.is_dir():
        raise DataError(f"{labels_dir}: labels folder not found (expected ROOT/labels/{split})")
    class_names = read_yolo_class_names(root / "classes.yaml")

    with os.scandir(images_dir) as entries:
        image_names = sorted(
            entry.name for entry in entries if entry.is_file() and Path(entry.name).suffix.lower() in IMAGE_SUFFIXES
        )
    with os.scandir(labels_dir) as entries:
        label_names = {entry.name for entry in entries if entry.name.endswith(".txt") and entry.is_file()}

    image_ids: list[str] = []
    image_paths: list[Path] = []
    owner: dict[str, str] = {}
    rows: list[int] = []
    cols: list[int] = []
    used: set[str] = set()
    for row, name in enumerate(image_names):
        stem = Path(name).stem
        if stem in owner:
            # Two images would share one label file, so the labels would be ambiguous.
            raise DataError(f"{images_dir}: images {owner[stem]!r} and {name!r} share the label file {stem}.txt")
        owner[stem] = name
        image_ids.append(stem)
        image_paths.append(images_dir / name)
        if f"{stem}.txt" in label_names:
            used.add(f"{stem}.txt")
            for class_id in sorted(_parse_label_file(labels_dir / f"{stem}.txt", len(class_names))):
                rows.append(row)
                cols.append(class_id)
    labels = positives_matrix(len(image_ids), len(class_names), rows, cols)
    return MultiLabelData(
        image_ids=image_ids,
        labels=labels,
        class_names=class_names,
        image_paths=image_paths,
        source=f"yolo:{root}:{split}",
        info={
            "format": "yolo",
            "split": split,
            "label_files": len(used),
            # Label files without an image are ignored; count them so a mismatch is visible.
            "unmatched_label_files": len(label_names - used),
        },
    )
