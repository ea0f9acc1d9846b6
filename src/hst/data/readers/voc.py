"""Pascal VOC 2007 / 2012: ImageSets/Main/<split>.txt, Annotations/<id>.xml, JPEGImages/<id>.jpg."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from hst.data.base import DataError, MultiLabelData
from hst.data.readers._common import at, read_list
from hst.labels import LABEL_DTYPE, NEGATIVE, POSITIVE, UNKNOWN

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
DIFFICULT_MODES = ("unknown", "negative", "positive")
_COLUMN = {name: index for index, name in enumerate(VOC_CLASSES)}
_TRUE = {"1", "true"}
_FALSE = {"0", "false", ""}


def _objects(xml_path: Path, split_file: Path, line: int) -> list[tuple[int, bool]]:
    """(class column, difficult) for every <object> of one annotation file."""
    if not xml_path.is_file():
        raise DataError(f"{xml_path}: annotation file not found (image listed on line {line} of {split_file})")
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as error:
        row, column = error.position
        raise DataError(f"{at(xml_path, row, column)}: malformed XML: {error}") from error
    except OSError as error:
        raise DataError(f"{xml_path}: cannot read annotation file: {error}") from error
    except (LookupError, ValueError) as error:
        # The XML declaration names an unknown or multi-byte encoding that the parser cannot use.
        raise DataError(f"{xml_path}: malformed XML: {error}") from error
    found: list[tuple[int, bool]] = []
    for number, element in enumerate(root.findall("object"), start=1):
        name = (element.findtext("name") or "").strip()
        if not name:
            raise DataError(f"{xml_path}: object {number} has no <name>")
        if name not in _COLUMN:
            raise DataError(
                f"{xml_path}: object {number} has unknown class name {name!r} (not one of the 20 VOC classes)"
            )
        flag = (element.findtext("difficult") or "").strip().lower()
        if flag not in _TRUE and flag not in _FALSE:
            raise DataError(f"{xml_path}: object {number} ({name}): <difficult> is {flag!r}, expected 0 or 1")
        found.append((_COLUMN[name], flag in _TRUE))
    return found


def read_voc(root: Path, split: str, difficult: str = "unknown") -> MultiLabelData:
    """Image-level labels from VOC object annotations.

    ``difficult`` decides classes seen only as difficult objects: "unknown" (0), "negative" (-1, the
    objects are ignored), or "positive" (+1, difficult objects count like the others).
    """
    if difficult not in DIFFICULT_MODES:
        raise DataError(f"read_voc: difficult={difficult!r}; expected one of {', '.join(DIFFICULT_MODES)}")
    root = Path(root)
    split_file = root / "ImageSets" / "Main" / f"{split}.txt"
    # Per-class lists ("000005 -1") carry a flag after the id; the id is all we need.
    entries = read_list(split_file, "VOC split file", first_word=True)
    labels = np.full((len(entries), len(VOC_CLASSES)), NEGATIVE, dtype=LABEL_DTYPE)
    difficult_only = 0
    for row, (line, image_id) in enumerate(entries):
        objects = _objects(root / "Annotations" / f"{image_id}.xml", split_file, line)
        easy = {column for column, hard in objects if not hard}
        hard_only = {column for column, hard in objects if hard} - easy
        difficult_only += len(hard_only)
        labels[row, sorted(easy)] = POSITIVE
        if difficult == "positive":
            labels[row, sorted(hard_only)] = POSITIVE
        elif difficult == "unknown":
            labels[row, sorted(hard_only)] = UNKNOWN
    return MultiLabelData(
        image_ids=[image_id for _, image_id in entries],
        labels=labels,
        class_names=list(VOC_CLASSES),
        image_paths=[root / "JPEGImages" / f"{image_id}.jpg" for _, image_id in entries],
        source=f"voc:{root}:{split}",
        info={"format": "voc", "split": split, "difficult": difficult, "difficult_only": difficult_only},
    )
