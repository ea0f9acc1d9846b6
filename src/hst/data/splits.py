"""The splits of a run: training images with their partial labels, validation and test, readable images only."""

from __future__ import annotations

import functools
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hst.config import DataConfig
from hst.data.base import DEFAULT_MAX_IMAGE_PIXELS, DataError, MultiLabelData, image_problem
from hst.data.partial import make_partial, partial_stats
from hst.data.spec import load_dataset
from hst.labels import known_fraction

UNREADABLE_POLICIES = ("error", "skip")
SKIP_HINT = "set data.unreadable_images=skip to leave unreadable images out"
_LISTED_SKIPS = 20
log = logging.getLogger(__name__)


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
    train_calibration: np.ndarray | None = None
    """Known training entries chosen at random (data.calibration_labels); None: all known entries are."""


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
    calibration = None
    if config.calibration_labels:
        path = Path(config.calibration_labels)
        calibration = _partial_labels(path, source, config.train, notes)
        disagree = (calibration != 0) & (calibration != partial)
        if disagree.any():
            row, col = np.argwhere(disagree)[0]
            raise DataError(
                f"{path}: {int(disagree.sum())} known labels differ from the training labels, e.g. image "
                f"{source.image_ids[row]!r}, class {source.class_names[col]!r}"
            )
        calibration = calibration[train_idx]
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
        train_calibration=calibration,
    )


def describe_splits(splits: Splits) -> list[str]:
    stats = partial_stats(splits.train.labels, splits.train.class_names, full=splits.train_full)
    lines = [
        f"train {len(splits.train)} / val {len(splits.val)} / test {len(splits.test)} images, "
        f"{splits.train.num_classes} classes",
        *[f"train labels: {line}" for line in stats.lines()[1:]],
        f"val labels known fraction: {known_fraction(splits.val.labels):.4f}",
    ]
    return lines + splits.notes
