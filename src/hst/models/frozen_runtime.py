"""A frozen backbone run on batches of pixels through the fastest runtime at hand.

Measured on a 2-core CPU (EfficientNet-Lite0, 448 px, batches of 16, docs/performance.md): ONNX Runtime 32 img/s,
torch ``channels_last`` 26 and contiguous 20, once torch keeps its activations' memory (:func:`reused_heap`;
without it 14 and 8). So on the CPU the backbone (with the normalisation of the evaluation transform in front of
it), or only its frozen front for a backbone whose last stage trains, is exported once to ONNX, into
``<cache_dir>/onnx/`` under a key of its tensors' fingerprint, checked against torch, given a record
(:func:`hst.models.onnx_graphs.write_record`, which lets a later extraction run it without torch) and run by ONNX
Runtime; torch (``channels_last``, inference mode, heap kept) serves when onnxruntime is not installed, when the
export fails or differs, on a GPU, and for fewer than :data:`ONNX_MIN_IMAGES` images unless the graph is exported
already (below that the one-off export costs more than it saves). ``HST_FROZEN_RUNTIME=torch`` or
``=onnxruntime`` overrides the choice.

Both runtimes compute the same function of the pixels (float32; they differ by rounding, far below the float16
rounding of the feature cache), so a feature cache's key does not depend on the runtime.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hst.data.base import MultiLabelData
from hst.data.batches import PixelBatches, RowsOfBatch
from hst.data.transforms import normalize_pixels
from hst.io import atomic_path, fields_key
from hst.models.backbone import Backbone
from hst.models.onnx_graphs import (
    FORWARD_BATCH,
    ONNX_FORMAT,
    ONNX_OPSET,
    RUNTIME_CHOICES,
    RUNTIME_ENV,
    OnnxSession,
    graph_folder,
    package_version,
    requested_runtime,
    write_record,
)
from hst.models.weight_files import file_sha256

ONNX_MIN_IMAGES = 200
"""Below this many images ``auto`` keeps torch unless the graph is already exported: on 2 cores the export and its
check take 1.2 s and save 7 ms an image (torch ``channels_last`` 26 img/s, ONNX Runtime 32), so they pay for
themselves after about 170 images."""
PARITY_ULPS = 1.0
"""Export check: max |ONNX − torch| at most this many float16 ulps of the largest feature (2^-10 of it each)."""


@contextlib.contextmanager
def reused_heap() -> Iterator[None]:
    """While torch runs a CNN on the CPU, keep freed memory in the process (glibc) instead of returning it.

    glibc serves every block above 32 MiB (every activation of a batch at 448 px) with a fresh ``mmap`` and
    returns it on free, so each forward pass page-faults all its activations in again, zero-filled by the kernel:
    more system time than compute (docs/performance.md). Raising the thresholds for the duration lets the
    blocks be reused; afterwards they go back to glibc's usual limits and the spare memory is released.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt, malloc_trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to tune
        yield
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 1 << 30)
    mallopt(m_trim_threshold, 1 << 31)
    try:
        yield
    finally:
        mallopt(m_mmap_threshold, 32 << 20)
        mallopt(m_trim_threshold, 64 << 20)
        malloc_trim(0)


def weights_fingerprint(module: nn.Module) -> str:
    """sha256 over the names, shapes, dtypes and bytes of all tensors of ``module``.

    The weights description alone cannot tell two random initialisations apart.
    """
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}\t{tuple(tensor.shape)}\t{tensor.dtype}\n".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def front_fingerprint(backbone: Backbone) -> str:
    """sha256 over the names, shapes and bytes of the front's tensors (parameters and buffers): what the front's
    output depends on, unchanged when the trainable rest trains."""
    split = backbone.split
    if split is None:
        raise ValueError(f"{backbone.name}: no frozen front (model.trainable={backbone.trainable!r})")
    digest = hashlib.sha256()
    for name, tensor in backbone.model.state_dict().items():
        if not any(name == m or name.startswith(m + ".") for m in split.front):
            continue
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}\t{tuple(tensor.shape)}\t{tensor.dtype}\n".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _run(backbone: Backbone, images: torch.Tensor, front: bool) -> torch.Tensor:
    return backbone.forward_front(images) if front else backbone(images)


