"""Label manifests: CSV (image + one column per class) and JSON lines (positive / negative name lists)."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np

from hst.data.base import DataError, MultiLabelData
from hst.data.readers._common import at, check_class_names, parse_json, read_text, resolve_image
from hst.labels import LABEL_DTYPE, NEGATIVE, POSITIVE

_CELL = {"1": POSITIVE, "-1": NEGATIVE, "0": 0, "": 0}


def _same_file(files: dict[str, tuple[str, int]], image: str, path: Path, line: int) -> None:
    """Reject a second spelling of an image already listed (``a.jpg`` and ``./a.jpg``)."""
    key = os.path.normpath(resolve_image(path.parent, image))
    if key in files:
        other, other_line = files[key]
        raise DataError(f"{at(path, line)}: image {image!r} is the file {other!r} already listed on line {other_line}")
    files[key] = (image, line)


def read_csv_manifest(path: Path) -> MultiLabelData:
    """Header ``image,<class names...>``; cells 1, -1, 0 or empty (unknown)."""
    path = Path(path)
    text = read_text(path, "CSV manifest")
    if not text.strip():
        raise DataError(f"{path}: the file is empty; expected a header line 'image,<class names...>'")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [cell.strip() for cell in next(reader)]
        if not header or header[0] != "image":
            first = header[0] if header else ""
            raise DataError(f"{at(path, 1)}: the first column header must be 'image', got {first!r}")
        class_names = header[1:]
        if not class_names:
            raise DataError(f"{at(path, 1)}: no class columns after 'image'")
        first_column: dict[str, int] = {}
        for column, name in enumerate(class_names, start=2):
            if not name:
                raise DataError(f"{at(path, 1)}: column {column} has an empty class name")
            if name in first_column:
                raise DataError(
                    f"{at(path, 1)}: duplicate class name {name!r} (columns {first_column[name]} and {column})"
                )
            first_column[name] = column

        width = len(header)
        image_ids: list[str] = []
        rows: list[list[int]] = []
        seen: dict[str, int] = {}
        files: dict[str, tuple[str, int]] = {}
        for cells in reader:
            line = reader.line_num
            if not cells or (len(cells) == 1 and not cells[0].strip()):
                continue
            if len(cells) != width:
                raise DataError(
                    f"{at(path, line)}: {len(cells)} columns, expected {width} (image + {width - 1} classes)"
                )
            image = cells[0].strip()
            if not image:
                raise DataError(f"{at(path, line, 'image')}: empty image path")
            if image in seen:
                raise DataError(f"{at(path, line)}: image {image!r} is already listed on line {seen[image]}")
            seen[image] = line
            _same_file(files, image, path, line)
            try:
                rows.append([_CELL[cell.strip()] for cell in cells[1:]])
            except KeyError:
                for name, cell in zip(class_names, cells[1:], strict=True):
                    if cell.strip() not in _CELL:
                        raise DataError(
                            f"{at(path, line, repr(name))}: bad value {cell!r}; expected 1, -1, 0 or empty"
                        ) from None
                raise
            image_ids.append(image)
    except csv.Error as error:
        raise DataError(f"{at(path, reader.line_num)}: malformed CSV: {error}") from error
    labels = np.array(rows, dtype=LABEL_DTYPE).reshape(len(rows), len(class_names))
    return MultiLabelData(
        image_ids=image_ids,
        labels=labels,
        class_names=class_names,
        image_paths=[resolve_image(path.parent, image) for image in image_ids],
        source=f"csv:{path}",
        info={"format": "csv"},
    )


def _name_list(record: dict[str, object], key: str, path: Path, line: int) -> list[str]:
    value = record.get(key, [])
    if not isinstance(value, list):
        raise DataError(f"{at(path, line)}: {key!r} must be a list of class names, got {type(value).__name__}")
    for name in value:
        if not isinstance(name, str) or not name:
            raise DataError(f"{at(path, line)}: {key!r} must hold non-empty class name strings, got {name!r}")
    return value


def read_jsonl_manifest(path: Path, class_names: list[str] | None = None) -> MultiLabelData:
    """One JSON object per line: {"image", "positive": [names], "negative": [names]}; the rest unknown.

    An optional first line {"classes": [...]} declares the class names and their order; without it (and
    without ``class_names``) the classes are the sorted union of the names used.
    """
    path = Path(path)
    text = read_text(path, "JSON lines manifest")
    if not text.strip():
        raise DataError(f"{path}: the file is empty")
    declared: list[str] | None = None
    declared_line = 0
    records: list[tuple[int, str, list[str], list[str]]] = []
    seen: dict[str, int] = {}
    files: dict[str, tuple[str, int]] = {}
    # Split on "\n" only: JSON strings may hold other Unicode line breaks.
    for line, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        record = parse_json(raw, path, line)
        if not isinstance(record, dict):
            raise DataError(f"{at(path, line)}: expected a JSON object, got {type(record).__name__}")
        if "classes" in record and "image" not in record:
            if declared is not None or records:
                raise DataError(f'{at(path, line)}: the {{"classes": [...]}} line must be the first line')
            names = record["classes"]
            if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
                raise DataError(f"{at(path, line)}: 'classes' must be a list of class name strings")
            declared = check_class_names(names, path, f"line {line}: 'classes'")
            declared_line = line
            continue
        if "image" not in record:
            raise DataError(f'{at(path, line)}: missing "image"')
        image = record["image"]
        if not isinstance(image, str) or not image.strip():
            raise DataError(f'{at(path, line)}: "image" must be a non-empty string, got {image!r}')
        image = image.strip()
        positive = _name_list(record, "positive", path, line)
        negative = _name_list(record, "negative", path, line)
        both = sorted(set(positive) & set(negative))
        if both:
            raise DataError(f"{at(path, line)}: class {both[0]!r} is both positive and negative")
        if image in seen:
            raise DataError(f"{at(path, line)}: image {image!r} is already listed on line {seen[image]}")
        seen[image] = line
        _same_file(files, image, path, line)
        records.append((line, image, positive, negative))

    if class_names is not None:
        names = check_class_names(class_names, path, "class_names argument")
        if declared is not None and set(declared) != set(names):
            raise DataError(f"{at(path, declared_line)}: declared classes differ from the class_names argument")
        fixed = True
    elif declared is not None:
        names, fixed = declared, True
    else:
        names = sorted({name for _, _, positive, negative in records for name in (*positive, *negative)})
        fixed = False
        if not names:
            raise DataError(f'{path}: no class names; declare them with a first line {{"classes": [...]}}')
    column = {name: index for index, name in enumerate(names)}
    labels = np.zeros((len(records), len(names)), dtype=LABEL_DTYPE)
    for row, (line, _, positive, negative) in enumerate(records):
        for value, group in ((POSITIVE, positive), (NEGATIVE, negative)):
            for name in group:
                if name not in column:
                    raise DataError(f"{at(path, line)}: unknown class name {name!r} (not in the declared classes)")
                labels[row, column[name]] = value
    return MultiLabelData(
        image_ids=[image for _, image, _, _ in records],
        labels=labels,
        class_names=list(names),
        image_paths=[resolve_image(path.parent, image) for _, image, _, _ in records],
        source=f"jsonl:{path}",
        info={"format": "jsonl", "classes_declared": fixed},
    )


def image_cells(data: MultiLabelData, path: Path, image_column: list[str] | None) -> list[str]:
    """What goes into the ``image`` column: given cells, paths relative to the file, or image ids."""
    if image_column is not None:
        if len(image_column) != len(data):
            raise ValueError(f"image_column has {len(image_column)} entries but the dataset has {len(data)} images")
        return [str(cell) for cell in image_column]
    if data.image_paths is None:
        return list(data.image_ids)
    cells: list[str] = []
    for image in data.image_paths:
        try:
            # resolved on both sides: through a symlinked folder a lexical ".." would point elsewhere
            cells.append(Path(os.path.relpath(Path(image).resolve(), path.parent.resolve())).as_posix())
        except ValueError:
            # No relative path exists (another drive on Windows): keep the path as given.
            cells.append(str(image))
    return cells


def write_csv_manifest(data: MultiLabelData, path: Path, image_column: list[str] | None = None) -> None:
    """Write ``data`` as a CSV manifest (values 1 / -1 / 0), atomically: the file is complete or untouched."""
    path = Path(path)
    cells = image_cells(data, path, image_column)
    first: dict[str, int] = {}
    for row, cell in enumerate(cells):
        if not cell.strip():
            raise ValueError(f"row {row}: empty image cell")
        if cell.strip() in first:
            raise ValueError(f"rows {first[cell.strip()]} and {row} have the same image cell {cell!r}")
        first[cell.strip()] = row
    from hst.io import atomic_write

    with atomic_write(path, "w", newline="") as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(["image", *data.class_names])
        for cell, row in zip(cells, data.labels.tolist(), strict=True):
            writer.writerow([cell, *row])


def write_manifest_head(source: Path, count: int, out: Path) -> list[Path]:
    """The first ``count`` images of the CSV manifest ``source`` as the manifest ``out``, their paths made absolute
    so that ``out`` can live anywhere; returns those images (benchmarks and checks on a subset of a dataset)."""
    with Path(source).open(newline="") as handle:
        rows = list(csv.reader(handle))[: count + 1]
    if not rows:
        raise DataError(f"{source}: empty manifest")
    images = [resolve_image(Path(source).parent, row[0]).resolve() for row in rows[1:]]
    with Path(out).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(rows[0])
        writer.writerows([str(image), *row[1:]] for image, row in zip(images, rows[1:], strict=True))
    return images
