"""(b) of ``speed.py``: one full training step of ``hst`` against ``partial_bce`` on the same network."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hst.config import MethodConfig, ModelConfig
from hst.methods import Method, StepContext, create
from hst.methods.base import FeatureBatch
from hst.models.network import PartialLabelNetwork, build_network
from speed_common import activities, median_ms, sync, top_ops

STEP_TARGETS = {80: 1.15, 200: 1.3}
"""Largest allowed hst / partial_bce step-time ratio per class count."""


PHASES = ("forward", "loss", "backward", "optimizer")


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def random_partial_labels(
    rng: np.random.Generator, rows: int, num_classes: int, unknown: float = 0.5, positive: float = 0.2
) -> np.ndarray:
    """int8 labels: ``unknown`` of the entries 0, the known ones +1 with probability ``positive``, else −1."""
    labels = np.where(rng.random((rows, num_classes)) < positive, 1, -1).astype(np.int8)
    labels[rng.random((rows, num_classes)) < unknown] = 0
    return labels


@dataclass
class StepSetup:
    network: PartialLabelNetwork
    methods: dict[str, Method]
    optimizers: dict[str, torch.optim.Optimizer]
    images: Tensor
    labels: Tensor
    epoch: int


def build_step_setup(
    backbone: str,
    weights: str,
    num_classes: int,
    batch: int,
    image_size: int,
    device: torch.device,
    method_names: Sequence[str] = ("hst", "partial_bce"),
    feature_dim: int = 1024,
    hidden_dim: int = 512,
    seed: int = 0,
    ist_kernel: str = "eager",
    adam: str = "default",
) -> StepSetup:
    """One network shared by every method (each with its own Adam, as the engine sets it up), random
    images and partial labels (~50% unknown); hst gets prototypes from a small random feature source and
    is stepped in its pseudo-label phase. ``adam="fused"`` steps with ``torch.optim.Adam(fused=True)``
    instead of the engine's default implementation (to show what that choice would change)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    class_names = [f"class_{i}" for i in range(num_classes)]
    model_config = ModelConfig(
        backbone=backbone, weights=weights, feature_dim=feature_dim, hidden_dim=hidden_dim, trainable="last_stage"
    )
    network = build_network(
        model_config,
        class_names,
        random_partial_labels(rng, 256, num_classes),
        embeddings=rng.standard_normal((num_classes, 50)).astype(np.float32),
    )
    network.to(device).train()
    method_config = MethodConfig()
    epoch = method_config.pseudo_label_epoch
    source_labels = torch.from_numpy(random_partial_labels(rng, 4 * batch, num_classes, positive=0.5)).to(device)
    source_features = torch.randn(4 * batch, num_classes, network.feature_dim, device=device)

    source_logits = torch.randn(4 * batch, num_classes, device=device)
    source_pooled = torch.randn(4 * batch, 64, device=device)

    def feature_source(split: str = "train") -> Iterator[FeatureBatch]:
        rows = torch.arange(len(source_labels), device=device)
        yield FeatureBatch(rows, source_logits, source_features, source_labels, None, source_pooled)

    methods: dict[str, Method] = {}
    optimizers: dict[str, torch.optim.Optimizer] = {}
    for name in method_names:
        config = MethodConfig(name=name, ist_kernel=ist_kernel)
        method = create(name, config, num_classes, network.feature_dim, 1000).to(device).train()
        with _quiet("hst.methods"):  # random labels: its per-class calibration warnings say nothing here
            method.on_train_epoch_start(epoch, feature_source)
        thresholds = method.threshold_parameters()
        ids = {id(p) for p in thresholds}
        main = [p for p in [*network.parameters(), *method.parameters()] if p.requires_grad and id(p) not in ids]
        groups: list[dict[str, Any]] = [{"params": main, "lr": 3e-4, "weight_decay": 5e-4}]
        if thresholds:
            groups.append({"params": thresholds, "lr": 1e-3, "weight_decay": 0.0})
        methods[name] = method
        optimizers[name] = torch.optim.Adam(groups, fused=True) if adam == "fused" else torch.optim.Adam(groups)
    images = torch.randn(batch, 3, image_size, image_size, device=device)
    labels = torch.from_numpy(random_partial_labels(rng, batch, num_classes)).to(device)
    return StepSetup(network, methods, optimizers, images, labels, epoch)


