"""One training epoch with ``model.trainable=last_stage``: from the cached frozen front against from the images.

    python benchmarks/midlevel_epoch.py [--config configs/voc2007-benchmark.yaml] [--method partial_bce]
                                        [--image-steps 0] [key=value ...]

Both runs are the real ``hst train`` (one epoch, the config's image size and batch), side by side in one process:
first from the front cache (``data.feature_cache=auto``; the cache is filled first if missing and its one-time
extraction is reported apart), then from the images (``data.feature_cache=off``: every step runs the whole
backbone). A callback times the training part and the validation part of the epoch. ``--image-steps N`` trains
the image run on N batches only (``data.steps_per_epoch``) and projects its epoch from the measured rate (the
full epoch is the default).
Prints ``front_epoch_s``, ``images_epoch_s`` and ``speedup`` last.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import lightning as L

from hst.config import TrainConfig, resolve_config
from hst.engine.train import train
from hst.midlevel_cache import extract_fronts_for_config


class EpochTimer(L.Callback):
    """Seconds of the first epoch's training batches and of its validation pass, and the images trained on."""

    def __init__(self) -> None:
        self.train_seconds = self.val_seconds = 0.0
        self.images = 0
        self._start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, i: int):
        self.images += len(batch[0])
        self.train_seconds = time.perf_counter() - self._start

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_start = time.perf_counter()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.val_seconds = time.perf_counter() - self._val_start


def _run(config: TrainConfig) -> EpochTimer:
    timer = EpochTimer()
    train(config, callbacks=[timer])
    return timer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/voc2007-benchmark.yaml")
    parser.add_argument("--method", default="partial_bce")
    parser.add_argument("--image-steps", type=int, default=0, help="image run: batches to time (0: the whole epoch)")
    parser.add_argument("--out", default="bench/midlevel-epoch")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    common = [
        "model.trainable=last_stage",
        "data.augment=flip",
        "trainer.epochs=1",
        "trainer.early_stopping_patience=0",
        "trainer.progress_bar=false",
        f"method.name={args.method}",
        f"trainer.output_dir={args.out}",
        *args.overrides,
    ]
    front_config = resolve_config(
        TrainConfig, args.config, [*common, "data.feature_cache=auto", "trainer.run_name=front"]
    )
    start = time.perf_counter()
    fronts = extract_fronts_for_config(front_config, progress=False) or []
    print(
        f"front cache: {', '.join(f.key for f in fronts)} ready in {time.perf_counter() - start:.1f} s "
        f"(extracted once in {sum(float(f.meta['seconds']) for f in fronts):.1f} s)"
    )
    front = _run(front_config)
    steps = [f"data.steps_per_epoch={args.image_steps}"] if args.image_steps else []
    image_config = resolve_config(
        TrainConfig, args.config, [*common, "data.feature_cache='off'", "trainer.run_name=images", *steps]
    )
    images = _run(image_config)
    epoch_images = front.images
    front_epoch = front.train_seconds + front.val_seconds
    image_train = images.train_seconds * epoch_images / max(images.images, 1)
    image_epoch = image_train + images.val_seconds
    print(f"{'path':<8} {'trained img':>11} {'train s':>8} {'img/s':>7} {'val s':>7} {'epoch s':>8}")
    for name, timer, train_s, epoch_s in (
        ("front", front, front.train_seconds, front_epoch),
        ("images", images, image_train, image_epoch),
    ):
        rate = timer.images / max(timer.train_seconds, 1e-9)
        print(f"{name:<8} {timer.images:>11} {train_s:>8.1f} {rate:>7.1f} {timer.val_seconds:>7.1f} {epoch_s:>8.1f}")
    if images.images < epoch_images:
        print(f"(images: {images.images} of {epoch_images} training images timed, the epoch's training projected)")
    print(f"front_epoch_s {front_epoch:.1f}")
    print(f"images_epoch_s {image_epoch:.1f}")
    print(f"speedup {image_epoch / front_epoch:.2f}")


if __name__ == "__main__":
    main()
