"""Label manifests (CSV and JSON lines) read and written: real shared data, values and paths, every malformed-input
error, and the CSV writer."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from _helpers_bad_input import raises_with, write
from conftest import real_data
from hst.data.base import MultiLabelData
from hst.data.readers import (
    VOC_CLASSES,
    read_csv_manifest,
    read_jsonl_manifest,
    write_csv_manifest,
    write_manifest_head,
)
from hst.data.spec import load_dataset

# ---------------------------------------------------------------- CSV manifest


def test_csv_reads_voc2007_train() -> None:
    data = read_csv_manifest(real_data("voc2007-train", "labels.csv"))
    assert len(data) == 2500
    assert data.class_names == list(VOC_CLASSES)  # also proves CRLF line ends were handled
    assert (data.labels == 0).any(), "empty cells (difficult-only classes) are unknown"
    assert ((data.labels == 1).sum(axis=1) + (data.labels == 0).sum(axis=1) >= 1).all()
    assert data.image_ids[0] == "JPEGImages/000012.jpg"
    assert data.image_paths is not None and all(path.is_file() for path in data.image_paths)
    assert data.labels[0, VOC_CLASSES.index("car")] == 1
    assert len(load_dataset(f"csv:{real_data('voc2007-train', 'labels.csv')}")) == 2500


def test_csv_values_and_paths(tmp_path: Path) -> None:
    absolute = tmp_path / "elsewhere" / "z.jpg"
    path = write(
        tmp_path / "m" / "labels.csv",
        f" image , cat,dog , bird\nimg/a.jpg,1, -1 ,\n\n{absolute},0,,-1\n",
    )
    data = read_csv_manifest(path)
    assert data.class_names == ["cat", "dog", "bird"]
    assert data.image_ids == ["img/a.jpg", str(absolute)]
    np.testing.assert_array_equal(data.labels, [[1, -1, 0], [0, 0, -1]])
    assert data.image_paths == [tmp_path / "m" / "img" / "a.jpg", absolute]


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("image,cat,dog\na.jpg,1,-1\nb.jpg,1\n", ["line 3", "2 columns", "expected 3"]),
        ("image,cat,dog\na.jpg,1,-1\nb.jpg,1,1.0\n", ["line 3", "'dog'", "'1.0'"]),
        ("image,cat,dog\na.jpg,yes,-1\n", ["line 2", "'cat'", "'yes'"]),
        ("file,cat,dog\na.jpg,1,-1\n", ["line 1", "'image'"]),
        ("image,cat,dog,cat\na.jpg,1,-1,1\n", ["line 1", "duplicate class name 'cat'"]),
        ("image,cat\na.jpg,1\nb.jpg,-1\na.jpg,0\n", ["line 4", "line 2", "'a.jpg'"]),
        ("", ["empty"]),
        ("  \n\n", ["empty"]),
        ("image\na.jpg\n", ["line 1", "no class"]),
    ],
)
def test_csv_errors(tmp_path: Path, text: str, fragments: list[str]) -> None:
    path = write(tmp_path / "bad.csv", text)
    raises_with(lambda: read_csv_manifest(path), "bad.csv", *fragments)


def test_csv_missing_file(tmp_path: Path) -> None:
    raises_with(lambda: read_csv_manifest(tmp_path / "none.csv"), "none.csv", "not found")


# ---------------------------------------------------------------- JSON lines manifest


def test_jsonl_declared_classes(tmp_path: Path) -> None:
    lines = [
        {"classes": ["dog", "cat", "bird"]},
        {"image": "a.jpg", "positive": ["cat"], "negative": ["dog"]},
        {},
        {"image": "sub/b.jpg", "negative": ["bird", "cat"]},
        {"image": "c.jpg"},
    ]
    text = "\n".join("" if not line else json.dumps(line) for line in lines) + "\n\n"
    data = read_jsonl_manifest(write(tmp_path / "m.jsonl", text))
    assert data.class_names == ["dog", "cat", "bird"]
    assert data.image_ids == ["a.jpg", "sub/b.jpg", "c.jpg"]
    np.testing.assert_array_equal(data.labels, [[-1, 1, 0], [0, -1, -1], [0, 0, 0]])
    assert data.image_paths == [tmp_path / "a.jpg", tmp_path / "sub" / "b.jpg", tmp_path / "c.jpg"]


def test_jsonl_undeclared_and_given_classes(tmp_path: Path) -> None:
    lines = [{"image": "a.jpg", "positive": ["zebra"]}, {"image": "b.jpg", "negative": ["ant", "zebra"]}]
    path = write(tmp_path / "m.jsonl", "\n".join(json.dumps(line) for line in lines))
    data = read_jsonl_manifest(path)
    assert data.class_names == ["ant", "zebra"]
    np.testing.assert_array_equal(data.labels, [[0, 1], [-1, -1]])
    given = read_jsonl_manifest(path, class_names=["zebra", "cow", "ant"])
    np.testing.assert_array_equal(given.labels, [[1, 0, 0], [-1, 0, -1]])
    raises_with(lambda: read_jsonl_manifest(path, class_names=["zebra"]), "m.jsonl", "line 2", "'ant'")
    assert len(load_dataset(f"jsonl:{path}")) == 2


@pytest.mark.parametrize(
    ("lines", "fragments"),
    [
        (['{"classes": ["a", "b"]}', '{"image": "x.jpg", "positive": ["a"]', ""], ["line 2", "invalid JSON"]),
        (['{"classes": ["a", "b"]}', '{"positive": ["a"]}'], ["line 2", '"image"']),
        (['{"image": "x.jpg"}', "", '{"image": "y.jpg", "positive": ["a"], "negative": ["a"]}'], ["line 3", "'a'"]),
        (['{"classes": ["a", "b"]}', '{"image": "x.jpg", "negative": ["c"]}'], ["line 2", "unknown class name 'c'"]),
        (['{"image": "x.jpg", "positive": "a"}'], ["line 1", "'positive'", "list"]),
        (['{"image": "x.jpg", "negative": {"a": 1}}'], ["line 1", "'negative'", "list"]),
        (['{"image": "x.jpg", "positive": ["a"]}', '{"classes": ["a"]}'], ["line 2", "first line"]),
        (['{"image": "x.jpg", "positive": ["a"]}', '{"image": "x.jpg"}'], ["line 2", "line 1", "'x.jpg'"]),
        (['["x.jpg"]'], ["line 1", "JSON object"]),
        (['{"image": 3}'], ["line 1", '"image"']),
        (["", "  "], ["empty"]),
    ],
)
def test_jsonl_errors(tmp_path: Path, lines: list[str], fragments: list[str]) -> None:
    path = write(tmp_path / "bad.jsonl", "\n".join(lines))
    raises_with(lambda: read_jsonl_manifest(path), "bad.jsonl", *fragments)


# ---------------------------------------------------------------- CSV writer


def test_write_csv_round_trip_with_paths(tmp_path: Path) -> None:
    images = tmp_path / "images"
    labels = np.array([[1, -1, 0], [0, 1, -1], [-1, -1, -1]], dtype=np.int8)
    data = MultiLabelData(
        image_ids=["a", "b", "c"],
        labels=labels,
        class_names=["cat", "dog", "hot, dog"],
        image_paths=[images / "a.jpg", images / "sub" / "b.jpg", tmp_path / "c.jpg"],
    )
    out = tmp_path / "manifests" / "labels.csv"
    write_csv_manifest(data, out)
    text = out.read_text(encoding="utf-8")
    assert text.splitlines()[0] == 'image,cat,dog,"hot, dog"'
    assert text.splitlines()[2] == "../images/sub/b.jpg,0,1,-1"
    back = read_csv_manifest(out)
    assert back.class_names == data.class_names
    np.testing.assert_array_equal(back.labels, labels)
    assert back.image_paths is not None
    assert [p.resolve() for p in back.image_paths] == [p.resolve() for p in data.image_paths]


def test_write_csv_into_a_symlinked_folder_points_at_the_real_images(tmp_path: Path) -> None:
    data_root = tmp_path / "project" / "data"
    (data_root / "images").mkdir(parents=True)
    (data_root / "images" / "a.jpg").write_bytes(b"x")
    elsewhere = tmp_path / "elsewhere" / "deep"
    elsewhere.mkdir(parents=True)
    (tmp_path / "project" / "link").symlink_to(elsewhere, target_is_directory=True)
    data = MultiLabelData(
        image_ids=["a"],
        labels=np.array([[1]], dtype=np.int8),
        class_names=["cat"],
        image_paths=[data_root / "images" / "a.jpg"],
    )
    out = tmp_path / "project" / "link" / "labels.csv"  # written through the link, lands in elsewhere/deep
    write_csv_manifest(data, out)
    back = read_csv_manifest(out)
    assert back.image_paths is not None and back.image_paths[0].resolve() == (data_root / "images" / "a.jpg")
    assert back.image_paths[0].is_file()


def test_write_csv_without_paths_and_custom_column(tmp_path: Path) -> None:
    from PIL import Image

    data = MultiLabelData(
        image_ids=["s0", "s1"],
        labels=np.array([[1, 0], [-1, 1]], dtype=np.int8),
        class_names=["x", "y"],
        render=lambda i: Image.new("RGB", (4, 4)),
    )
    out = tmp_path / "synthetic.csv"
    write_csv_manifest(data, out)
    assert out.read_text().splitlines() == ["image,x,y", "s0,1,0", "s1,-1,1"]
    write_csv_manifest(data, out, image_column=["p/0.png", "p/1.png"])
    assert read_csv_manifest(out).image_ids == ["p/0.png", "p/1.png"]
    with pytest.raises(ValueError, match="image_column"):
        write_csv_manifest(data, out, image_column=["only-one.png"])


def test_write_csv_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = write(tmp_path / "labels.csv", "image,cat\nold.jpg,1\n")
    data = MultiLabelData(
        image_ids=["a"], labels=np.array([[1]]), class_names=["cat"], image_paths=[tmp_path / "a.jpg"]
    )

    def crash(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        write_csv_manifest(data, out)
    assert out.read_text() == "image,cat\nold.jpg,1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.csv"]
    monkeypatch.undo()
    write_csv_manifest(data, out)
    assert out.read_text() == "image,cat\na.jpg,1\n"


def test_manifest_head_keeps_the_first_rows_with_absolute_paths(tmp_path: Path) -> None:
    source_dir = tmp_path / "data"
    (source_dir / "img").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere.jpg"
    write(source_dir / "labels.csv", f"image,cat,dog\nimg/a.jpg,1,\n{elsewhere},-1,1\nimg/c.jpg,,1\n")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    images = write_manifest_head(source_dir / "labels.csv", 2, out_dir / "head.csv")
    assert images == [(source_dir / "img" / "a.jpg").resolve(), elsewhere.resolve()]
    assert (out_dir / "head.csv").read_text().splitlines() == [
        "image,cat,dog",
        f"{images[0]},1,",
        f"{images[1]},-1,1",
    ]
