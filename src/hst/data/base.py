"""The container every dataset reader returns."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from hst.labels import as_label_matrix

DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
"""Pillow's own decompression-bomb limit (1 GiB of 32-bit pixels / 4 / 3): about 9,500 × 9,500 pixels."""
IMAGE_DECODING = "rgb-exif-orientation-1"
"""What :func:`decode_image` does to the stored pixels; feature caches are keyed by it, so a change rebuilds them."""


class DataError(ValueError):
    """Malformed or missing dataset input; the message names the file and line or field."""


class ImageTooLargeError(DataError):
    """An image with more pixels than the configured limit (``data.max_image_pixels``); refused before decoding."""


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB version of ``image``; 16-bit and float grayscale are rescaled to 8 bits instead of being clipped."""
    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.asarray(image, dtype=np.float64)
        # "I" holds 16-bit files on some Pillow versions; 8-bit content is left as it is.
        if image.mode != "I" or values.max(initial=0) > 255:
            values = values / 257.0
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))
    elif image.mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        low, high = (values.min(), values.max()) if values.size else (0.0, 0.0)
        if low >= 0.0 and high <= 1.0:
            values = values * 255.0
        elif high > 255.0:
            values = values * (255.0 / high)
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))
    return image if image.mode == "RGB" else image.convert("RGB")


def _too_large(size: str, max_pixels: int) -> ImageTooLargeError:
    return ImageTooLargeError(
        f"{size}, more than data.max_image_pixels={max_pixels:,} (decoding it could exhaust memory); "
        "downscale the file or raise data.max_image_pixels (0 = no limit)"
    )


def decode_image(path: Path, reduced: bool = False, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode the whole file at ``path`` to RGB, turned upright by its EXIF orientation (as image viewers show it).

    ``reduced`` lets JPEGs decode at 1/8 scale (a fast full check). An image of more than ``max_pixels`` pixels
    (None or 0: no limit) raises :class:`ImageTooLargeError` from its header, before any pixel is decoded.
    """
    limit = int(max_pixels or 0)
    if (Image.MAX_IMAGE_PIXELS or 0) and (limit == 0 or limit > Image.MAX_IMAGE_PIXELS):  # type: ignore[operator]
        # Pillow's own bomb check would refuse images the configured limit allows; the check below replaces it.
        Image.MAX_IMAGE_PIXELS = limit or None
    try:
        opened = Image.open(path)
    except Image.DecompressionBombError as error:
        raise _too_large(" ".join(str(error).split()).rstrip("."), limit) from error
    with opened as image:
        if limit and image.width * image.height > limit:
            raise _too_large(f"{image.width}×{image.height} = {image.width * image.height:,} pixels", limit)
        if reduced:
            image.draft("RGB", (max(image.width // 8, 1), max(image.height // 8, 1)))
        image.load()
        try:
            ImageOps.exif_transpose(image, in_place=True)
        except Exception:  # a damaged EXIF block must not make an otherwise readable image unreadable
            pass
        return to_rgb(image)


def describe_image_error(error: BaseException) -> str:
    """A one-line reason for a failed decode (the exception type is kept when the message is bare)."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def image_problem(path: Path, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> str | None:
    """Why ``path`` cannot be used as an image (missing, undecodable, truncated, too large), or None if it decodes."""
    try:
        if not path.is_file():
            return "not a regular file" if path.exists() else "file not found"
        decode_image(path, reduced=True, max_pixels=max_pixels)
    except Exception as error:  # any failure to decode makes the image unusable
        return describe_image_error(error)
    return None


@dataclass(frozen=True)
class _SubsetRenderer:
    """Renders row i of a subset as row mapping[i] of the parent (a class so DataLoader workers can pickle it)."""

    base: Callable[[int], Image.Image]
    mapping: np.ndarray

    def __call__(self, index: int) -> Image.Image:
        return self.base(int(self.mapping[index]))


@dataclass
class MultiLabelData:
    """Images with an N×C int8 label matrix (+1 positive, -1 negative, 0 unknown).

    ``image_paths`` are real files; readers that synthesise their images (the embedded synthetic
    dataset) leave paths as ``None`` and provide ``render`` instead.
    """

    image_ids: list[str]
    labels: np.ndarray
    class_names: list[str]
    image_paths: list[Path] | None = None
    render: Callable[[int], Image.Image] | None = None
    source: str = ""
    info: dict[str, object] = field(default_factory=dict)
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS
    """Images with more pixels are refused (:class:`ImageTooLargeError`); None or 0 = no limit."""

    def __post_init__(self) -> None:
        self.labels = as_label_matrix(self.labels)
        n, c = self.labels.shape
        if len(self.image_ids) != n:
            raise DataError(f"{self.source}: {len(self.image_ids)} image ids but {n} label rows")
        if len(self.class_names) != c:
            raise DataError(f"{self.source}: {len(self.class_names)} class names but {c} label columns")
        if self.image_paths is not None and len(self.image_paths) != n:
            raise DataError(f"{self.source}: {len(self.image_paths)} image paths but {n} label rows")
        if self.image_paths is None and self.render is None:
            raise DataError(f"{self.source}: a dataset needs image paths or a renderer")
        seen: dict[str, int] = {}
        for row, image_id in enumerate(self.image_ids):
            if image_id in seen:
                raise DataError(f"{self.source}: duplicate image id {image_id!r} (rows {seen[image_id]} and {row})")
            seen[image_id] = row
        duplicates = {name for name in self.class_names if self.class_names.count(name) > 1}
        if duplicates:
            raise DataError(f"{self.source}: duplicate class names {sorted(duplicates)}")

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def load_image(self, index: int) -> Image.Image:
        """Return image ``index`` as RGB (grayscale, CMYK, RGBA, palette and 16-bit images are converted)."""
        if self.render is not None:
            return self.render(index).convert("RGB")
        assert self.image_paths is not None
        path = self.image_paths[index]
        if not path.is_file():
            raise DataError(f"{self.source}: image file not found: {path} (image id {self.image_ids[index]!r})")
        try:
            return decode_image(path, max_pixels=self.max_pixels)
        except Exception as error:  # image plugins raise many types on malformed files
            raise DataError(
                f"{self.source}: cannot read image {path} (image id {self.image_ids[index]!r}): "
                f"{describe_image_error(error)}"
            ) from error

    def subset(self, indices: np.ndarray | list[int]) -> MultiLabelData:
        """A view with the rows ``indices`` (in that order); renderers keep their original indices."""
        idx = np.asarray(indices, dtype=np.int64)
        render = _SubsetRenderer(self.render, idx.copy()) if self.render is not None else None
        return MultiLabelData(
            image_ids=[self.image_ids[i] for i in idx],
            labels=self.labels[idx],
            class_names=list(self.class_names),
            image_paths=None if self.image_paths is None else [self.image_paths[i] for i in idx],
            render=render,
            source=self.source,
            info=dict(self.info),
            max_pixels=self.max_pixels,
        )

    def with_labels(self, labels: np.ndarray) -> MultiLabelData:
        """The same images with another label matrix of the same shape (e.g. partial labels)."""
        labels = as_label_matrix(labels)
        if labels.shape != self.labels.shape:
            raise DataError(f"{self.source}: label shape {labels.shape} != dataset shape {self.labels.shape}")
        return MultiLabelData(
            image_ids=list(self.image_ids),
            labels=labels,
            class_names=list(self.class_names),
            image_paths=self.image_paths,
            render=self.render,
            source=self.source,
            info=dict(self.info),
            max_pixels=self.max_pixels,
        )

    def with_max_pixels(self, max_pixels: int | None) -> MultiLabelData:
        """The same data with another image size limit (``data.max_image_pixels``)."""
        return dataclasses.replace(self, max_pixels=max_pixels)
