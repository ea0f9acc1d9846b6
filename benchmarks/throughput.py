"""Throughput of the frozen backbone: whole commands against the forward pass alone, in one run.

    python benchmarks/throughput.py [--images 512] [--forward-images 128] [--torch-images 48]

On the first ``--images`` photos of the VOC 2007 ``train`` list (``$HST_DATA_DIR`` or ``../shared/data``), with
``configs/voc2007-benchmark.yaml`` (EfficientNet-Lite0, offline ImageNet weights, 448 px), it measures in img/s:

* ``hst extract-features``, the whole command in a subprocess with a fresh cache folder (start-up, hashing, the
  ONNX export and its check, decoding, the forward pass, writing the cache): ``cold``, the first extraction with
  these weights;
* the same command on the same photos into another fresh cache folder that holds only the graph the first one
  exported (``<cache_dir>/onnx``): ``warm``, every later extraction with these weights, which runs without
  importing torch (:mod:`hst.models.graph_features`);
* ONNX Runtime's forward pass alone on pixels decoded beforehand (the graph the command exported, 16 images a
  batch), measured before and after the commands (their mean is the reference of the ratios);
* torch's forward pass alone, contiguous (the path before ONNX Runtime) and ``channels_last`` with glibc's
  default heap and with the heap kept (today's fallback, :func:`hst.models.frozen_runtime.reused_heap`);
* ``hst predict`` on a folder of the same photos (the whole command; its checkpoint is a head trained for one
  epoch on the cached features, so the backbone is the frozen one whose graph the cache folder holds);

and prints their ratios with the targets (extract-features ≥ 0.8× and predict ≥ 0.7× ONNX Runtime's forward).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from hst.data.readers import write_manifest_head

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "voc2007-benchmark.yaml"
EXTRACT_TARGET = 0.8
PREDICT_TARGET = 0.7


def data_root() -> Path:
    given = os.environ.get("HST_DATA_DIR")
    return Path(given).expanduser() if given else ROOT / ".." / "shared" / "data"


def write_subset(count: int, folder: Path) -> tuple[Path, Path]:
    """A CSV manifest of the first ``count`` VOC photos (absolute paths) and a folder linking to them."""
    source = data_root() / "voc2007-train" / "labels.csv"
    if not source.is_file():
        raise SystemExit(f"{source} not found: set HST_DATA_DIR to the folder holding voc2007-train/")
    manifest = folder / "labels.csv"
    photos = folder / "photos"
    photos.mkdir()
    for image in write_manifest_head(source, count, manifest):
        (photos / image.name).symlink_to(image)
    return manifest, photos


def hst(args: Sequence[str], label: str) -> tuple[float, float, float]:
    """Run ``hst ARGS`` in a subprocess; (wall, user, system) seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "hst.cli", *args], capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{label} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    for line in done.stderr.splitlines():
        if line.startswith("note:"):
            print(f"  {label}: {line}")
    return wall, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime


