"""Exported backbone graphs on disk and ONNX Runtime sessions over them, without importing torch.

:mod:`hst.models.frozen_runtime` exports a frozen backbone (the evaluation transform's normalisation in front)
into ``<cache_dir>/onnx/``, checks it against torch and writes a record beside it (``<graph>.json``): what the
graph computes (backbone, input size, normalisation), the sha256 of its weights' tensors and of the weights file
it was built from, and of the graph itself. A later run that finds a record matching its config and its weights
file's bytes can run the backbone with ONNX Runtime alone; torch and timm take 3.5 s to import on 2 cores, a
sixth of extracting 512 photos (docs/performance.md).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from hst.config import ConfigError
from hst.io import write_text_atomic
from hst.models.weight_files import file_sha256

RUNTIME_ENV = "HST_FROZEN_RUNTIME"
RUNTIME_CHOICES = ("auto", "onnxruntime", "torch")
ONNX_OPSET = 17
ONNX_FORMAT = 1
"""Bumped when the exported graph changes, so that older files are not reused."""
GRAPH_FOLDER = "onnx"
FORWARD_BATCH = 16
"""Images per forward pass on the CPU (ONNX Runtime's best on 2 cores; larger batches only cost memory)."""


def requested_runtime(runtime: str | None = None) -> str:
    """``runtime``, else ``$HST_FROZEN_RUNTIME``, else ``auto``; checked against :data:`RUNTIME_CHOICES`."""
    choice = (runtime or os.environ.get(RUNTIME_ENV) or "auto").strip().lower()
    if choice not in RUNTIME_CHOICES:
        raise ConfigError(f"{RUNTIME_ENV}={choice!r}: expected one of {', '.join(RUNTIME_CHOICES)}")
    return choice


def graph_folder(cache_dir: str | Path) -> Path:
    return Path(cache_dir) / GRAPH_FOLDER


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


class OnnxSession:
    """An ONNX Runtime CPU session on uint8 ``B×H×W×3`` pixels; ``threads`` intra-op threads, no spin-waiting.

    ``threads=None`` lets ONNX Runtime choose (one per physical core).
    """

    def __init__(self, model: Path | bytes, threads: int | None = None) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Spinning threads would take the core the decoding thread needs between two batches.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        source = str(model) if isinstance(model, Path) else model
        self.session = onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def run(self, pixels: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: np.ascontiguousarray(pixels)})[0]


@dataclass(frozen=True)
class GraphRecord:
    """An exported graph and what it computes (the JSON written beside it)."""

    path: Path
    fields: dict[str, Any]

    @property
    def weights_sha256(self) -> str:
        """sha256 of the backbone's tensors (:func:`hst.models.frozen_runtime.weights_fingerprint`)."""
        return str(self.fields["weights_sha256"])

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(float(v) for v in self.fields["mean"])

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(float(v) for v in self.fields["std"])


def record_path(graph: Path) -> Path:
    return graph.with_suffix(".json")


def write_record(graph: Path, fields: dict[str, Any]) -> None:
    """Write the record of ``graph`` (after it is complete and checked); the graph's own sha256 is added."""
    record = {**fields, "onnx_format": ONNX_FORMAT, "opset": ONNX_OPSET, "onnx_sha256": file_sha256(graph)}
    write_text_atomic(record_path(graph), json.dumps(record, indent=1, sort_keys=True))


def find_graph(
    cache_dir: str | Path,
    backbone: str,
    image_size: int,
    weights_description: str,
    source_sha256: str,
) -> GraphRecord | None:
    """The graph in ``cache_dir`` of ``backbone`` at ``image_size`` built from a weights file of these bytes.

    Only a record written after the export's parity check counts, and only while the graph still has the bytes
    it was checked with and the installed timm is the one that built the network; anything else gives None.
    """
    folder = graph_folder(cache_dir)
    if not folder.is_dir():
        return None
    wanted = {
        "part": "backbone",
        "backbone": backbone,
        "image_size": int(image_size),
        "weights_description": weights_description,
        "source_sha256": source_sha256,
        "onnx_format": ONNX_FORMAT,
        "timm": package_version("timm"),
    }
    for path in sorted(folder.glob(f"{backbone}-{int(image_size)}px-*.json")):
        try:
            fields = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(fields, dict):
            continue
        fields.setdefault("part", "backbone")  # records from before fronts were exported too
        if any(fields.get(key) != value for key, value in wanted.items()):
            continue
        graph = path.with_suffix(".onnx")
        try:
            if graph.is_file() and file_sha256(graph) == fields.get("onnx_sha256"):
                return GraphRecord(graph, fields)
        except OSError:
            continue
    return None


__all__ = [
    "FORWARD_BATCH",
    "GRAPH_FOLDER",
    "ONNX_FORMAT",
    "ONNX_OPSET",
    "RUNTIME_CHOICES",
    "RUNTIME_ENV",
    "GraphRecord",
    "OnnxSession",
    "find_graph",
    "graph_folder",
    "requested_runtime",
    "write_record",
]
