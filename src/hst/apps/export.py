"""``hst export``: the inference graph of a checkpoint as ONNX or TorchScript, with a JSON sidecar.

The exported model maps normalised images (B×3×H×W float32, RGB, ``(pixel / 255 − mean) / std``, bicubic
resize to H×W) to class probabilities (B×C, the sigmoid of the logits). Mean, std, size and class names are
written to ``FILE.json`` next to ``FILE``, with the per-class decision thresholds tuned on validation. The
batch axis is dynamic; H and W are fixed at export.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hst.config import ConfigError
from hst.engine.trained_model import TrainedModel
from hst.io import atomic_path, write_text_atomic
from hst.models.network import PartialLabelNetwork

FORMATS = ("onnx", "torchscript")
ONNX_OPSET = 17
DEFAULT_TOLERANCE = 1e-4


class ParityError(RuntimeError):
    """The exported model's probabilities differ from PyTorch's by more than the tolerance."""


class ProbabilityModel(nn.Module):
    """The network of a checkpoint returning ``sigmoid(logits)`` (B×C) for normalised images (B×3×H×W)."""

    def __init__(self, network: PartialLabelNetwork) -> None:
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.network(images).logits)


@dataclass
class ExportResult:
    path: Path
    sidecar: Path
    format: str
    image_size: int
    num_classes: int
    max_abs_diff: float
    """Largest |exported − PyTorch| probability on the random parity batch."""
    parity_batch: int
    tolerance: float

    def lines(self) -> list[str]:
        runtime = "onnxruntime" if self.format == "onnx" else "torch.jit"
        status = "ok" if self.max_abs_diff <= self.tolerance else "FAILED"
        size = self.image_size
        return [
            f"wrote {self.path} ({self.format}: images B×3×{size}×{size} → probabilities B×{self.num_classes})",
            f"wrote {self.sidecar} (class names, mean, std, image size)",
            f"parity: max |{runtime} − torch| = {self.max_abs_diff:.2e} on a random batch of {self.parity_batch} "
            f"(tolerance {self.tolerance:.0e}): {status}",
        ]


def sidecar_path(path: Path) -> Path:
    """``model.onnx`` → ``model.onnx.json``."""
    return path.with_name(path.name + ".json")


def _sidecar(
    module: TrainedModel, fmt: str, image_size: int, checkpoint: Path | None, max_abs_diff: float
) -> dict[str, Any]:
    backbone = module.network.backbone
    return {
        "format": fmt,
        "opset": ONNX_OPSET if fmt == "onnx" else None,
        "input": {
            "name": "images",
            "shape": ["batch", 3, image_size, image_size],
            "dtype": "float32",
            "layout": "NCHW, RGB",
            "preprocessing": "bicubic resize (antialiased) to image_size × image_size, scale to [0, 1], "
            "then (x - mean) / std per channel",
        },
        "output": {
            "name": "probabilities",
            "shape": ["batch", len(module.class_names)],
            "dtype": "float32",
            "meaning": "sigmoid of the class logits, columns in class_names order",
        },
        "image_size": image_size,
        "mean": list(backbone.mean),
        "std": list(backbone.std),
        "class_names": list(module.class_names),
        "suggested_threshold": 0.5,
        # Per-class thresholds tuned on validation F1 after training (0.5 everywhere when not tuned).
        "thresholds": {name: float(t) for name, t in zip(module.class_names, module.decision_thresholds, strict=True)},
        "thresholds_tuned": bool(module.thresholds_tuned),
        "backbone": backbone.name,
        "method": module.config.method.name,
        "checkpoint": checkpoint.name if checkpoint is not None else None,
        "parity_max_abs_diff": max_abs_diff,
    }


def _export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    try:
        import onnx  # noqa: F401
    except ImportError as error:
        raise ConfigError("ONNX export needs the onnx package: pip install 'hst-mlr[export]'") from error
    common: dict[str, Any] = {
        "input_names": ["images"],
        "output_names": ["probabilities"],
        "opset_version": ONNX_OPSET,
    }
    with warnings.catch_warnings():
        # The TorchScript-based exporter announces its deprecation; it is still the most robust path here.
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=False,
                dynamic_axes={"images": {0: "batch"}, "probabilities": {0: "batch"}},
                do_constant_folding=True,
                **common,
            )
            return
        except Exception as legacy_error:
            first = legacy_error
        try:
            batch = torch.export.Dim("batch", min=1)
            program = torch.onnx.export(model, (example,), dynamo=True, dynamic_shapes={"images": {0: batch}}, **common)
            assert program is not None
            program.save(str(path), external_data=False)
        except Exception as dynamo_error:
            raise RuntimeError(
                f"ONNX export failed: TorchScript exporter: {first}; dynamo exporter: {dynamo_error}"
            ) from dynamo_error


def _run_onnx(path: Path, images: np.ndarray) -> np.ndarray:
    try:
        import onnxruntime
    except ImportError as error:
        raise ConfigError("the ONNX parity check needs onnxruntime: pip install 'hst-mlr[export]'") from error
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.asarray(session.run(None, {name: images})[0])


def _export_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, (example,), check_trace=False)
        torch.jit.save(traced, str(path))


def _run_torchscript(path: Path, images: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(str(path), map_location="cpu")
    loaded.eval()
    with torch.inference_mode():
        return loaded(torch.from_numpy(images)).numpy()


def export_module(
    module: TrainedModel,
    out: Path,
    fmt: str = "onnx",
    image_size: int | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    parity_batch: int = 3,
    checkpoint: Path | None = None,
    seed: int = 0,
) -> ExportResult:
    """Export ``module``'s network (probabilities out) to ``out`` and check it against PyTorch.

    The files appear only when the parity check passes (max |Δp| ≤ ``tolerance``); otherwise
    :class:`ParityError` is raised and nothing is written.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"export format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if not tolerance >= 0:
        raise ConfigError(f"parity tolerance must be a non-negative number, got {tolerance}")
    size = int(image_size or module.config.data.image_size)
    if size < 16:
        raise ConfigError(f"image size must be at least 16 pixels, got {size}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = ProbabilityModel(module.network).to("cpu").eval()
    generator = torch.Generator().manual_seed(seed)
    # The example batch (2) differs from the parity batch so a batch size baked into the graph shows up.
    example = torch.randn(2, 3, size, size, generator=generator)
    check = torch.randn(parity_batch, 3, size, size, generator=generator)
    with torch.inference_mode():
        expected = model(check).numpy()
    # A hidden temporary name in the same folder: the final rename is atomic, permissions follow the umask.
    with atomic_path(out) as temp:
        if fmt == "onnx":
            _export_onnx(model, example, temp)
            got = _run_onnx(temp, check.numpy())
        else:
            _export_torchscript(model, example, temp)
            got = _run_torchscript(temp, check.numpy())
        if got.shape != expected.shape:
            raise ParityError(f"exported model returned shape {got.shape}, expected {expected.shape}")
        diff = float(np.max(np.abs(got.astype(np.float64) - expected.astype(np.float64))))
        result = ExportResult(out, sidecar_path(out), fmt, size, len(module.class_names), diff, parity_batch, tolerance)
        if not diff <= tolerance:
            raise ParityError(
                f"{out}: exported {fmt} probabilities differ from PyTorch by {diff:.2e} > tolerance {tolerance:.0e}; "
                "nothing was written"
            )
        sidecar = json.dumps(_sidecar(module, fmt, size, checkpoint, diff), indent=2) + "\n"
        write_text_atomic(result.sidecar, sidecar)
    return result


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    fmt: str = "onnx",
    image_size: int | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> ExportResult:
    """Load ``checkpoint`` (written by ``hst train``) and export it; see :func:`export_module`."""
    module = TrainedModel.from_checkpoint(Path(checkpoint))
    return export_module(module, Path(out), fmt, image_size, tolerance, checkpoint=Path(checkpoint))


__all__ = [
    "FORMATS",
    "ExportResult",
    "ParityError",
    "ProbabilityModel",
    "export_checkpoint",
    "export_module",
    "sidecar_path",
]