class _PixelsToFeatures(nn.Module):
    """What the ONNX file holds: uint8 ``B×H×W×3`` pixels → normalised images → backbone feature maps (``front``:
    the frozen front's output maps).

    Keeps its last output: the exporter's trace runs the torch forward once, the reference of the parity check.
    """

    def __init__(self, backbone: Backbone, front: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.front = front
        self.last: torch.Tensor | None = None

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        self.last = _run(self.backbone, normalize_pixels(pixels, self.backbone.mean, self.backbone.std), self.front)
        return self.last


class TorchRunner:
    """The backbone (``front``: its frozen front) in torch: inference mode, ``channels_last`` when asked (weights
    converted once)."""

    name = "torch"

    def __init__(self, backbone: Backbone, channels_last: bool, front: bool = False) -> None:
        self.backbone = backbone
        self.channels_last = channels_last
        self.front = front
        if channels_last:
            backbone.to(memory_format=torch.channels_last)  # same values, the layout its convolutions run fastest on
        self.device = next(backbone.parameters()).device

    def __call__(self, pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        batch = torch.from_numpy(pixels) if isinstance(pixels, np.ndarray) else pixels
        with torch.inference_mode():
            images = normalize_pixels(batch.to(self.device, non_blocking=True), self.backbone.mean, self.backbone.std)
            return _run(self.backbone, images.contiguous(memory_format=layout), self.front)


class OnnxRunner:
    """The exported backbone in ONNX Runtime (CPU), as many intra-op threads as torch uses."""

    name = "onnxruntime"

    def __init__(self, model: Path | bytes) -> None:
        self.session = OnnxSession(model, threads=torch.get_num_threads())

    def __call__(self, pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
        array = pixels.cpu().numpy() if isinstance(pixels, torch.Tensor) else pixels
        return torch.from_numpy(self.session.run(array))


Runner = TorchRunner | OnnxRunner


def onnx_key(backbone: Backbone, image_size: int, front: bool = False) -> str:
    """Key of the exported graph: the backbone's tensors (the front's: its cut and tensors), normalisation, input
    size and the exporter's version."""
    fields: dict[str, object] = {
        "format": ONNX_FORMAT,
        "opset": ONNX_OPSET,
        "torch": torch.__version__,
        "backbone": backbone.name,
        "weights_sha256": front_fingerprint(backbone) if front else weights_fingerprint(backbone),
        "mean": list(backbone.mean),
        "std": list(backbone.std),
        "image_size": int(image_size),
    }
    if front:
        fields.update(part="front", cut=None if backbone.split is None else backbone.split.cut)
    return fields_key(fields)


def _example(image_size: int) -> torch.Tensor:
    """One seeded random image: what the export traces and checks."""
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (1, image_size, image_size, 3), dtype=torch.uint8, generator=generator)


def _export(backbone: Backbone, image_size: int, path: Path, front: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Export to ``path``; returns a traced example (one random image) and torch's features of it."""
    example = _example(image_size)
    wrapper = _PixelsToFeatures(backbone, front)
    with warnings.catch_warnings():
        # The TorchScript-based exporter announces its deprecation; it exports these CNNs faithfully and fast.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            (example,),
            str(path),
            dynamo=False,
            input_names=["pixels"],
            output_names=["features"],
            dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}},
            opset_version=ONNX_OPSET,
            do_constant_folding=True,
        )
    if wrapper.last is None:
        raise RuntimeError("the exporter did not run the model")
    return example, wrapper.last.detach().float()


