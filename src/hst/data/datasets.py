"""Torch datasets over a :class:`~hst.data.base.MultiLabelData`: labelled images for training and evaluation,
and images alone for inference (predict, complete, the feature cache)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from hst.data.base import DataError, MultiLabelData


class ImageLabelDataset(Dataset):
    """Yields (row index, image tensor, training labels, evaluation labels) as in the published code."""

    def __init__(
        self,
        data: MultiLabelData,
        labels: np.ndarray,
        eval_labels: np.ndarray,
        transform: v2.Compose,
        hint: str = "",
    ):
        self.data = data
        self.labels = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int8))
        self.eval_labels = torch.from_numpy(np.ascontiguousarray(eval_labels, dtype=np.int8))
        self.transform = transform
        self.hint = hint

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]:
        try:
            image: Image.Image = self.data.load_image(index)
        except DataError as error:
            if not self.hint:
                raise
            raise DataError(f"{error}; {self.hint}") from error
        return index, self.transform(image), self.labels[index], self.eval_labels[index]


class InferenceImages(Dataset):
    """Yields (row, image tensor or None, error message): the images of ``data`` through ``transform``.

    With ``catch_errors`` an unreadable file gives ``(row, None, message)`` so that one bad file does not stop a
    worker (predict, complete); otherwise its :class:`~hst.data.base.DataError` propagates (the feature cache).
    Picklable for DataLoader workers.
    """

    def __init__(self, data: MultiLabelData, transform: object, catch_errors: bool = False) -> None:
        self.data = data
        self.transform = transform
        self.catch_errors = catch_errors

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str]:
        try:
            image = self.data.load_image(index)
        except DataError as error:
            if not self.catch_errors:
                raise
            return index, None, str(error)
        return index, self.transform(image), ""  # type: ignore[operator]
