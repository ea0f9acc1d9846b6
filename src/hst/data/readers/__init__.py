"""Dataset readers: each turns one on-disk layout into a :class:`~hst.data.base.MultiLabelData`.

Malformed input raises :class:`~hst.data.base.DataError` naming the file and the line or field.
"""

from hst.data.readers.coco import read_coco
from hst.data.readers.manifest import (
    read_csv_manifest,
    read_jsonl_manifest,
    write_csv_manifest,
    write_manifest_head,
)
from hst.data.readers.vg import VG_NUM_CLASSES, read_class_list, read_vg
from hst.data.readers.voc import DIFFICULT_MODES, VOC_CLASSES, read_voc
from hst.data.readers.yolo import IMAGE_SUFFIXES, read_yolo, read_yolo_class_names

__all__ = [
    "DIFFICULT_MODES",
    "IMAGE_SUFFIXES",
    "VG_NUM_CLASSES",
    "VOC_CLASSES",
    "read_class_list",
    "read_coco",
    "read_csv_manifest",
    "read_jsonl_manifest",
    "read_vg",
    "read_voc",
    "read_yolo",
    "read_yolo_class_names",
    "write_csv_manifest",
    "write_manifest_head",
]
