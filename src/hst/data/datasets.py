"""Torch datasets over a :class:`~hst.data.base.MultiLabelData`: labelled images for training and evaluation
(images alone for inference: :class:`hst.data.batches.InferenceImages`)."""

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
