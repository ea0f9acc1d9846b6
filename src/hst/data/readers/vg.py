"""Visual Genome VG-200 in the published layout: an image list plus a JSON of positive class indices."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from hst.data.base import DataError, MultiLabelData
from hst.data.readers._common import (
    at,
    check_class_names,
    load_json,
    parse_json,
    positives_matrix,
    read_list,
    read_text,
)

VG_NUM_CLASSES = 200


def read_class_list(path: Path) -> list[str]:
    """Class names from a text file (one per line) or a JSON list of strings."""
    text = read_text(path, "class names file")
    if path.suffix.lower() == ".json" or text.lstrip().startswith("["):
        names = parse_json(text, path)
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise DataError(f"{path}: expected a JSON list of class name strings")
        names = [name.strip() for name in names]
    else:
        names = [line.strip() for line in text.split("\n") if line.strip()]
    return check_class_names(names, path, "class names file")


def read_vg(images_dir: Path, list_file: Path, labels_json: Path, classes_file: Path | None = None) -> MultiLabelData:
    """Rows follow the list file; every class not listed for an image is a known negative."""
    images_dir, list_file, labels_json = Path(images_dir), Path(list_file), Path(labels_json)
    if classes_file is not None:
        class_names = read_class_list(Path(classes_file))
    else:
        class_names = [f"class_{index:03d}" for index in range(VG_NUM_CLASSES)]
    num_classes = len(class_names)

    entries = read_list(list_file, "VG image list")
    for line, name in entries:
        if not PurePosixPath(name).name:
            raise DataError(f"{at(list_file, line)}: {name!r} is not an image file name")

    mapping = load_json(labels_json, "VG label file")
    if not isinstance(mapping, dict):
        raise DataError(f"{labels_json}: expected a JSON object mapping image file names to class index lists")
    rows: list[int] = []
    cols: list[int] = []
    for row, (line, name) in enumerate(entries):
        if name not in mapping:
            raise DataError(f"{at(list_file, line)}: image {name!r} has no entry in {labels_json}")
        indices = mapping[name]
        if not isinstance(indices, list):
            raise DataError(f"{labels_json}: entry {name!r} must be a list of class indices, got {indices!r}")
        for index in indices:
            if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < num_classes:
                raise DataError(
                    f"{labels_json}: entry {name!r}: class index {index!r} out of range 0..{num_classes - 1}"
                )
            rows.append(row)
            cols.append(index)
    image_ids = [str(PurePosixPath(name).with_suffix("")) for _, name in entries]
    owner: dict[str, int] = {}
    for (line, name), image_id in zip(entries, image_ids, strict=True):
        if image_id in owner:
            raise DataError(
                f"{at(list_file, line)}: image {name!r} has the id {image_id!r} of the image on line {owner[image_id]}"
            )
        owner[image_id] = line
    return MultiLabelData(
        image_ids=image_ids,
        labels=positives_matrix(len(entries), num_classes, rows, cols),
        class_names=class_names,
        image_paths=[images_dir / name for _, name in entries],
        source=f"vg:{images_dir}:{list_file}:{labels_json}",
        info={"format": "vg"},
    )
