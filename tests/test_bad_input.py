"""Bad and unusual input: every problem is an error naming the file and the line or field, never a silent
wrong result; unusual but valid input (image modes, all-unknown rows, classes without a known positive) works.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hst.cli import main
from hst.config import ConfigError, DataConfig, TrainConfig, resolve_config
from hst.data.base import DataError, MultiLabelData, decode_image, image_problem
from hst.data.datasets import ImageLabelDataset
from hst.data.partial import make_partial
from hst.data.readers import read_csv_manifest, read_jsonl_manifest, read_vg, read_voc, read_yolo, write_csv_manifest
from hst.data.spec import load_dataset
from hst.data.splits import SKIP_HINT, describe_splits, find_unreadable, prepare_splits
from hst.data.synthetic import make_synthetic
from hst.data.transforms import build_transform
from hst.engine.datamodule import PartialLabelDataModule
from hst.labels import UNKNOWN

try:
    from tiny_run import TINY
except ImportError:  # tests collected as a package
    from tests.tiny_run import TINY

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


# ---------------------------------------------------------------- missing, truncated and corrupt images


def test_missing_image_names_file(tmp_path: Path) -> None:
    write(tmp_path / "labels.csv", "image,cat,dog\ngone.jpg,1,-1\n")
    data = load_dataset(f"csv:{tmp_path / 'labels.csv'}")
    raises_with(lambda: data.load_image(0), "image file not found", str(tmp_path / "gone.jpg"), "'gone.jpg'")
    assert image_problem(tmp_path / "gone.jpg") == "file not found"
    assert image_problem(tmp_path) == "not a regular file"
    # The default policy stops before training and says how to go on.
    config = DataConfig(train=f"csv:{tmp_path / 'labels.csv'}")
    raises_with(lambda: prepare_splits(config), "gone.jpg", "not found", SKIP_HINT)


@pytest.mark.parametrize("keep", [0.02, 0.5, 0.97])
def test_truncated_jpeg_names_file(tmp_path: Path, keep: float) -> None:
    whole = jpeg_bytes()
    good = tmp_path / "good.jpg"
    good.write_bytes(whole)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole[: int(len(whole) * keep)])
    data = read_csv_manifest(write(tmp_path / "labels.csv", "image,cat\ngood.jpg,1\ncut.jpg,-1\n"))
    assert data.load_image(0).size == (96, 96)
    message = raises_with(lambda: data.load_image(1), "cannot read image", str(cut), "'cut.jpg'")
    assert "truncated" in message.lower() or "cannot identify" in message
    # The fast check (JPEG decoded at 1/8 scale) finds the same problem, and passes the intact file.
    problem = image_problem(cut)
    assert problem is not None and ("truncated" in problem.lower() or "cannot identify" in problem)
    assert image_problem(good) is None


def test_corrupt_and_empty_files_name_file(tmp_path: Path) -> None:
    (tmp_path / "text.jpg").write_bytes(b"this is not an image at all")
    (tmp_path / "empty.png").write_bytes(b"")
    garbled = bytearray(jpeg_bytes())
    garbled[:4] = b"\x00\x00\x00\x00"  # no JPEG start marker
    (tmp_path / "garbled.jpg").write_bytes(bytes(garbled))
    data = read_csv_manifest(write(tmp_path / "labels.csv", "image,cat\ntext.jpg,1\nempty.png,1\ngarbled.jpg,1\n"))
    for index, name in enumerate(["text.jpg", "empty.png", "garbled.jpg"]):
        raises_with(lambda index=index: data.load_image(index), "cannot read image", name)
        assert "UnidentifiedImageError" in str(image_problem(tmp_path / name))


def test_training_dataset_adds_the_skip_hint(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(jpeg_bytes()[:500])
    data = read_csv_manifest(write(tmp_path / "labels.csv", "image,cat\na.jpg,1\n"))
    transform = build_transform(32, "none", MEAN, STD)
    dataset = ImageLabelDataset(data, data.labels, data.labels, transform, hint=SKIP_HINT)
    raises_with(lambda: dataset[0], "a.jpg", "data.unreadable_images=skip")
    # Without a hint (prediction, evaluation) the reader's message is passed on unchanged.
    raises_with(lambda: ImageLabelDataset(data, data.labels, data.labels, transform)[0], "a.jpg")


# ---------------------------------------------------------------- image modes


def _save(path: Path, image: Image.Image) -> Path:
    image.save(path)
    return path


@pytest.mark.parametrize(
    ("name", "make", "expected"),
    [
        ("gray.png", lambda: Image.new("L", (20, 12), 100), (100, 100, 100)),
        ("gray.jpg", lambda: Image.new("L", (20, 12), 100), (100, 100, 100)),
        ("cmyk.jpg", lambda: Image.new("RGB", (20, 12), (255, 0, 0)).convert("CMYK"), (255, 0, 0)),
        ("rgba.png", lambda: Image.new("RGBA", (20, 12), (200, 10, 10, 128)), (200, 10, 10)),
        (
            "palette.png",
            lambda: Image.new("RGB", (20, 12), (0, 128, 255)).convert("P", palette=Image.Palette.ADAPTIVE),
            (0, 128, 255),
        ),
        ("gray-alpha.png", lambda: Image.new("LA", (20, 12), (60, 0)), (60, 60, 60)),
        ("bilevel.png", lambda: Image.new("1", (20, 12), 1), (255, 255, 255)),
        # 16-bit grayscale is rescaled, not clipped to white.
        ("gray16.png", lambda: Image.fromarray(np.full((12, 20), 128 * 257, np.uint16)), (128, 128, 128)),
        ("cmyk.tif", lambda: Image.new("RGB", (20, 12), (0, 255, 0)).convert("CMYK"), (0, 255, 0)),
    ],
)
def test_image_modes_load_as_rgb(
    tmp_path: Path, name: str, make: Callable[[], Image.Image], expected: tuple[int, int, int]
) -> None:
    path = _save(tmp_path / name, make())
    data = read_csv_manifest(write(tmp_path / "labels.csv", f"image,cat\n{name},1\n"))
    image = data.load_image(0)
    assert image.mode == "RGB" and image.size == (20, 12)
    assert np.abs(np.asarray(image, dtype=int)[6, 10] - np.array(expected)).max() <= 3
    assert image_problem(path) is None
    # Through the training transform: 3×H×W float.
    for augment in ("paper", "none"):
        dataset = ImageLabelDataset(data, data.labels, data.labels, build_transform(40, augment, MEAN, STD))
        _, tensor, labels, _ = dataset[0]
        assert tensor.shape == (3, 40, 40) and tensor.dtype == torch.float32 and torch.isfinite(tensor).all()
        assert labels.tolist() == [1]


def test_float_images_are_rescaled(tmp_path: Path) -> None:
    unit = Image.fromarray(np.full((4, 4), 0.5, np.float32))
    wide = Image.fromarray(np.full((4, 4), 1000.0, np.float32))
    for name, image, value in (("unit.tif", unit, 128), ("wide.tif", wide, 255)):
        _save(tmp_path / name, image)
        assert np.asarray(decode_image(tmp_path / name))[0, 0].tolist() == [value] * 3


def test_image_modes_through_the_data_module(tmp_path: Path) -> None:
    image_folder(tmp_path / "images", 20)
    # 12 training images in batches of 4: no batch is dropped.
    manifest = tmp_path / "images" / "labels.csv"
    config = DataConfig(
        train=f"csv:{manifest}", image_size=40, batch_size=4, augment="paper", val_fraction=0.2, test_fraction=0.2
    )
    splits = prepare_splits(config)
    module = PartialLabelDataModule(splits, config, MEAN, STD)
    seen = 0
    for loader in (module.train_dataloader(), module.val_dataloader(), module.test_dataloader()):
        for _, images, labels, _ in loader:
            assert images.shape[1:] == (3, 40, 40) and torch.isfinite(images).all()
            assert labels.shape[1] == 24
            seen += len(images)
    assert seen == 20


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


# ---------------------------------------------------------------- unreadable-image policy


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


def test_skip_policy_drops_unreadable_images_and_reports_them(tmp_path: Path) -> None:
    manifest, bad = _broken_folder(tmp_path / "images")
    config = DataConfig(train=f"csv:{manifest}", unreadable_images="skip", val_fraction=0.2, test_fraction=0.2)
    splits = prepare_splits(config)
    assert splits.source is not None and len(splits.source) == 20
    assert not set(bad) & set(splits.source.image_ids)
    assert [Path(path).name for path, _ in splits.skipped] == bad
    reasons = dict((Path(path).name, reason) for path, reason in splits.skipped)
    assert reasons["gone.jpg"] == "file not found" and "truncated" in reasons["cut.jpg"].lower()
    assert "UnidentifiedImageError" in reasons["text.png"] and "UnidentifiedImageError" in reasons["empty.jpg"]
    summary = "\n".join(describe_splits(splits))
    assert f"skipped 4 of 24 images of csv:{manifest} (unreadable)" in summary
    assert all(str(manifest.parent / name) in summary for name in bad)
    # Partial labels follow the kept images.
    assert splits.train.labels.shape == (len(splits.train), 24)


def test_error_policy_names_the_file(tmp_path: Path) -> None:
    manifest, _ = _broken_folder(tmp_path / "images")
    config = DataConfig(train=f"csv:{manifest}")
    raises_with(lambda: prepare_splits(config), "gone.jpg", "image file not found", SKIP_HINT)
    # Without the missing file, decoding errors surface when the image is read, with the file named.
    text = manifest.read_text().splitlines()
    manifest.write_text("\n".join(line for line in text if not line.startswith("gone.jpg")) + "\n")
    splits = prepare_splits(config)
    module = PartialLabelDataModule(splits, dataclasses.replace(config, batch_size=64), MEAN, STD)
    loaders = [module.train_dataloader(), module.val_dataloader(), module.test_dataloader()]

    def read_all() -> None:
        for loader in loaders:
            for _ in loader:
                pass

    message = raises_with(read_all, "cannot read image", SKIP_HINT)
    assert any(name in message for name in ("cut.jpg", "text.png", "empty.jpg"))


def test_skip_policy_with_every_image_unreadable(tmp_path: Path) -> None:
    write(tmp_path / "labels.csv", "image,cat\na.jpg,1\nb.jpg,-1\n")
    (tmp_path / "a.jpg").write_bytes(b"")
    config = DataConfig(train=f"csv:{tmp_path / 'labels.csv'}", unreadable_images="skip")
    raises_with(lambda: prepare_splits(config), "all 2 images are unreadable", "a.jpg")
    raises_with(
        lambda: prepare_splits(dataclasses.replace(config, unreadable_images="ignore")),
        "'error' or 'skip'",
        error=ValueError,
    )


def test_find_unreadable_in_parallel_matches_serial(tmp_path: Path) -> None:
    whole = jpeg_bytes(size=32)
    paths = []
    for index in range(80):
        path = tmp_path / f"{index}.jpg"
        path.write_bytes(whole if index % 9 else whole[:300])
        paths.append(path)
    serial = find_unreadable(paths, workers=1)
    assert [index for index, _ in serial] == list(range(0, 80, 9))
    assert find_unreadable(paths, workers=4) == serial


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


# ---------------------------------------------------------------- tiny trainings


def _loss_column(run_dir: Path) -> list[float]:
    rows = list(csv.DictReader((run_dir / "csv" / "metrics.csv").open()))
    return [float(row["train/loss_epoch"]) for row in rows if row.get("train/loss_epoch")]


def test_all_unknown_images_and_skipped_files_in_a_tiny_run(tmp_path: Path) -> None:
    from hst.engine.train import train

    manifest, bad = _broken_folder(tmp_path / "images")
    data = read_csv_manifest(manifest)
    labels = data.labels.copy()
    labels[::3] = UNKNOWN  # every third image has no known label at all
    write_csv_manifest(data.with_labels(labels), manifest, image_column=data.image_ids)
    overrides = [
        *TINY,
        f"data.train=csv:{manifest}",
        "data.proportion=1.0",
        "data.unreadable_images=skip",
        "data.batch_size=4",
        "trainer.epochs=2",
        f"trainer.output_dir={tmp_path / 'runs'}",
    ]
    config = resolve_config(TrainConfig, None, overrides)
    splits = prepare_splits(config.data)
    unknown_rows = int((splits.train.labels == UNKNOWN).all(axis=1).sum())
    assert unknown_rows >= 2

    result = train(config)
    losses = _loss_column(result.run_dir)
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    assert math.isfinite(result.test_metrics["mAP"])
    summary = (result.run_dir / "summary.txt").read_text()
    assert f"images with no known label: {unknown_rows}" in summary
    assert "skipped 4 of 24 images" in summary and all(name in summary for name in bad)


@pytest.mark.slow
def test_class_without_known_positive_trains_hst(tmp_path: Path) -> None:
    from hst.engine.train import train

    source = load_dataset("synthetic:72")
    hidden = source.class_names.index("person")
    partial = make_partial(source.labels, "entry", 0.5, seed=0)
    partial[partial[:, hidden] == 1, hidden] = UNKNOWN  # every positive of one class is hidden
    partial_file = tmp_path / "partial.csv"
    write_csv_manifest(source.with_labels(partial), partial_file, image_column=source.image_ids)
    config = resolve_config(
        TrainConfig,
        None,
        [
            *TINY,
            "data.train=synthetic:72",
            f"data.partial_labels={partial_file}",
            "trainer.epochs=3",
            f"trainer.output_dir={tmp_path / 'runs'}",
            "trainer.run_name=hidden",
        ],
    )
    has_positive = torch.from_numpy((prepare_splits(config.data).train.labels == 1).any(axis=0))
    assert not has_positive[hidden] and has_positive.sum() > 10
    result = train(config)
    losses = _loss_column(result.run_dir)
    assert len(losses) == 3 and all(math.isfinite(loss) for loss in losses)
    test = result.test_metrics
    assert math.isfinite(test["mAP"]) and math.isfinite(test["per_class_AP"]["person"])
    assert all(math.isfinite(value) for value in test["per_class_AP"].values())
    summary = (result.run_dir / "summary.txt").read_text()
    assert "classes with no known positive" in summary and ": person" in summary

    checkpoint = torch.load(result.run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    adjacency = checkpoint["state_dict"]["network.sarl.adjacency"]
    assert torch.isfinite(adjacency).all()
    assert adjacency[hidden].tolist() == [1.0 if j == hidden else 0.0 for j in range(24)]
    prototypes = checkpoint["hst_method_state"]["prototypes"]
    # Prototypes exist exactly for the classes with a known training positive.
    assert prototypes is not None and torch.equal(prototypes["valid"].any(dim=1), has_positive)
    assert torch.isfinite(prototypes["centers"]).all()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_loss_stops_training_and_keeps_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: float
) -> None:
    from hst.engine.module import load_module
    from hst.engine.train import train
    from hst.methods.base import LossOutput, PartialBCE

    original = PartialBCE.training_loss
    calls = {"count": 0}

    def poisoned(self: PartialBCE, output: object, labels: torch.Tensor, ctx: object) -> LossOutput:
        result = original(self, output, labels, ctx)  # type: ignore[arg-type]
        step = calls["count"]
        calls["count"] += 1
        if step == 4:
            return LossOutput(result.loss + bad, result.logs)
        return result

    monkeypatch.setattr(PartialBCE, "training_loss", poisoned)
    config = resolve_config(
        TrainConfig,
        None,
        [
            *TINY,
            "data.train=synthetic:72",
            "method.name=partial_bce",
            "trainer.epochs=3",
            "trainer.save_last=true",
            f"trainer.output_dir={tmp_path}",
            "trainer.run_name=nan",
        ],
    )
    raises_with(
        lambda: train(config), "non-finite training loss", "epoch 1, step 4", str(bad), error=FloatingPointError
    )
    assert calls["count"] == 5  # training stopped at the bad step
    last = tmp_path / "nan" / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=False)
    assert saved["epoch"] == 0 and saved["global_step"] == 3
    assert all(torch.isfinite(value).all() for value in saved["state_dict"].values() if value.is_floating_point())
    module, _ = load_module(last)
    assert torch.isfinite(module(torch.zeros(1, 3, 64, 64))).all()