def forward_rate(run: object, batches: list[torch.Tensor]) -> float:
    """Images per second of ``run`` over ``batches`` after one warm-up batch."""
    run(batches[0])  # type: ignore[operator]
    start = time.perf_counter()
    for pixels in batches:
        run(pixels)  # type: ignore[operator]
    return sum(len(b) for b in batches) / (time.perf_counter() - start)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=512, help="photos for the whole commands (512)")
    parser.add_argument("--forward-images", type=int, default=128, help="photos for ONNX Runtime's forward (128)")
    parser.add_argument("--torch-images", type=int, default=48, help="photos for each torch forward (48)")
    args = parser.parse_args(argv)

    from hst.config import TrainConfig, resolve_config
    from hst.data.batches import PixelBatches
    from hst.data.spec import load_dataset
    from hst.models.backbone import create_backbone
    from hst.models.frozen_runtime import FORWARD_BATCH, TorchRunner, frozen_runner, reused_heap

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    import onnxruntime

    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    versions = f"torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime {onnxruntime.__version__}"
    print(f"# {stamp}, {machine}, {versions}, python {platform.python_version()}")
    with tempfile.TemporaryDirectory(prefix="hst-throughput-") as scratch:
        folder = Path(scratch)
        manifest, photos = write_subset(args.images, folder)
        cache_dir = folder / "cache"
        overrides = [f"data.train=csv:{manifest}", f"data.cache_dir={cache_dir}"]
        config = resolve_config(TrainConfig, str(CONFIG), overrides)
        size = config.data.image_size
        backbone = create_backbone(config.model.backbone, config.model.weights, "none").eval()
        data = load_dataset(f"csv:{manifest}")
        count = max(args.forward_images, args.torch_images)
        batches = [b.pixels for b in PixelBatches(data.subset(np.arange(count)), size, FORWARD_BATCH)]

        def ort_forward() -> float:
            # the graph is exported into a scratch folder here, so that the command below starts from nothing
            runner = frozen_runner(backbone, size, folder / "forward-only", runtime="onnxruntime")
            return forward_rate(runner, batches[: args.forward_images // FORWARD_BATCH])

        start = time.perf_counter()
        frozen_runner(backbone, size, folder / "forward-only", runtime="onnxruntime")
        print(f"onnx export + parity check        {time.perf_counter() - start:5.1f} s")
        ort_before = ort_forward()
        print(f"onnxruntime forward only        {ort_before:7.1f} img/s  ({args.forward_images} images, before)")

        wall, user, system = hst(["extract-features", "--config", str(CONFIG), *overrides], "extract-features")
        extract = args.images / wall
        print(
            f"hst extract-features, cold     {extract:7.1f} img/s  ({args.images} images, fresh cache: "
            f"{wall:.1f} s wall, {user:.1f} s user, {system:.1f} s system)"
        )
        sidecar = next(path for path in cache_dir.glob("*.json") if path.name != "image-digests.json")
        loop = float(json.loads(sidecar.read_text())["seconds"])
        print(f"  of which export + decode + forward + write {loop:.1f} s ({args.images / loop:.1f} img/s)")

        warm_dir = folder / "cache-warm"
        warm_dir.mkdir()
        shutil.copytree(cache_dir / "onnx", warm_dir / "onnx")
        warm_overrides = [f"data.train=csv:{manifest}", f"data.cache_dir={warm_dir}"]
        wall, user, system = hst(["extract-features", "--config", str(CONFIG), *warm_overrides], "extract-features")
        warm = args.images / wall
        print(
            f"hst extract-features, warm     {warm:7.1f} img/s  ({args.images} images, fresh cache but the graph: "
            f"{wall:.1f} s wall, {user:.1f} s user, {system:.1f} s system)"
        )
        same = (cache_dir / sidecar.with_suffix(".npy").name).read_bytes() == (
            warm_dir / sidecar.with_suffix(".npy").name
        ).read_bytes()
        print(f"  warm cache file identical to the cold one: {same}")

        run_dir = folder / "runs"
        # partial BCE trains the SARL head of the config in seconds (HST's first epoch compiles its IST kernel)
        train_args = [
            "method.name=partial_bce",
            "trainer.epochs=1",
            f"trainer.output_dir={run_dir}",
            "trainer.run_name=h",
        ]
        hst(["train", "--config", str(CONFIG), *overrides, *train_args], "train")
        checkpoint = next(run_dir.rglob("*.ckpt"))
        wall, user, system = hst(["predict", str(checkpoint), str(photos), "--show", "0"], "predict")
        predict = args.images / wall
        print(
            f"hst predict (folder), whole     {predict:7.1f} img/s  ({args.images} images: "
            f"{wall:.1f} s wall, {user:.1f} s user, {system:.1f} s system)"
        )

        ort_after = ort_forward()
        print(f"onnxruntime forward only        {ort_after:7.1f} img/s  ({args.forward_images} images, after)")
        torch_batches = batches[: args.torch_images // FORWARD_BATCH]
        contiguous = forward_rate(TorchRunner(backbone, channels_last=False), torch_batches)
        print(f"torch forward only, contiguous  {contiguous:7.1f} img/s  (the path before onnxruntime)")
        faulting = forward_rate(TorchRunner(backbone, channels_last=True), torch_batches)
        print(f"torch forward only, chan.-last  {faulting:7.1f} img/s  (glibc returning the activations)")
        with reused_heap():
            channels_last = forward_rate(TorchRunner(backbone, channels_last=True), torch_batches)
        print(f"torch forward only, chan.-last  {channels_last:7.1f} img/s  (heap reused: the fallback)")

    ort = (ort_before + ort_after) / 2
    print(f"onnxruntime / torch contiguous   {ort / contiguous:.2f}")
    print(f"onnxruntime / torch chan.-last   {ort / channels_last:.2f}")
    ratios = (
        ("extract_cold", extract / ort, EXTRACT_TARGET),
        ("extract_warm", warm / ort, EXTRACT_TARGET),
        ("predict", predict / ort, PREDICT_TARGET),
    )
    for name, ratio, target in ratios:
        print(f"{name}_ratio {ratio:.2f} (target ≥ {target}: {'met' if ratio >= target else 'MISSED'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
