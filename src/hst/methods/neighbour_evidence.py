"""Image-level CST evidence: nearest known-labelled training images, alone and joined with a classifier's logits.

The published CST compares category features with K-means prototypes. Here every entry (i, c) is also scored by
how much closer image i lies to its nearest training images with a known positive of c than to its nearest ones
with a known negative (:func:`hst.models.cst.neighbour_margin`, on standardised pooled backbone features).
:class:`NeighbourIndex` serves HST's cross-fitted rule (:mod:`hst.methods.cross_fitted_evidence`);
:func:`neighbour_evidence` (a trained classifier's logits joined with the margins) serves the benchmark scripts
that read trained runs.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from hst.models.cst import neighbour_margin, standardize_rows

QUERY_CHUNK = 1024
"""Query images scored at once (a chunk × bank cosine matrix in memory)."""


@dataclass
class NeighbourEvidence:
    margin: np.ndarray
    """N×C neighbour margin of the training entries, leave-one-out (NaN: no known positive or negative)."""
    joint: np.ndarray
    """N×C standardised classifier logit + standardised margin of the training entries."""
    joint_val: np.ndarray
    """The same for the validation images (scored against the training images)."""


def _bank_rows(num: int, limit: int) -> np.ndarray:
    """All training images, or an evenly spread ``limit`` of them (deterministic, so every process agrees)."""
    if limit <= 0 or num <= limit:
        return np.arange(num)
    return np.unique(np.linspace(0, num - 1, limit).round().astype(int))


class NeighbourIndex:
    """The training images as neighbours: pooled features standardised with their own statistics, unit rows,
    with their known labels (at most ``bank_limit`` images, evenly spread; 0 = all)."""

    def __init__(self, train_pooled: np.ndarray | torch.Tensor, train_labels: np.ndarray, bank_limit: int = 0) -> None:
        train = torch.as_tensor(np.asarray(train_pooled, dtype=np.float32))
        self.mean, self.std = train.mean(0), train.std(0)
        self.train = standardize_rows(train, self.mean, self.std)
        self.bank_rows = torch.from_numpy(_bank_rows(len(train), bank_limit))
        self.bank = self.train[self.bank_rows]
        self.bank_labels = torch.from_numpy(np.asarray(train_labels))[self.bank_rows]

    def margins(self, pooled: np.ndarray | torch.Tensor | None, k: int) -> np.ndarray:
        """Margins (:func:`neighbour_margin`) of other images (``pooled`` ``B×F``), or, with ``None``, of the
        training images themselves, each never its own neighbour. Scored ``QUERY_CHUNK`` images at a time."""
        num_classes = self.bank_labels.shape[1]
        if pooled is None:
            query, query_rows = self.train, torch.arange(len(self.train))
        elif len(pooled) == 0:
            return np.zeros((0, num_classes), dtype=np.float32)
        else:
            query = standardize_rows(torch.as_tensor(np.asarray(pooled, dtype=np.float32)), self.mean, self.std)
            query_rows = None
        chunks = []
        for start in range(0, len(query), QUERY_CHUNK):
            stop = start + QUERY_CHUNK
            rows = None if query_rows is None else query_rows[start:stop]
            chunks.append(
                neighbour_margin(query[start:stop], rows, self.bank, self.bank_rows, self.bank_labels, k).cpu()
            )
        return torch.cat(chunks).numpy() if chunks else np.zeros((0, num_classes), dtype=np.float32)


def standardised(values: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``(values − mean) / std`` per column (a zero std counts as 1), NaN as 0 (no evidence either way)."""
    return np.nan_to_num((values - mean) / np.where(std > 0, std, 1.0), nan=0.0)


def neighbour_evidence(
    train_pooled: np.ndarray,
    train_labels: np.ndarray,
    train_logits: np.ndarray,
    val_pooled: np.ndarray,
    val_logits: np.ndarray,
    k: int,
    bank_limit: int,
) -> NeighbourEvidence:
    """Margins and joint scores of the training (rows 0..N−1, in order) and validation images.

    Pooled features are standardised with the training images' statistics; the per-class standardisation of
    logits and margins is also taken over the training images, so validation scores sit on the same scale.
    """
    index = NeighbourIndex(train_pooled, train_labels, bank_limit)
    margin = index.margins(None, k)
    # Without a validation split the joint evidence cannot be calibrated; the margins still can.
    margin_val = index.margins(val_pooled, k)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a class without any margin has an all-NaN column
        m_mean, m_std = np.nanmean(margin, 0), np.nanstd(margin, 0)
    l_mean, l_std = train_logits.mean(0), train_logits.std(0)
    joint = standardised(train_logits, l_mean, l_std) + standardised(margin, m_mean, m_std)
    joint_val = standardised(val_logits, l_mean, l_std) + standardised(margin_val, m_mean, m_std)
    return NeighbourEvidence(margin, joint, joint_val)