def training_step(setup: StepSetup, name: str, batch_index: int, device: torch.device) -> dict[str, float]:
    """One step of method ``name``; returns seconds per phase (forward, loss, backward, optimizer)."""
    method, optimizer = setup.methods[name], setup.optimizers[name]
    ctx = StepContext(
        epoch=setup.epoch,
        batch_index=batch_index,
        batches_per_epoch=100,
        indices=torch.arange(len(setup.images), device=device),
    )
    times = [time.perf_counter()]
    with torch.profiler.record_function("step: network forward"):
        output = setup.network(setup.images)
    sync(device)
    times.append(time.perf_counter())
    with torch.profiler.record_function("step: method loss"):
        loss = method.training_loss(output, setup.labels, ctx).loss
    sync(device)
    times.append(time.perf_counter())
    with torch.profiler.record_function("step: backward"):
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
    sync(device)
    times.append(time.perf_counter())
    with torch.profiler.record_function("step: optimizer"):
        optimizer.step()
    sync(device)
    times.append(time.perf_counter())
    value = float(loss.detach())
    if not math.isfinite(value):
        raise FloatingPointError(f"{name}: non-finite loss {value}")
    return {phase: times[i + 1] - times[i] for i, phase in enumerate(PHASES)}


@dataclass
class StepRow:
    backbone: str
    image_size: int
    batch: int
    num_classes: int
    phases_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    """Method → phase → median ms; phase ``total`` is the median of whole steps."""
    ist_ms: float = math.nan
    """The IST head alone (forward + backward) at this B and C."""
    fold_ms: float = math.nan
    """Of which the batch-independent fold of fc3 into the pair weights (P·K² matmuls)."""

    @property
    def ratio(self) -> float:
        return self.phases_ms["hst"]["total"] / self.phases_ms["partial_bce"]["total"]


def step_benchmark(setup: StepSetup, repeats: int, device: torch.device, backbone: str, image_size: int) -> StepRow:
    """1 warm-up step per method, then ``repeats`` steps each, the methods alternating (shared load and
    clock drift hit both alike)."""
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in setup.methods}
    for step in range(1 + repeats):
        for name in setup.methods:
            phases = training_step(setup, name, step, device)
            if step > 0:
                samples[name].append(phases | {"total": sum(phases.values())})
    row = StepRow(backbone, image_size, len(setup.images), setup.labels.shape[1])
    for name, runs in samples.items():
        row.phases_ms[name] = {key: median_ms([r[key] for r in runs]) for key in (*PHASES, "total")}
    return row


def format_step_table(rows: Sequence[StepRow], repeats: int, device: torch.device) -> str:
    head = (
        f"(b) one training step (forward, loss, backward, Adam), hst (pseudo-label phase) vs partial_bce, "
        f"same network, {device.type}; median of {repeats} after 1 warm-up, ms"
    )
    header = (
        f"{'backbone':<22} {'px':>4} {'B':>2} {'C':>4} {'method':<12} "
        + " ".join(f"{p:>9}" for p in PHASES)
        + f" {'total':>9} {'ratio':>6} {'target':>7} {'verdict':>7} {'extra':>7} {'IST':>7} {'fold':>6}"
    )
    lines = [head, header, "-" * len(header)]
    for r in rows:
        for name, phases in r.phases_ms.items():
            is_hst = name == "hst"
            target = STEP_TARGETS.get(r.num_classes)
            ratio = f"{r.ratio:>5.2f}x" if is_hst else ""
            verdict = ("" if target is None else ("met" if r.ratio <= target else "MISSED")) if is_hst else ""
            target_text = f"≤{target:.2f}" if is_hst and target is not None else ""
            extra = phases["total"] - r.phases_ms["partial_bce"]["total"]
            why = f" {extra:>7.0f} {r.ist_ms:>7.0f} {r.fold_ms:>6.0f}" if is_hst else ""
            lines.append(
                f"{r.backbone:<22} {r.image_size:>4} {r.batch:>2} {r.num_classes:>4} {name:<12} "
                + " ".join(f"{phases[p]:>9.1f}" for p in PHASES)
                + f" {phases['total']:>9.1f} {ratio:>6} {target_text:>7} {verdict:>7}{why}"
            )
    lines.append(
        "extra = hst − partial_bce total; IST = the IST head alone, forward+backward at this B and C (same device); "
        "fold = its P·K² matmuls"
    )
    return "\n".join(lines)


def profile_step(setup: StepSetup, name: str, device: torch.device, row_limit: int = 12) -> str:
    """torch.profiler top operators (self time) of one more step of ``name``."""
    with torch.profiler.profile(activities=activities(device)) as prof:
        training_step(setup, name, 1, device)
    return top_ops(prof, device, row_limit)
