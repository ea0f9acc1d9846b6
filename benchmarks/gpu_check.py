"""GPU check: train HST and partial-BCE end to end on the VOC photos, then ``benchmarks/speed.py`` on CUDA.

    python benchmarks/gpu_check.py               # one NVIDIA GPU; about 8 minutes at most on one H100
    python benchmarks/gpu_check.py --dry-run     # a handful of photos, 1 epoch, on the CPU (what the tests run)

Each run is ``hst train`` in this process with ``configs/voc2007-benchmark.yaml`` and the backbone on the images
(``data.feature_cache=off``): 10% known labels (``data.proportion=0.1``), seed 0, ``model.trainable=last_stage``
for ``hst`` and ``partial_bce``, then ``benchmarks/speed.py --device cuda``, then ``model.trainable=all`` for both
methods if the time measured so far says they fit in ``--budget-s``. Nothing is installed or downloaded: the
project, its virtual environment and the offline backbone weights come with the checkout; the photos are read
from ``--data-dir`` (default ``$HST_DATA_DIR``, else ``../shared/data`` beside the project).

Every result line starts with ``gpu_check``; a run prints its test mAP and its training throughput (images per
second over the training batches of every epoch, validation and testing left out).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "voc2007-benchmark.yaml"
METHODS = ("hst", "partial_bce")
DRY_RUN_PHOTOS = 48
PREFIX = "gpu_check"


def default_data_dir() -> Path:
    """``$HST_DATA_DIR``, else ``../shared/data`` beside the project (where the tests look too)."""
    given = os.environ.get("HST_DATA_DIR")
    return Path(given).expanduser() if given else ROOT.parent / "shared" / "data"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="a handful of photos, 1 epoch, CPU, tiny sizes")
    parser.add_argument("--data-dir", type=Path, default=None, help="folder holding voc2007-train/ (see above)")
    parser.add_argument("--out", type=Path, default=None, help="run folders; default a temporary folder")
    parser.add_argument("--budget-s", type=float, default=480.0, help="the trainable=all runs start only if they fit")
    parser.add_argument("--workers", type=int, default=None, help="data loader workers; default CPU cores − 2, ≤ 12")
    parser.add_argument("--speed-timeout-s", type=float, default=200.0, help="limit for benchmarks/speed.py")
    parser.add_argument("--skip-speed", action="store_true", help="leave benchmarks/speed.py out")
    parser.add_argument("--skip-all", action="store_true", help="leave the model.trainable=all runs out")
    parser.add_argument("overrides", nargs="*", help="more hst train key=value overrides for every run")
    return parser.parse_args(argv)


class TrainThroughput(L.Callback):
    """Images per second over the training batches: from each epoch's first batch start to its last batch end."""

    def __init__(self) -> None:
        self.images = 0
        self.seconds = 0.0
        self._epoch_start: float | None = None
        self._last_end: float | None = None

    @staticmethod
    def _now(pl_module: L.LightningModule) -> float:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = self._last_end = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        if self._epoch_start is None:
            self._epoch_start = self._now(pl_module)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        self.images += len(batch[1])
        self._last_end = self._now(pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._epoch_start is not None and self._last_end is not None:
            self.seconds += self._last_end - self._epoch_start
        self._epoch_start = self._last_end = None

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else math.nan


@dataclass
class RunLine:
    method: str
    trainable: str
    test_map: float
    throughput: TrainThroughput
    seconds: float

    def text(self) -> str:
        t = self.throughput
        return (
            f"{PREFIX} run {self.method} trainable={self.trainable}: test mAP {self.test_map:.2f}, "
            f"train {t.images_per_second:.1f} img/s ({t.images} images in {t.seconds:.1f} s), run {self.seconds:.1f} s"
        )


def dry_run_manifest(data_dir: Path, folder: Path) -> Path:
    """The first photos of the VOC manifest, their paths made absolute, as a CSV in ``folder``."""
    from hst.data.readers import write_manifest_head

    target = folder / "labels.csv"
    write_manifest_head(data_dir / "voc2007-train" / "labels.csv", DRY_RUN_PHOTOS, target)
    return target


def run_overrides(
    method: str, trainable: str, manifest: Path, out: Path, device: str, workers: int, dry_run: bool
) -> list[str]:
    """``hst train`` overrides of one run on top of ``configs/voc2007-benchmark.yaml``."""
    overrides = [
        f"data.train=csv:{manifest}",
        "data.proportion=0.1",
        "data.feature_cache=off",
        f"data.num_workers={workers}",
        f"data.cache_dir={out / 'cache'}",
        f"model.trainable={trainable}",
        f"method.name={method}",
        "trainer.seed=0",
        f"trainer.accelerator={'gpu' if device == 'cuda' else 'cpu'}",
        "trainer.devices=1",
        f"trainer.output_dir={out}",
        f"trainer.run_name={method}-{trainable}",
        "trainer.progress_bar=false",
        "trainer.save_last=false",
    ]
    if dry_run:
        # tiny sizes: the dry run checks the path end to end, not the numbers
        overrides += [
            "data.image_size=64",
            "data.batch_size=8",
            "data.eval_batch_size=16",
            "model.feature_dim=16",
            "model.hidden_dim=8",
            "trainer.epochs=1",
            "method.pseudo_label_epoch=0",
            # a few photos at 10% known leave validation without a known positive: score it on its full labels
            "data.val_labels=full",
        ]
    return overrides


def train_once(method: str, trainable: str, overrides: list[str]) -> RunLine | None:
    """One ``hst train`` run; prints its result line, or a FAILED line (and None) if it raised."""
    from hst.config import TrainConfig, resolve_config
    from hst.engine.train import train

    meter = TrainThroughput()
    started = time.perf_counter()
    try:
        config = resolve_config(TrainConfig, str(CONFIG), overrides)
        result = train(config, callbacks=[meter])
    except Exception as error:  # an unattended check reports every run and goes on
        traceback.print_exc()
        print(f"{PREFIX} run {method} trainable={trainable}: FAILED ({type(error).__name__}: {error})", flush=True)
        return None
    line = RunLine(
        method, trainable, float(result.test_metrics.get("mAP", math.nan)), meter, time.perf_counter() - started
    )
    print(line.text(), flush=True)
    return line


def run_speed(device: str, dry_run: bool, timeout: float) -> None:
    """``benchmarks/speed.py`` in a child process, its output passed through, then its summary lines again."""
    command = [sys.executable, "benchmarks/speed.py", "--device", device]
    if dry_run:
        # tiny sizes, and the eager IST kernel: compiling the fused one would take most of the dry run
        command += ["--quick", "--no-isolate", "--no-profile", "--ist-kernel", "eager"]
    print(f"{PREFIX} speed: {' '.join(command[1:])}", flush=True)
    # tiny tensors: one thread, since spinning OpenMP threads cost more than they bring
    env = os.environ | ({"OMP_NUM_THREADS": "1"} if dry_run else {})
    started = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as stopped:
        tail = stopped.stdout if isinstance(stopped.stdout, str) else (stopped.stdout or b"").decode(errors="replace")
        print(tail, flush=True)
        print(f"{PREFIX} speed: stopped after {timeout:.0f} s (--speed-timeout-s)", flush=True)
        return
    print(done.stdout, end="", flush=True)
    if done.returncode != 0:
        print(done.stderr[-4000:], flush=True)
        print(f"{PREFIX} speed: FAILED with exit status {done.returncode}", flush=True)
        return
    lines = done.stdout.strip().splitlines()[-3:]
    for line in lines:
        print(f"{PREFIX} speed {line}", flush=True)
    print(f"{PREFIX} speed: {time.perf_counter() - started:.1f} s", flush=True)


def header(device: str, data_dir: Path) -> str:
    name = torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or "cpu"
    return (
        f"{PREFIX} {time.strftime('%Y-%m-%d %H:%M:%S %Z')} device {device} ({name}), torch {torch.__version__}, "
        f"{os.cpu_count()} CPU cores, python {platform.python_version()}, data {data_dir}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print(f"{PREFIX}: no CUDA device is visible (use --dry-run for the CPU check)", file=sys.stderr)
        return 2
    data_dir = (args.data_dir or default_data_dir()).resolve()
    if not (data_dir / "voc2007-train" / "labels.csv").is_file():
        print(f"{PREFIX}: {data_dir}/voc2007-train/labels.csv not found (--data-dir or HST_DATA_DIR)", file=sys.stderr)
        return 2
    workers = 0 if args.dry_run else (args.workers if args.workers is not None else min(12, (os.cpu_count() or 2) - 2))
    if args.dry_run:
        torch.set_num_threads(1)  # tiny tensors: spinning OpenMP threads cost more than they bring
    print(header(device, data_dir), flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        out = (args.out or Path(scratch)).resolve()
        out.mkdir(parents=True, exist_ok=True)
        manifest = (
            dry_run_manifest(data_dir, Path(scratch)) if args.dry_run else data_dir / "voc2007-train" / "labels.csv"
        )
        lines: list[RunLine | None] = []

        def run(method: str, trainable: str) -> None:
            overrides = run_overrides(method, trainable, manifest, out, device, workers, args.dry_run)
            lines.append(train_once(method, trainable, overrides + args.overrides))

        for method in METHODS:
            run(method, "last_stage")
        if not args.skip_speed:
            run_speed(device, args.dry_run, args.speed_timeout_s)
        if not args.skip_all:
            # training the whole backbone costs more per step than its last stage: 1.5× the last-stage runs
            needed = 1.5 * sum(r.seconds for r in lines if r is not None)
            left = args.budget_s - (time.perf_counter() - started)
            if needed > left and not args.dry_run:
                print(f"{PREFIX} trainable=all skipped: about {needed:.0f} s needed, {left:.0f} s left", flush=True)
            else:
                for method in METHODS:
                    run(method, "all")
    print(f"{PREFIX} done in {time.perf_counter() - started:.0f} s (budget {args.budget_s:.0f} s)", flush=True)
    return 1 if None in lines else 0


if __name__ == "__main__":
    sys.exit(main())
