"""Real-world images: EXIF orientation is applied wherever images are read; huge images are refused by size."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from hst.apps.inference import resolve_inputs
from hst.config import DataConfig
from hst.data.base import IMAGE_DECODING, DataError, ImageTooLargeError, MultiLabelData, decode_image, image_problem
from hst.data.batches import InferenceImages
from hst.data.readers import write_csv_manifest
from hst.data.spec import load_dataset
from hst.data.splits import prepare_splits
from hst.feature_cache import feature_cache_fields

ORIENTATION = 0x0112


def _upright(stored: np.ndarray, orientation: int) -> np.ndarray:
    """What an image viewer shows for ``stored`` pixels (H×W×3) tagged with EXIF ``orientation`` (TIFF 6.0)."""
    return {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],  # mirrored left-right
        3: lambda a: a[::-1, ::-1],  # rotated 180°
        4: lambda a: a[::-1, :],  # mirrored top-bottom
        5: lambda a: a.transpose(1, 0, 2),  # mirrored along the main diagonal
        6: lambda a: np.rot90(a, k=-1),  # stored rotated 90° counter-clockwise: turn it clockwise
        7: lambda a: np.rot90(a, k=2).transpose(1, 0, 2),  # mirrored along the anti-diagonal
        8: lambda a: np.rot90(a, k=1),  # stored rotated 90° clockwise: turn it counter-clockwise
    }[orientation](stored)


def _asymmetric() -> Image.Image:
    """48×32 pixels with no symmetry: each of the 8 orientations gives a different picture."""
    ys, xs = np.mgrid[0:32, 0:48]
    pixels = np.stack([xs * 5, ys * 7, (xs * ys) % 256], axis=-1).astype(np.uint8)
    pixels[2:10, 3:20] = (250, 10, 10)  # a block near the top-left corner
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """The same stored JPEG pixels once per EXIF orientation 1..8 (``o<k>.jpg``), and those stored pixels."""
    folder = tmp_path_factory.mktemp("exif")
    image = _asymmetric()
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[ORIENTATION] = orientation
        image.save(folder / f"o{orientation}.jpg", "JPEG", quality=95, exif=exif)
    image.save(folder / "plain.jpg", "JPEG", quality=95)
    with Image.open(folder / "plain.jpg") as plain:
        stored = np.asarray(plain.convert("RGB"))
    return folder, stored


@pytest.mark.parametrize("orientation", range(1, 9))
def test_each_exif_orientation_decodes_upright(photos: tuple[Path, np.ndarray], orientation: int) -> None:
    folder, stored = photos
    with Image.open(folder / f"o{orientation}.jpg") as raw:
        assert raw.getexif()[ORIENTATION] == orientation  # the file really carries the tag
        assert np.array_equal(np.asarray(raw.convert("RGB")), stored)  # and the stored pixels are the same
    decoded = np.asarray(decode_image(folder / f"o{orientation}.jpg"))
    assert np.array_equal(decoded, _upright(stored, orientation))
    if orientation >= 5:
        assert decoded.shape == (48, 32, 3)  # portrait as shown, although stored landscape


def test_training_cache_and_predict_read_photos_upright(photos: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    folder, stored = photos
    paths = [folder / f"o{k}.jpg" for k in range(1, 9)]
    data = MultiLabelData(
        image_ids=[p.name for p in paths],
        labels=np.ones((8, 1), dtype=np.int8),
        class_names=["thing"],
        image_paths=paths,
        source="exif",
    )
    write_csv_manifest(data, tmp_path / "labels.csv")
    expected = [torch.from_numpy(_upright(stored, k).copy()).permute(2, 0, 1) for k in range(1, 9)]
    to_tensor = v2.PILToTensor()

    # training and evaluation: the reader of a data spec
    manifest = load_dataset(f"csv:{tmp_path / 'labels.csv'}")
    assert all(torch.equal(to_tensor(manifest.load_image(i)), expected[i]) for i in range(8))
    # the feature cache's extraction dataset
    cached = InferenceImages(manifest, to_tensor)
    assert all(torch.equal(cached[i][1], expected[i]) for i in range(8))
    # hst predict / hst complete on a folder
    folder_data = resolve_inputs(folder, ["thing"])
    rows = dict(zip(folder_data.image_ids, range(len(folder_data)), strict=True))
    dataset = InferenceImages(folder_data, to_tensor, catch_errors=True)
    for k in range(1, 9):
        _, tensor, error = dataset[rows[f"o{k}.jpg"]]
        assert error == "" and torch.equal(tensor, expected[k - 1])


def test_feature_cache_key_covers_image_decoding() -> None:
    from hst.models.backbone import create_backbone

    data = load_dataset("synthetic:4?size=32")
    fields = feature_cache_fields(data, create_backbone("tf_efficientnet_lite0", "none", trainable="none"), 32)
    # Caches written before EXIF orientation was applied lack this field, so their key differs: they are rebuilt.
    assert fields["image_decoding"] == IMAGE_DECODING and "exif-orientation" in IMAGE_DECODING


def test_damaged_exif_block_keeps_the_image_readable(tmp_path: Path) -> None:
    path = tmp_path / "bad-exif.jpg"
    _asymmetric().save(path, "JPEG", exif=b"Exif\x00\x00MM\x00*\xff\xff\xff\xff garbage")
    assert decode_image(path).size == (48, 32)


# ---------------------------------------------------------------- huge images


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares ``width``×``height`` but holds one row of data: a decompression bomb's shape."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    row = zlib.compress(b"\x00" + b"\x00" * min(width, 1024))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", row) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize(("width", "height"), [(30_000, 4_000), (100_000, 100_000)])
def test_huge_image_is_refused_from_its_header(tmp_path: Path, width: int, height: int) -> None:
    path = _png_header_only(tmp_path / "bomb.png", width, height)
    with pytest.raises(ImageTooLargeError, match=r"data\.max_image_pixels=89,478,485"):
        decode_image(path)
    reason = image_problem(path)
    assert reason is not None and "max_image_pixels" in reason


def test_pixel_limit_is_configurable_and_names_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    paths = []
    for index in range(10):
        path = folder / f"img{index}.png"
        Image.fromarray(np.full((20, 30, 3), index * 20, np.uint8)).save(path)
        paths.append(path)
    _png_header_only(folder / "panorama.png", 30_000, 4_000)
    paths.append(folder / "panorama.png")
    data = MultiLabelData(
        image_ids=[p.name for p in paths],
        labels=np.tile(np.array([[1, -1]], np.int8), (len(paths), 1)),
        class_names=["a", "b"],
        image_paths=paths,
        source="pano",
    )
    write_csv_manifest(data, folder / "labels.csv")
    spec = f"csv:{folder / 'labels.csv'}"

    # 'error': the image is refused when read, with a message naming it and the knob.
    loaded = load_dataset(spec)
    with pytest.raises(DataError) as info:
        loaded.load_image(10)
    assert isinstance(info.value.__cause__, ImageTooLargeError)
    assert f"cannot read image {folder / 'panorama.png'}" in str(info.value)
    assert "30000×4000 = 120,000,000 pixels, more than data.max_image_pixels=89,478,485" in str(info.value)

    # A limit below 600 pixels (30×20) refuses every image; 0 lifts the limit.
    assert decode_image(paths[0], max_pixels=0).size == (30, 20)
    with pytest.raises(ImageTooLargeError, match="600 pixels"):
        decode_image(paths[0], max_pixels=599)

    # 'skip': the large file is left out and reported; the training data module never decodes it.
    splits = prepare_splits(
        DataConfig(
            train=spec, unreadable_images="skip", max_image_pixels=1_000_000, val_fraction=0.2, test_fraction=0.2
        )
    )
    assert [Path(path).name for path, _ in splits.skipped] == ["panorama.png"]
    assert "max_image_pixels=1,000,000" in splits.skipped[0][1]
    assert splits.source is not None and splits.source.max_pixels == 1_000_000
    assert splits.train.max_pixels == splits.val.max_pixels == splits.test.max_pixels == 1_000_000
