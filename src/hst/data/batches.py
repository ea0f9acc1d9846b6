"""Batches of resized pixels for a frozen backbone, decoded while the previous batch runs through the network.

Decoding and the bicubic resize happen here (PIL releases the GIL for both, so a thread overlaps them with the
forward pass); the float conversion and normalisation of the evaluation transform happen in the runtime that
runs the backbone (:func:`hst.data.transforms.normalize_pixels`), on the whole batch at once. Nothing here
imports torch (only the DataLoader of ``num_workers > 0`` does), so an exported graph can run without it.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
from PIL import Image

from hst.data.base import DataError, MultiLabelData

DECODE_THREADS = 1
"""Threads decoding ahead: on 2 cores one keeps up with the backbone (a second one only competes with it)."""
BATCHES_AHEAD = 4
"""Batches decoded ahead: they fill while the backbone is exported (about 40 MB of pixels at 448 px)."""
DECODE_NICENESS = 10
"""How much lower the decoding thread's priority is (Linux): it fills the gaps of the backbone's threads instead
of stalling them (0.85 → 0.89 of the forward-only rate on 2 cores)."""


def _lower_priority() -> None:
    # Linux schedules threads by their own id; elsewhere the call would change the whole process (or another one)
    if sys.platform != "linux":
        return
    thread = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + DECODE_NICENESS))
    except OSError:
        pass  # a sandbox that forbids it: decoding just competes at the same priority


class RowsOfBatch:
    """The rows a batch covers: ``rows`` were read, ``skipped`` could not be (with why); its length counts both."""

    rows: list[int]
    skipped: list[tuple[int, str]]

    def __len__(self) -> int:
        return len(self.rows) + len(self.skipped)


@dataclass
class PixelBatch(RowsOfBatch):
    """The rows of one batch that could be read, their pixels, and the rows that could not (with why)."""

    rows: list[int]
    pixels: np.ndarray | None
    """``B×H×W×3`` uint8, one image per entry of ``rows`` (None when no image of the batch could be read)."""
    skipped: list[tuple[int, str]] = field(default_factory=list)


def resize_square(image: Image.Image, image_size: int) -> np.ndarray:
    """``image`` resized to ``image_size × image_size`` as ``H×W×3`` uint8: the evaluation transform's resize.

    The same PIL call as :func:`hst.data.transforms.eval_resize` (torchvision's bicubic, antialiased resize of a
    PIL image), so the same pixels, without importing torchvision.
    """
    return np.asarray(image.resize((int(image_size), int(image_size)), Image.Resampling.BICUBIC))


class InferenceImages:
    """Yields ``(row, transform(image) or None, error message)``: the images of ``data`` through ``transform``.

    With ``catch_errors`` an unreadable file gives ``(row, None, message)`` so that one bad file does not stop the
    others (predict, complete); otherwise its :class:`~hst.data.base.DataError` propagates (the feature cache).
    Picklable for DataLoader workers when ``transform`` is.
    """

    def __init__(
        self, data: MultiLabelData, transform: Callable[[Image.Image], Any], catch_errors: bool = False
    ) -> None:
        self.data = data
        self.transform = transform
        self.catch_errors = catch_errors

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[int, Any, str]:
        try:
            image = self.data.load_image(index)
        except DataError as error:
            if not self.catch_errors:
                raise
            return index, None, str(error)
        return index, self.transform(image), ""


class ResizedImages(InferenceImages):
    """Yields ``(row, H×W×3 uint8 pixels or None, error message)``: the images of ``data`` resized for the network
    (:func:`resize_square`); unreadable images as in :class:`InferenceImages`."""

    def __init__(self, data: MultiLabelData, image_size: int, catch_errors: bool = False) -> None:
        super().__init__(data, partial(resize_square, image_size=int(image_size)), catch_errors)


def _collate(items: list[tuple[int, np.ndarray | None, str]]) -> PixelBatch:
    good = [(row, pixels) for row, pixels, _ in items if pixels is not None]
    skipped = [(row, message) for row, pixels, message in items if pixels is None]
    stacked = np.stack([pixels for _, pixels in good]) if good else None
    return PixelBatch([row for row, _ in good], stacked, skipped)


class PixelBatches:
    """The images of ``data`` in order, ``batch_size`` at a time, decoded ahead of the caller.

    Decoding starts when the object is made, so that it overlaps whatever the caller prepares before iterating
    (such as exporting the backbone). ``num_workers > 0``: DataLoader worker processes (``data.num_workers``)
    instead, started on iteration; otherwise ``threads`` threads keep :data:`BATCHES_AHEAD` batches ahead.
    Iterate once; :meth:`close` (or the end of the iteration) stops the decoding.
    """

    def __init__(
        self,
        data: MultiLabelData,
        image_size: int,
        batch_size: int,
        catch_errors: bool = False,
        num_workers: int = 0,
        threads: int = DECODE_THREADS,
    ) -> None:
        self.dataset = ResizedImages(data, image_size, catch_errors)
        self.batch_size = max(1, batch_size)
        self.num_workers = num_workers
        self._starts = iter(range(0, len(self.dataset), self.batch_size))
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future[PixelBatch]] = []
        if num_workers <= 0:
            self._pool = ThreadPoolExecutor(
                max(1, threads), thread_name_prefix="hst-decode", initializer=_lower_priority
            )
            self._submit(BATCHES_AHEAD)

    def _load(self, start: int) -> PixelBatch:
        return _collate([self.dataset[i] for i in range(start, min(start + self.batch_size, len(self.dataset)))])

    def _submit(self, count: int) -> None:
        assert self._pool is not None
        for start in list(itertools.islice(self._starts, count)):
            self._pending.append(self._pool.submit(self._load, start))

    def __iter__(self) -> Iterator[PixelBatch]:
        if self._pool is None:
            from torch.utils.data import DataLoader

            yield from DataLoader(
                self.dataset, batch_size=self.batch_size, num_workers=self.num_workers, collate_fn=_collate
            )
            return
        try:
            while self._pending:
                self._submit(1)
                yield self._pending.pop(0).result()
        finally:
            self.close()

    def close(self) -> None:
        if self._pool is not None:
            # a consumer that stops early (an error) leaves no decoding behind
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pending.clear()
