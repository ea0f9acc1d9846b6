"""Summary statistics of a labelled dataset (``hst data stats``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hst.data.base import MultiLabelData
from hst.labels import NEGATIVE, POSITIVE, UNKNOWN, cooccurrence_counts, known_fraction


@dataclass(frozen=True)
class DatasetStats:
    images: int
    classes: int
    positives_per_image_mean: float
    positives_per_image_max: int
    images_without_positive: int
    known_fraction: float
    negatives: int
    unknowns: int
    class_counts: dict[str, int]
    top_pairs: list[tuple[str, str, int]]

    def lines(self) -> list[str]:
        out = [
            f"images: {self.images}",
            f"classes: {self.classes}",
            f"positives per image: mean {self.positives_per_image_mean:.3f}, max {self.positives_per_image_max}",
            f"images with no positive: {self.images_without_positive}",
            f"known fraction: {self.known_fraction:.4f} (negatives {self.negatives}, unknown {self.unknowns})",
            "most frequent classes: "
            + ", ".join(f"{n} {c}" for n, c in sorted(self.class_counts.items(), key=lambda kv: -kv[1])[:10]),
            "most frequent co-occurring pairs:",
        ]
        out += [f"  {a} + {b}: {count}" for a, b, count in self.top_pairs]
        return out


def dataset_stats(data: MultiLabelData, top: int = 10) -> DatasetStats:
    labels = data.labels
    positives = (labels == POSITIVE).sum(axis=1)
    counts = cooccurrence_counts(labels)
    upper_i, upper_j = np.triu_indices(data.num_classes, k=1)
    pair_counts = counts[upper_i, upper_j]
    order = np.argsort(-pair_counts, kind="stable")[:top]
    return DatasetStats(
        images=len(data),
        classes=data.num_classes,
        positives_per_image_mean=float(positives.mean()) if len(data) else 0.0,
        positives_per_image_max=int(positives.max()) if len(data) else 0,
        images_without_positive=int((positives == 0).sum()),
        known_fraction=known_fraction(labels),
        negatives=int((labels == NEGATIVE).sum()),
        unknowns=int((labels == UNKNOWN).sum()),
        class_counts={name: int(counts[k, k]) for k, name in enumerate(data.class_names)},
        top_pairs=[
            (data.class_names[upper_i[k]], data.class_names[upper_j[k]], int(pair_counts[k]))
            for k in order
            if pair_counts[k] > 0
        ],
    )
