"""Bad and unusual image files: a missing, truncated, corrupt or empty image is an error naming the file, or is
skipped and reported under ``data.unreadable_images=skip``; unusual image modes load as RGB."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _helpers_bad_input import MEAN, STD, _broken_folder, image_folder, jpeg_bytes, raises_with, write
from hst.config import DataConfig
from hst.data.base import decode_image, image_problem
from hst.data.datasets import ImageLabelDataset
from hst.data.readers import read_csv_manifest
from hst.data.spec import load_dataset
from hst.data.splits import SKIP_HINT, describe_splits, find_unreadable, prepare_splits
from hst.data.transforms import build_transform
from hst.engine.datamodule import PartialLabelDataModule

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


# ---------------------------------------------------------------- unreadable-image policy


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
