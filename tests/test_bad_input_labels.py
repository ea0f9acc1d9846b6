"""Bad label files and config keys: every problem is a ``DataError`` (or ``ConfigError``) naming the file and
the line or field, never a silent wrong result."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from _helpers_bad_input import jpeg_bytes, raises_with, write
from hst.cli import main
from hst.config import ConfigError, DataConfig, TrainConfig, resolve_config
from hst.data.base import MultiLabelData
from hst.data.readers import read_csv_manifest, read_jsonl_manifest, read_vg, read_voc, read_yolo, write_csv_manifest
from hst.data.spec import load_dataset
from hst.data.splits import prepare_splits

# ---------------------------------------------------------------- label files


def test_csv_row_of_wrong_width_names_line(tmp_path: Path) -> None:
    path = write(tmp_path / "labels.csv", "image,cat,dog\na.jpg,1,-1\nb.jpg,1\nc.jpg,1,-1\n")
    raises_with(lambda: read_csv_manifest(path), f"{path}, line 3", "2 columns, expected 3")
    path = write(tmp_path / "labels.csv", "image,cat,dog\na.jpg,1,-1\nb.jpg,1,-1,0\n")
    raises_with(lambda: read_csv_manifest(path), f"{path}, line 3", "4 columns, expected 3")


def test_yolo_class_id_out_of_range_names_line(tmp_path: Path) -> None:
    write(tmp_path / "classes.yaml", "names:\n  0: cat\n  1: dog\n")
    (tmp_path / "images" / "s").mkdir(parents=True)
    (tmp_path / "images" / "s" / "a.jpg").write_bytes(jpeg_bytes())
    label_file = write(tmp_path / "labels" / "s" / "a.txt", "0 0.5 0.5 0.1 0.1\n2 0.5 0.5 0.1 0.1\n")
    raises_with(lambda: read_yolo(tmp_path, "s"), f"{label_file}, line 2", "class id 2 out of range 0..1")


def test_partial_label_file_with_wrong_classes(tmp_path: Path) -> None:
    source = load_dataset("synthetic:30")
    partial = tmp_path / "partial.csv"
    narrower = MultiLabelData(
        source.image_ids, source.labels[:, :-1], source.class_names[:-1], render=source.render, source="x"
    )
    write_csv_manifest(narrower, partial, image_column=source.image_ids)
    config = DataConfig(train="synthetic:30", partial_labels=str(partial))
    raises_with(lambda: prepare_splits(config), f"{partial}, line 1", "23 class columns", "24 classes", "toothbrush")
    # A class name the training source does not have.
    renamed = MultiLabelData(
        source.image_ids, source.labels, ["persons", *source.class_names[1:]], render=source.render, source="x"
    )
    write_csv_manifest(renamed, partial, image_column=source.image_ids)
    raises_with(lambda: prepare_splits(config), f"{partial}, line 1", "unknown ['persons']", "missing ['person']")
    # Rows missing for some training images.
    write_csv_manifest(source.subset(range(10)), partial, image_column=source.image_ids[:10])
    raises_with(lambda: prepare_splits(config), str(partial), "no row for 20 images", "synthetic-000010")


def test_label_matrix_of_wrong_shape(tmp_path: Path) -> None:
    data = load_dataset("synthetic:6")
    raises_with(lambda: data.with_labels(np.zeros((6, 23), np.int8)), "label shape (6, 23)", "(6, 24)")
    raises_with(
        lambda: MultiLabelData(["a", "b"], np.zeros((3, 2), np.int8), ["x", "y"], image_paths=[tmp_path] * 2),
        "2 image ids but 3 label rows",
    )
    with pytest.raises(ValueError, match="allowed values"):
        data.with_labels(np.full((6, 24), 2, np.int8))


def test_unknown_class_names(tmp_path: Path) -> None:
    path = write(
        tmp_path / "labels.jsonl",
        '{"classes": ["cat", "dog"]}\n{"image": "a.jpg", "positive": ["cat"]}\n'
        '{"image": "b.jpg", "negative": ["cow"]}\n',
    )
    raises_with(lambda: read_jsonl_manifest(path), f"{path}, line 3", "unknown class name 'cow'")
    write(tmp_path / "ImageSets" / "Main" / "s.txt", "001\n")
    xml = write(tmp_path / "Annotations" / "001.xml", "<annotation><object><name>unicorn</name></object></annotation>")
    raises_with(lambda: read_voc(tmp_path, "s"), str(xml), "unknown class name 'unicorn'")


def test_duplicate_image_ids(tmp_path: Path) -> None:
    path = write(tmp_path / "labels.csv", "image,cat\na.jpg,1\nb.jpg,0\na.jpg,-1\n")
    raises_with(lambda: read_csv_manifest(path), f"{path}, line 4", "'a.jpg' is already listed on line 2")
    # Two spellings of one file are one image listed twice.
    path = write(tmp_path / "labels.csv", "image,cat\nsub/a.jpg,1\n./sub/../sub/a.jpg,0\n")
    raises_with(lambda: read_csv_manifest(path), f"{path}, line 3", "'sub/a.jpg' already listed on line 2")
    path = write(tmp_path / "labels.jsonl", '{"image": "a.jpg"}\n{"image": "./a.jpg"}\n')
    raises_with(lambda: read_jsonl_manifest(path, class_names=["cat"]), f"{path}, line 2", "already listed on line 1")
    raises_with(
        lambda: MultiLabelData(["a", "b", "a"], np.zeros((3, 1), np.int8), ["x"], image_paths=[tmp_path] * 3),
        "duplicate image id 'a' (rows 0 and 2)",
    )
    # VG ids drop the suffix, so 1.jpg and 1.png would be one id.
    list_file = write(tmp_path / "vg" / "list.txt", "1.jpg\n1.png\n")
    labels = write(tmp_path / "vg" / "labels.json", json.dumps({"1.jpg": [0], "1.png": [1]}))
    raises_with(lambda: read_vg(tmp_path, list_file, labels), f"{list_file}, line 2", "id '1' of the image on line 1")


def test_empty_datasets(tmp_path: Path) -> None:
    path = write(tmp_path / "labels.csv", "image,cat,dog\n\n")
    raises_with(lambda: load_dataset(f"csv:{path}"), "the dataset is empty")
    path = write(tmp_path / "labels.jsonl", '{"classes": ["cat"]}\n')
    raises_with(lambda: load_dataset(f"jsonl:{path}"), "the dataset is empty")
    coco = {
        "images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
        "annotations": [],
        "categories": [{"id": 1, "name": "cat"}],
    }
    path = write(tmp_path / "instances.json", json.dumps(coco))
    raises_with(lambda: load_dataset(f"coco:{tmp_path}:{path}"), "the dataset is empty", "keep_empty=true")
    assert len(load_dataset(f"coco:{tmp_path}:{path}?keep_empty=true")) == 2
    raises_with(lambda: load_dataset(f"csv:{tmp_path / 'none.csv'}"), "none.csv", "not found")


DEEP_JSON = "[" * 5000 + "]" * 5000


def _deep_jsonl(root: Path) -> tuple[Callable[[], object], str]:
    path = write(root / "labels.jsonl", DEEP_JSON)
    return lambda: read_jsonl_manifest(path), f"{path}, line 1"


def _deep_coco(root: Path) -> tuple[Callable[[], object], str]:
    path = write(root / "instances.json", '{"images": ' + DEEP_JSON + "}")
    return lambda: load_dataset(f"coco:{root}:{path}"), str(path)


def _deep_yaml(root: Path) -> tuple[Callable[[], object], str]:
    path = write(root / "classes.yaml", "names: " + "[" * 1000 + "]" * 1000)
    (root / "images" / "s").mkdir(parents=True)
    (root / "labels" / "s").mkdir(parents=True)
    return lambda: read_yolo(root, "s"), str(path)


def _deep_class_list(root: Path) -> tuple[Callable[[], object], str]:
    path = write(root / "names.json", DEEP_JSON)
    list_file = write(root / "list.txt", "1.jpg\n")
    labels = write(root / "labels.json", '{"1.jpg": [0]}')
    return lambda: read_vg(root, list_file, labels, path), str(path)


def _voc_encoding(encoding: str) -> Callable[[Path], tuple[Callable[[], object], str]]:
    def build(root: Path) -> tuple[Callable[[], object], str]:
        write(root / "ImageSets" / "Main" / "s.txt", "001\n")
        path = write(root / "Annotations" / "001.xml", f'<?xml version="1.0" encoding="{encoding}"?><annotation/>')
        return lambda: read_voc(root, "s"), f"{path}: malformed XML"

    return build


@pytest.mark.parametrize(
    "build",
    [_deep_jsonl, _deep_coco, _deep_yaml, _deep_class_list, _voc_encoding("bogus"), _voc_encoding("utf-32")],
    ids=["jsonl", "coco", "yolo-yaml", "vg-class-list", "xml-unknown-encoding", "xml-multibyte-encoding"],
)
def test_pathological_files_are_data_errors(
    tmp_path: Path, build: Callable[[Path], tuple[Callable[[], object], str]]
) -> None:
    call, where = build(tmp_path)
    message = raises_with(call, where)
    assert "nested too deeply" in message or "malformed XML" in message


def test_coco_ids_must_be_integers(tmp_path: Path) -> None:
    coco = {
        "images": [{"id": 1, "file_name": "a.jpg"}],
        "annotations": [{"id": 7, "image_id": True, "category_id": 1}],
        "categories": [{"id": 1, "name": "cat"}],
    }
    path = write(tmp_path / "instances.json", json.dumps(coco))
    raises_with(lambda: load_dataset(f"coco:{tmp_path}:{path}"), str(path), "annotations[0] (id 7)", "True and 1")


def test_vg_list_entry_without_file_name(tmp_path: Path) -> None:
    list_file = write(tmp_path / "list.txt", "1.jpg\n.\n")
    labels = write(tmp_path / "labels.json", json.dumps({"1.jpg": [0], ".": [1]}))
    raises_with(lambda: read_vg(tmp_path, list_file, labels), f"{list_file}, line 2", "not an image file name")


def test_yolo_names_with_non_decimal_digits(tmp_path: Path) -> None:
    write(tmp_path / "classes.yaml", "names:\n  0: cat\n  ²: dog\n")
    (tmp_path / "images" / "s").mkdir(parents=True)
    (tmp_path / "labels" / "s").mkdir(parents=True)
    raises_with(lambda: read_yolo(tmp_path, "s"), "classes.yaml", "key '²' is not a class index")


# ---------------------------------------------------------------- config keys


def test_unknown_config_key_names_the_closest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raises_with(
        lambda: resolve_config(TrainConfig, None, ["data.proportoin=0.5"]),
        "unknown config key 'data.proportoin'",
        "did you mean 'data.proportion'",
        error=ConfigError,
    )
    config_file = write(tmp_path / "run.yaml", "trainer:\n  epoch: 3\n")
    raises_with(
        lambda: resolve_config(TrainConfig, config_file, []),
        str(config_file),
        "'trainer.epoch'",
        "'trainer.epochs'",
        error=ConfigError,
    )
    assert main(["train", "foo.bar=1"]) == 2
    err = capsys.readouterr().err
    assert "foo.bar=1" in err and "unknown config key 'foo.bar'" in err
    assert main(["train", f"trainer.output_dir={tmp_path}", "data.unreadable_image=skip"]) == 2
    err = capsys.readouterr().err
    assert "'data.unreadable_image'" in err and "did you mean 'data.unreadable_images'" in err
    assert not any(tmp_path.glob("*/config.yaml"))
