"""The Lightning data module: loaders of images, or of cached backbone features, for a run's splits."""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from hst.config import DataConfig
from hst.data.datasets import ImageLabelDataset
from hst.data.splits import SKIP_HINT, Splits
from hst.data.transforms import build_transform
from hst.feature_cache import CachedFeatureDataset, FeatureCache
from hst.midlevel_cache import FrontCache, FrontFeatureDataset


def last_batch_size(num_images: int, batch_size: int, world_size: int = 1) -> int:
    """Images in each process's last training batch: under DDP every rank gets ceil(N / world_size) images (the
    distributed sampler pads the shares to equal length), so the remainder is that share's, not the whole set's."""
    share = math.ceil(num_images / max(1, world_size))
    return share % batch_size or min(share, batch_size)


class PartialLabelDataModule(L.LightningDataModule):
    """Loaders of images, or of cached backbone features when ``caches`` (source, test) are given: final feature
    maps (frozen backbone) or the frozen front's maps (:mod:`hst.midlevel_cache`)."""

    def __init__(
        self,
        splits: Splits,
        config: DataConfig,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        seed: int = 0,
        caches: tuple[FeatureCache, FeatureCache] | tuple[FrontCache, FrontCache] | None = None,
        pooled: bool = False,
    ):
        super().__init__()
        self.seed = seed
        self.caches = caches
        self.pooled = pooled
        self.splits = splits
        self.config = config
        self.train_transform = build_transform(config.image_size, config.augment, mean, std)
        self.eval_transform = build_transform(config.image_size, "none", mean, std)

    def _loader(self, dataset: Dataset, shuffle: bool, batch_size: int, drop_last: bool = False) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=self.config.num_workers,
            persistent_workers=self.config.num_workers > 0,
            generator=generator,
        )

    def _dataset(self, part: str, labels: np.ndarray, eval_labels: np.ndarray, augment: bool) -> Dataset:
        s = self.splits
        data = {"train": s.train, "val": s.val, "test": s.test}[part]
        if self.caches is None:
            transform = self.train_transform if augment else self.eval_transform
            hint = SKIP_HINT if self.config.unreadable_images == "error" else ""
            return ImageLabelDataset(data, labels, eval_labels, transform, hint=hint)
        cache = self.caches[1] if part == "test" else self.caches[0]
        rows = {"train": s.train_rows, "val": s.val_rows, "test": s.test_rows}[part]
        if isinstance(cache, FrontCache):
            flip = augment and self.config.augment == "flip"
            return FrontFeatureDataset(cache, labels, eval_labels, rows=rows, flip=flip)
        return CachedFeatureDataset(cache, labels, eval_labels, rows=rows, pooled=self.pooled)

    def train_dataloader(self) -> DataLoader:
        s = self.splits
        dataset = self._dataset("train", s.train.labels, s.train_full, augment=True)
        steps = self.config.steps_per_epoch
        if steps > 0:
            # A fixed number of batches per epoch, drawn from consecutive reshuffled passes over the data.
            generator = torch.Generator().manual_seed(self.seed)
            sampler = RandomSampler(dataset, num_samples=steps * self.config.batch_size, generator=generator)
            return DataLoader(
                dataset,
                batch_size=self.config.batch_size,
                sampler=sampler,
                drop_last=True,
                num_workers=self.config.num_workers,
                persistent_workers=self.config.num_workers > 0,
                generator=generator,
            )
        # Keep the last small batch unless it would hold a single image (BatchNorm needs two).
        drop = last_batch_size(len(dataset), self.config.batch_size, self._world_size()) == 1
        return self._loader(dataset, True, self.config.batch_size, drop_last=drop)

    def _world_size(self) -> int:
        trainer = getattr(self, "trainer", None)
        return int(getattr(trainer, "world_size", 1) or 1) if trainer is not None else 1

    def features_dataloader(self) -> DataLoader:
        """Training images without augmentation, for prototypes (the published code used augmented ones)."""
        s = self.splits
        dataset = self._dataset("train", s.train.labels, s.train_full, augment=False)
        return self._loader(dataset, False, self.config.eval_batch_size)

    def val_dataloader(self) -> DataLoader:
        s = self.splits
        dataset = self._dataset("val", s.val.labels, s.val.labels, augment=False)
        return self._loader(dataset, False, self.config.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        s = self.splits
        dataset = self._dataset("test", s.test.labels, s.test.labels, augment=False)
        return self._loader(dataset, False, self.config.eval_batch_size)
