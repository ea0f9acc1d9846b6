"""One string names a dataset, the same for every verb and in config files.

    synthetic[:N]                       embedded synthetic scenes (default N = 1000)
    yolo:ROOT:SPLIT                     ROOT/images/SPLIT, ROOT/labels/SPLIT, ROOT/classes.yaml
    coco:IMAGES_DIR:ANNOTATIONS.json    COCO instances JSON (2014 or 2017)
    voc:ROOT:SPLIT                      ROOT/ImageSets/Main/SPLIT.txt, ROOT/Annotations, ROOT/JPEGImages
    vg:IMAGES_DIR:LIST.txt:LABELS.json  VG-200 in the published layout
    csv:FILE                            manifest: image column + one column per class
    jsonl:FILE                          manifest: {"image", "positive", "negative"} per line

Reader options follow a ``?``: ``coco:img:ann.json?keep_empty=true``,
``voc:VOC2007:test?difficult=negative``, ``synthetic:500?seed=3``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from hst.data.base import DataError, MultiLabelData

DATA_SPEC_HELP = __doc__ or ""


def _parse_options(text: str, spec: str) -> dict[str, str]:
    options: dict[str, str] = {}
    for item in filter(None, text.split("&")):
        if "=" not in item:
            raise DataError(f"data spec {spec!r}: option {item!r} must be key=value")
        key, value = item.split("=", 1)
        options[key.strip()] = value.strip()
    return options


def _bool(value: str, key: str, spec: str) -> bool:
    lowered = value.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise DataError(f"data spec {spec!r}: option {key}={value!r} is not a boolean")


def _split_fields(body: str) -> list[str]:
    # Split on ':' but keep Windows drive letters (C:\...) attached to their path.
    parts = body.split(":")
    merged: list[str] = []
    for part in parts:
        if merged and len(merged[-1]) == 1 and merged[-1].isalpha() and part.startswith(("\\", "/")):
            merged[-1] = merged[-1] + ":" + part
        else:
            merged.append(part)
    return merged


def _take_options(options: dict[str, str], allowed: set[str], spec: str) -> None:
    unknown = set(options) - allowed
    if unknown:
        raise DataError(
            f"data spec {spec!r}: unknown option(s) {sorted(unknown)}; allowed: {sorted(allowed) or 'none'}"
        )


def load_dataset(spec: str) -> MultiLabelData:
    """Read the dataset named by ``spec`` (see module docstring)."""
    spec = spec.strip()
    body, _, option_text = spec.partition("?")
    options = _parse_options(option_text, spec)
    kind, _, rest = body.partition(":")
    kind = kind.lower()
    fields = _split_fields(rest) if rest else []

    def need(count: int, usage: str) -> list[str]:
        if len(fields) != count or not all(fields):
            raise DataError(f"data spec {spec!r}: expected {usage}")
        return fields

    loader: Callable[[], MultiLabelData]
    if kind == "synthetic":
        from hst.data.synthetic import make_synthetic

        _take_options(options, {"seed", "size"}, spec)
        if len(fields) > 1:
            raise DataError(f"data spec {spec!r}: expected synthetic[:N]")
        try:
            count = int(fields[0]) if fields else 1000
            seed = int(options.get("seed", "0"))
            size = int(options.get("size", "128"))
        except ValueError as error:
            raise DataError(f"data spec {spec!r}: {error}") from error
        if count < 1:
            raise DataError(f"data spec {spec!r}: N must be at least 1")
        data = make_synthetic(count, seed=seed, image_size=size)
        data.source = spec
        return data
    if kind == "yolo":
        from hst.data.readers import read_yolo

        _take_options(options, set(), spec)
        root, split = need(2, "yolo:ROOT:SPLIT")
        loader = lambda: read_yolo(Path(root), split)  # noqa: E731
    elif kind == "coco":
        from hst.data.readers import read_coco

        _take_options(options, {"keep_empty"}, spec)
        images, annotations = need(2, "coco:IMAGES_DIR:ANNOTATIONS.json")
        keep_empty = _bool(options.get("keep_empty", "false"), "keep_empty", spec)
        loader = lambda: read_coco(Path(images), Path(annotations), keep_empty=keep_empty)  # noqa: E731
    elif kind == "voc":
        from hst.data.readers import read_voc

        _take_options(options, {"difficult"}, spec)
        root, split = need(2, "voc:ROOT:SPLIT")
        difficult = options.get("difficult", "unknown")
        if difficult not in {"unknown", "negative", "positive"}:
            raise DataError(f"data spec {spec!r}: difficult must be unknown, negative or positive")
        loader = lambda: read_voc(Path(root), split, difficult=difficult)  # noqa: E731
    elif kind == "vg":
        from hst.data.readers import read_vg

        _take_options(options, {"classes"}, spec)
        images, list_file, labels_json = need(3, "vg:IMAGES_DIR:LIST.txt:LABELS.json")
        classes = options.get("classes")
        loader = lambda: read_vg(  # noqa: E731
            Path(images), Path(list_file), Path(labels_json), Path(classes) if classes else None
        )
    elif kind == "csv":
        from hst.data.readers import read_csv_manifest

        _take_options(options, set(), spec)
        (path,) = need(1, "csv:FILE")
        loader = lambda: read_csv_manifest(Path(path))  # noqa: E731
    elif kind == "jsonl":
        from hst.data.readers import read_jsonl_manifest

        _take_options(options, set(), spec)
        (path,) = need(1, "jsonl:FILE")
        loader = lambda: read_jsonl_manifest(Path(path))  # noqa: E731
    else:
        raise DataError(
            f"data spec {spec!r}: unknown kind {kind!r}; expected one of synthetic, yolo, coco, voc, vg, csv, jsonl"
        )
    data = loader()
    data.source = spec
    if len(data) == 0:
        hint = ""
        unannotated = data.info.get("images_without_annotations")
        if isinstance(unannotated, int) and unannotated > 0:
            hint = f" ({unannotated} images have no annotations; add ?keep_empty=true to keep them)"
        raise DataError(f"data spec {spec!r}: the dataset is empty{hint}")
    return data
