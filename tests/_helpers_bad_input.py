"""Helpers shared by the bad-input and reader tests: checking error messages, writing files, folders of real images."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path

import pytest

from hst.data.base import DataError, MultiLabelData
from hst.data.readers import write_csv_manifest
from hst.data.synthetic import make_synthetic

MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


def raises_with(call: Callable[[], object], *fragments: str, error: type[Exception] = DataError) -> str:
    """Run ``call``; it must raise ``error`` whose message contains every fragment."""
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def jpeg_bytes(seed: int = 0, size: int = 96) -> bytes:
    """A real baseline JPEG of a rendered scene (photo-like edges and colours)."""
    buffer = io.BytesIO()
    make_synthetic(1, seed=seed, image_size=size).load_image(0).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def image_folder(root: Path, count: int, size: int = 48) -> MultiLabelData:
    """``count`` scene images as files (a mix of JPEG and PNG in several modes) with a CSV manifest."""
    scenes = make_synthetic(count, seed=5, image_size=size)
    root.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for index in range(count):
        image = scenes.load_image(index)
        mode, suffix = [("RGB", "jpg"), ("L", "jpg"), ("CMYK", "jpg"), ("RGBA", "png"), ("P", "png")][index % 5]
        path = root / f"img{index:03d}.{suffix}"
        image.convert(mode).save(path)
        paths.append(path)
    data = MultiLabelData(
        image_ids=[path.name for path in paths],
        labels=scenes.labels,
        class_names=scenes.class_names,
        image_paths=paths,
        source="folder",
    )
    write_csv_manifest(data, root / "labels.csv")
    return data


def _broken_folder(root: Path) -> tuple[Path, list[str]]:
    """20 good images plus a missing, a truncated, a text and an empty file, all in one CSV manifest."""
    data = image_folder(root, 20)
    whole = (root / "img000.jpg").read_bytes()
    (root / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    (root / "text.png").write_text("not a PNG")
    (root / "empty.jpg").write_bytes(b"")
    bad = ["gone.jpg", "cut.jpg", "text.png", "empty.jpg"]
    rows = [[path.name, *row] for path, row in zip(data.image_paths or [], data.labels.tolist(), strict=True)]
    rows[3:3] = [[name, *([-1] * data.num_classes)] for name in bad]
    with (root / "labels.csv").open("w", newline="") as stream:
        csv.writer(stream).writerows([["image", *data.class_names], *rows])
    return root / "labels.csv", bad
