"""Splits, partial labels, transforms and the Lightning data module."""

from __future__ import annotations

import functools
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, RandomSampler
from torchvision.transforms import v2

from hst.config import DataConfig
from hst.data.base import DEFAULT_MAX_IMAGE_PIXELS, DataError, MultiLabelData, image_problem
from hst.data.partial import make_partial, partial_stats
from hst.data.spec import load_dataset
from hst.engine.cache import CachedFeatureDataset, FeatureCache
from hst.labels import UNKNOWN

UNREADABLE_POLICIES = ("error", "skip")
SKIP_HINT = "set data.unreadable_images=skip to leave unreadable images out"
_LISTED_SKIPS = 20
log = logging.getLogger(__name__)


def build_transform(image_size: int, augment: str, mean: tuple[float, ...], std: tuple[float, ...]) -> v2.Compose:
    """Test: resize to a square. Train 'paper': resize to 8/7 of the size, random square crop of
    {1, 7/8, 6/8, 5/8, 4/8} of that, resize back, flip (hst-reference §2.4, 448 ← 512)."""
    resize = v2.Resize((image_size, image_size), interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
    tail = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    if augment == "none":
        return v2.Compose([resize, *tail])
    if augment == "flip":
        return v2.Compose([resize, v2.RandomHorizontalFlip(), *tail])
    if augment == "paper":
        scale = round(image_size * 8 / 7)
        crops = [round(scale * f) for f in (1.0, 7 / 8, 6 / 8, 5 / 8, 4 / 8)]
        return v2.Compose(
            [
                v2.Resize((scale, scale), interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
                v2.RandomChoice([v2.RandomCrop(c) for c in crops]),
                resize,
                v2.RandomHorizontalFlip(),
                *tail,
            ]
        )
    raise ValueError(f"data.augment must be 'paper', 'flip' or 'none', got {augment!r}")


def last_batch_size(num_images: int, batch_size: int, world_size: int = 1) -> int:
    """Images in each process's last training batch: under DDP every rank gets ceil(N / world_size) images (the
    distributed sampler pads the shares to equal length), so the remainder is that share's, not the whole set's."""
    share = math.ceil(num_images / max(1, world_size))
    return share % batch_size or min(share, batch_size)


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


@dataclass
class Splits:
    """Everything a run trains and evaluates on; label matrices are int8 +1/-1/0."""

    train: MultiLabelData  # labels = partial training labels
    val: MultiLabelData  # labels = what validation is scored against
    test: MultiLabelData  # labels = full test labels
    train_full: np.ndarray  # full labels of the training images (for statistics only)
    notes: list[str]
    source: MultiLabelData | None = None  # the training source the train/val (and carved test) rows index
    train_rows: np.ndarray | None = None
    val_rows: np.ndarray | None = None
    test_source: MultiLabelData | None = None  # the data the test rows index (source or a separate test set)
    test_rows: np.ndarray | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(image file, reason) of every image left out under data.unreadable_images=skip."""


def _split_indices(n: int, fractions: tuple[float, ...], seed: int) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    out: list[np.ndarray] = []
    start = 0
    for fraction in fractions:
        count = round(fraction * n)
        out.append(np.sort(order[start : start + count]))
        start += count
    out.append(np.sort(order[start:]))
    return out


def find_unreadable(
    paths: list[Path], workers: int | None = None, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS
) -> list[tuple[int, str]]:
    """(index, reason) of every path that is missing, too large or does not decode (JPEGs decoded at 1/8 scale)."""
    workers = workers or min(8, os.cpu_count() or 1)
    check = functools.partial(image_problem, max_pixels=max_pixels)
    if workers <= 1 or len(paths) < 64:
        problems = [check(path) for path in paths]
    else:
        # Decoders release the GIL, so threads share the work without pickling anything.
        with ThreadPoolExecutor(max_workers=workers) as pool:
            problems = list(pool.map(check, paths, chunksize=32))
    return [(index, problem) for index, problem in enumerate(problems) if problem is not None]


def _check_readable(
    data: MultiLabelData, policy: str, notes: list[str], skipped: list[tuple[str, str]]
) -> MultiLabelData:
    """'error': every image file must exist (decoding errors name the file when it is read).
    'skip': drop missing and undecodable images, recording them in ``skipped`` and ``notes``."""
    if policy not in UNREADABLE_POLICIES:
        raise ValueError(f"data.unreadable_images must be 'error' or 'skip', got {policy!r}")
    if data.image_paths is None:
        return data
    paths = data.image_paths
    if policy == "error":
        for index, path in enumerate(paths):
            if not path.is_file():
                raise DataError(
                    f"{data.source}: image file not found: {path} (image id {data.image_ids[index]!r}); {SKIP_HINT}"
                )
        return data
    bad = find_unreadable(paths, max_pixels=data.max_pixels)
    if not bad:
        return data
    found = [(str(paths[index]), reason) for index, reason in bad]
    skipped.extend(found)
    notes.append(f"skipped {len(bad)} of {len(data)} images of {data.source} (unreadable):")
    notes.extend(f"  {path}: {reason}" for path, reason in found[:_LISTED_SKIPS])
    if len(found) > _LISTED_SKIPS:
        notes.append(f"  ... and {len(found) - _LISTED_SKIPS} more")
    log.warning("skipped %d unreadable images of %s, e.g. %s: %s", len(bad), data.source, *found[0])
    if len(bad) == len(data):
        raise DataError(f"{data.source}: all {len(data)} images are unreadable (first: {found[0][0]}: {found[0][1]})")
    keep = np.setdiff1d(np.arange(len(data)), [index for index, _ in bad])
    return data.subset(keep)


def _partial_labels(path: Path, source: MultiLabelData, train_spec: str, notes: list[str]) -> np.ndarray:
    """Rows of a partial-label CSV manifest, reordered to the training source's images."""
    from hst.data.readers import read_csv_manifest

    given = read_csv_manifest(path)
    if given.class_names != source.class_names:
        missing = [name for name in source.class_names if name not in given.class_names]
        extra = [name for name in given.class_names if name not in source.class_names]
        if missing or extra:
            detail = f"missing {missing[:5]}, unknown {extra[:5]}"
        else:
            detail = "same names in another order"
        raise DataError(
            f"{path}, line 1: {len(given.class_names)} class columns do not match the "
            f"{len(source.class_names)} classes of {train_spec} ({detail})"
        )
    row_of = {image_id: row for row, image_id in enumerate(given.image_ids)}
    if source.image_paths is not None and given.image_paths is not None:
        # a manifest written elsewhere (hst make-partial, hst review) names the same files by other paths
        by_file = {Path(p).resolve(): row for row, p in enumerate(given.image_paths)}
        for image_id, image in zip(source.image_ids, source.image_paths, strict=True):
            if image_id not in row_of and Path(image).resolve() in by_file:
                row_of[image_id] = by_file[Path(image).resolve()]
    missing_rows = [i for i in source.image_ids if i not in row_of]
    if missing_rows:
        raise DataError(
            f"{path}: no row for {len(missing_rows)} images of {train_spec}, e.g. {missing_rows[:3]} "
            "(the image column must hold the training source's image ids or name its image files)"
        )
    unused = len(given) - len(source)
    if unused:
        notes.append(f"{unused} rows of {path} are not images of the training source; ignored")
    return given.labels[[row_of[i] for i in source.image_ids]]


def prepare_splits(config: DataConfig) -> Splits:
    """Read the data, hide labels by the partial-label protocol, and carve validation/test splits.

    The protocol masks the whole training source in its reader order (so masks equal published
    partial-label files), then the validation split is carved from it, seeded.
    """
    notes: list[str] = []
    skipped: list[tuple[str, str]] = []
    limit = config.max_image_pixels
    train_source = load_dataset(config.train).with_max_pixels(limit)
    source = _check_readable(train_source, config.unreadable_images, notes, skipped)
    full = source.labels
    if config.partial_labels:
        partial = _partial_labels(Path(config.partial_labels), source, config.train, notes)
    elif config.proportion >= 1.0 and config.scheme != "single-positive":
        partial = full.copy()
    else:
        partial = make_partial(full, config.scheme, config.proportion, config.partial_seed)

    if config.test is None:
        val_idx, test_idx, train_idx = _split_indices(
            len(source), (config.val_fraction, config.test_fraction), config.split_seed
        )
        test = source.subset(test_idx)  # full labels
        test_source, test_rows = source, test_idx
    else:
        val_idx, train_idx = _split_indices(len(source), (config.val_fraction,), config.split_seed)
        test = _check_readable(
            load_dataset(config.test).with_max_pixels(limit), config.unreadable_images, notes, skipped
        )
        test_source, test_rows = test, np.arange(len(test))
        if test.class_names != source.class_names:
            raise DataError(f"{config.test}: classes differ from the training source {config.train}")
    if len(train_idx) == 0 or len(val_idx) == 0 or len(test) == 0:
        raise DataError(
            f"{config.train}: too few images ({len(source)}) for train/validation/test splits "
            f"(val_fraction {config.val_fraction}, test_fraction {config.test_fraction})"
        )
    if config.val_labels not in {"partial", "full"}:
        raise ValueError(f"data.val_labels must be 'partial' or 'full', got {config.val_labels!r}")
    train = source.subset(train_idx).with_labels(partial[train_idx])
    val_labels = partial[val_idx] if config.val_labels == "partial" else full[val_idx]
    val = source.subset(val_idx).with_labels(val_labels)
    return Splits(
        train=train,
        val=val,
        test=test,
        train_full=full[train_idx],
        notes=notes,
        source=source,
        train_rows=train_idx,
        val_rows=val_idx,
        test_source=test_source,
        test_rows=test_rows,
        skipped=skipped,
    )


def describe_splits(splits: Splits) -> list[str]:
    stats = partial_stats(splits.train.labels, splits.train.class_names, full=splits.train_full)
    lines = [
        f"train {len(splits.train)} / val {len(splits.val)} / test {len(splits.test)} images, "
        f"{splits.train.num_classes} classes",
        *[f"train labels: {line}" for line in stats.lines()[1:]],
        f"val labels known fraction: {float((splits.val.labels != UNKNOWN).mean()):.4f}",
    ]
    return lines + splits.notes


class PartialLabelDataModule(L.LightningDataModule):
    """Loaders of images, or of cached backbone features when ``caches`` (source, test) are given."""

    def __init__(
        self,
        splits: Splits,
        config: DataConfig,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        seed: int = 0,
        caches: tuple[FeatureCache, FeatureCache] | None = None,
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
