"""The tiny synthetic training config the engine tests share (a run takes seconds on 2 CPU cores).

Tests that need other values append overrides after it: the last value of a key wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

TINY = [
    "data.train=synthetic:72",
    "data.image_size=64",
    "data.batch_size=16",
    "data.val_fraction=0.2",
    "data.test_fraction=0.2",
    "model.feature_dim=64",
    "model.hidden_dim=32",
    "trainer.epochs=3",
    "trainer.progress_bar=false",
    "method.pseudo_label_epoch=1",
    "method.prototype_every=1",
    "method.prototypes_per_class=3",
    "method.intra_threshold=0.5",
    "method.inter_threshold=0.5",
]


def tiny_checkpoint(out: Path, overrides: Sequence[str] = (), which: str = "last") -> Path:
    """Train the tiny config (plus ``overrides``) into ``out`` and return its last checkpoint (``which="best"``:
    the best one). The last one is past the pseudo-label epochs, so it carries prototypes and calibrated
    thresholds; the tiny run's best epoch may come before them."""
    from hst.config import TrainConfig, resolve_config
    from hst.engine.train import train

    config = resolve_config(TrainConfig, None, [*TINY, f"trainer.output_dir={out}", "trainer.run_name=t", *overrides])
    result = train(config)
    assert result.best_checkpoint is not None
    return result.best_checkpoint if which == "best" else result.run_dir / "checkpoints" / "last.ckpt"


def write_image_manifests(folder: Path, count: int = 72, proportion: float = 0.3) -> tuple[Path, Path]:
    """Synthetic images as PNG files with a full-label manifest and a partial one beside them (same cells)."""
    from hst.data.base import MultiLabelData
    from hst.data.partial import make_partial
    from hst.data.readers import write_csv_manifest
    from hst.data.spec import load_dataset

    data = load_dataset(f"synthetic:{count}")
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"img_{i:03d}.png" for i in range(count)]
    for i, name in enumerate(names):
        data.load_image(i).save(folder / name)
    full = MultiLabelData(names, data.labels, data.class_names, image_paths=[folder / n for n in names])
    write_csv_manifest(full, folder / "labels.csv")
    write_csv_manifest(full.with_labels(make_partial(data.labels, "entry", proportion, 0)), folder / "partial.csv")
    return folder / "labels.csv", folder / "partial.csv"