def _check_parity(runner: OnnxRunner, example: tuple[torch.Tensor, torch.Tensor]) -> None:
    """The graph on the traced image, twice in one batch (a batch size baked into the graph shows), against torch."""
    pixels, expected = example
    got = runner(pixels.expand(2, -1, -1, -1))
    limit = PARITY_ULPS * 2.0**-10 * float(expected.abs().max())
    if got.shape[1:] != expected.shape[1:] or len(got) != 2 or not float((got - expected).abs().max()) <= limit:
        raise RuntimeError(f"the ONNX graph's features differ from torch's (more than {limit:.2e})")


def graph_path(backbone: Backbone, image_size: int, cache_dir: Path, front: bool = False) -> Path:
    """Where the export of ``backbone`` (``front``: its frozen front) at ``image_size`` is kept in ``cache_dir``."""
    part = "-front" if front else ""
    key = onnx_key(backbone, image_size, front)
    return graph_folder(cache_dir) / f"{backbone.name}-{int(image_size)}px{part}-{key}.onnx"


def _write_record(backbone: Backbone, image_size: int, path: Path, features: torch.Tensor, front: bool) -> None:
    """What a torch-free run needs to find and trust the graph (:func:`hst.models.onnx_graphs.find_graph`)."""
    source = backbone.weights_file
    fields = {
        "part": "front" if front else "backbone",
        "backbone": backbone.name,
        "image_size": int(image_size),
        "mean": list(backbone.mean),
        "std": list(backbone.std),
        "weights_description": backbone.weights_description,
        "weights_sha256": front_fingerprint(backbone) if front else weights_fingerprint(backbone),
        "source_sha256": None if source is None else file_sha256(source),
        "features": list(features.shape[1:]),
        "torch": torch.__version__,
        "timm": package_version("timm"),
    }
    write_record(path, fields)


def _onnx_runner(backbone: Backbone, image_size: int, cache_dir: Path | None, front: bool = False) -> OnnxRunner:
    """The cached export of ``backbone`` (or its front) at ``image_size``, exported and checked first if missing."""
    if cache_dir is not None:
        path = graph_path(backbone, image_size, cache_dir, front)
        if path.is_file():
            try:
                runner = OnnxRunner(path)
                if not path.with_suffix(".json").is_file():  # exported before graphs had records
                    with contextlib.suppress(OSError):
                        _write_record(backbone, image_size, path, runner(_example(image_size)), front)
                return runner
            except Exception:  # a damaged file is exported again below
                pass
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as temp:
                example = _export(backbone, image_size, temp, front)
                runner = OnnxRunner(temp)
                _check_parity(runner, example)
            # the record comes last: only a checked, complete graph gets one
            with contextlib.suppress(OSError):
                _write_record(backbone, image_size, path, example[1], front)
            return runner
        except OSError:
            pass  # a read-only cache folder: export into a temporary one and keep the graph in memory only
    with tempfile.TemporaryDirectory(prefix="hst-onnx-") as scratch:
        temp = Path(scratch) / "backbone.onnx"
        example = _export(backbone, image_size, temp, front)
        runner = OnnxRunner(temp.read_bytes())
    _check_parity(runner, example)
    return runner


def _notice(text: str) -> None:
    print(f"note: {text}", file=sys.stderr, flush=True)


def frozen_runner(
    backbone: Backbone,
    image_size: int,
    cache_dir: str | Path | None = None,
    num_images: int | None = None,
    channels_last: bool = False,
    runtime: str | None = None,
    front: bool = False,
) -> Runner:
    """The fastest runner of ``backbone`` (in eval mode; ``front``: of its frozen front) on uint8 ``B×H×W×3``
    pixels at ``image_size``.

    ``num_images``: how many images will run (``auto`` keeps torch for fewer than :data:`ONNX_MIN_IMAGES`
    unless ``cache_dir`` holds the export already);
    ``channels_last``: the torch runner's layout. A runtime that was asked for (``auto`` asks for ONNX Runtime
    on the CPU) and cannot serve falls back to torch with a one-line notice on stderr.
    """
    choice = requested_runtime(runtime)
    on_cpu = next(backbone.parameters()).device.type == "cpu"
    small = num_images is not None and num_images < ONNX_MIN_IMAGES
    if (
        small
        and choice == "auto"
        and cache_dir is not None
        and on_cpu
        and graph_path(backbone, image_size, Path(cache_dir), front).is_file()
    ):
        small = False  # exported already: nothing left to pay for
    if choice == "torch" or not on_cpu or (choice == "auto" and small):
        if choice == "onnxruntime" and not on_cpu:
            _notice(f"{RUNTIME_ENV}=onnxruntime runs on the CPU only; the backbone on the GPU runs in torch")
        return TorchRunner(backbone, channels_last, front)
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        _notice(
            "onnxruntime is not installed: the frozen backbone runs in torch (about 3× slower on a CPU; "
            "pip install 'hst-mlr[export]')"
        )
        return TorchRunner(backbone, channels_last, front)
    try:
        return _onnx_runner(backbone, image_size, None if cache_dir is None else Path(cache_dir), front)
    except Exception as error:  # the exporter and the runtime raise many types; torch always works
        reason = " ".join(str(error).split())[:200] or type(error).__name__
        _notice(f"ONNX export of {backbone.name} failed ({reason}): the frozen backbone runs in torch")
        return TorchRunner(backbone, channels_last, front)


@dataclass
class FeatureBatch(RowsOfBatch):
    """Backbone feature maps (``B×F×h×w`` float32) of ``rows``, and the rows that could not be read (with why);
    ``mirrored``: the maps of the horizontally mirrored images, when asked for."""

    rows: list[int]
    features: torch.Tensor | None
    skipped: list[tuple[int, str]] = field(default_factory=list)
    mirrored: torch.Tensor | None = None


def frozen_features(
    backbone: Backbone,
    data: MultiLabelData,
    image_size: int,
    cache_dir: str | Path | None = None,
    batch_size: int = FORWARD_BATCH,
    num_workers: int = 0,
    channels_last: bool = False,
    catch_errors: bool = False,
    runtime: str | None = None,
    front: bool = False,
    mirrored: bool = False,
) -> Iterator[FeatureBatch]:
    """The frozen backbone's feature maps of ``data`` on the evaluation transform, in order, batch by batch.

    The next images are decoded and resized (:class:`hst.data.batches.PixelBatches`) while the runner
    (:func:`frozen_runner`) computes the current batch. On the CPU a batch holds at most :data:`FORWARD_BATCH`
    images whatever ``batch_size`` says: larger ones only grow the activations (gigabytes at 448 px, every one
    of them page-faulted afresh by torch). ``front``: the frozen front's maps instead; ``mirrored``: also those of
    each image mirrored left to right (its pixels mirrored: the normalisation is per pixel, so this is the mirrored
    normalised image). The caller puts the backbone in eval mode.
    """
    if next(backbone.parameters()).device.type == "cpu":
        batch_size = min(batch_size, FORWARD_BATCH)
    # decoding starts first: the first batches are ready when the runner (an export, maybe) is
    batches = PixelBatches(data, image_size, batch_size, catch_errors, num_workers)
    with contextlib.ExitStack() as stack:
        stack.callback(batches.close)
        runner = frozen_runner(backbone, image_size, cache_dir, len(data), channels_last, runtime, front)
        if isinstance(runner, TorchRunner) and runner.device.type == "cpu":
            stack.enter_context(reused_heap())
        for batch in batches:
            if batch.pixels is None:
                yield FeatureBatch(batch.rows, None, batch.skipped)
                continue
            mirror = runner(np.ascontiguousarray(batch.pixels[:, :, ::-1])) if mirrored else None
            yield FeatureBatch(batch.rows, runner(batch.pixels), batch.skipped, mirror)


__all__ = [
    "FORWARD_BATCH",
    "ONNX_MIN_IMAGES",
    "RUNTIME_CHOICES",
    "RUNTIME_ENV",
    "FeatureBatch",
    "OnnxRunner",
    "TorchRunner",
    "front_fingerprint",
    "frozen_features",
    "frozen_runner",
    "requested_runtime",
    "weights_fingerprint",
]
