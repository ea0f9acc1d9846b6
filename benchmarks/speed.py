"""Speed of HST: (a) the IST head against the published formulation, (b) one training step, hst vs partial_bce.

    python benchmarks/speed.py [--device cpu|cuda] [--skip-resnet] [--quick]

(a) forward + backward of the IST pair head, published formulation (every ``B×P×1024`` pair activation
materialised) against :class:`hst.models.ist.ISTHead`, for C ∈ {20, 80, 200}, B = 32, D = 1024: median time,
peak memory, ratio, and the largest output / input-gradient difference between the two.
(b) one full training step (network forward, method loss, backward, Adam step) of ``hst`` in its
pseudo-label phase against ``partial_bce`` on the same network, batch 8 at 448 px, C ∈ {80, 200}.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` above what was allocated before the measurement;
on CPU every IST measurement runs in a fresh process and reports its peak resident set (``VmHWM``) above
its resident set once the inputs are built. On CPU a published measurement whose pair activation would
exceed ``--published-max-elements`` runs at two smaller batches and is extrapolated linearly in B.

The last three printed lines are ``ist_speedup_c80``, ``step_ratio_c80`` and ``step_ratio_c200`` (with
the class counts of the run in their names, so ``--quick`` prints other names).
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hst.config import MethodConfig, ModelConfig
from hst.methods import Method, StepContext, create
from hst.models.ist import ISTHead, pair_index
from hst.models.network import PartialLabelNetwork, build_network

IST_TARGET = 20.0
STEP_TARGETS = {80: 1.15, 200: 1.3}
"""Largest allowed hst / partial_bce step-time ratio per class count."""
MIB = 2**20


# ---- shared helpers ----------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """``auto`` → cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _proc_status_bytes(field_name: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` in bytes; None where the file does not exist (not Linux)."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) * 1024
    return None


def _reset_peak_rss() -> None:
    # writing 5 to clear_refs resets VmHWM (Linux ≥ 4.0); without it VmHWM still holds the setup peak, lower
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


class PeakMemory:
    """Peak memory above the level at ``start()``: CUDA allocator on GPU, resident set (``VmHWM``) on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.base = 0

    def start(self) -> None:
        if self.device.type == "cuda":
            _sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            _reset_peak_rss()
            self.base = _proc_status_bytes("VmRSS") or 0

    def peak(self) -> float:
        """Bytes above the start level; NaN where it cannot be read."""
        if self.device.type == "cuda":
            _sync(self.device)
            return float(torch.cuda.max_memory_allocated(self.device) - self.base)
        high = _proc_status_bytes("VmHWM")
        return math.nan if high is None else float(max(high - self.base, 0))


def run_isolated(isolate: bool, fn: Callable[..., Any], **kwargs: Any) -> Any:
    """``fn(**kwargs)``, in a fresh spawned process when ``isolate`` (so its peak memory is its own)."""
    if not isolate:
        return fn(**kwargs)
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, **kwargs).result()


def _median_ms(seconds: Sequence[float]) -> float:
    return 1000.0 * statistics.median(seconds)


# ---- (a) IST head ------------------------------------------------------------------------------------


def published_ist(head: ISTHead, semantic: Tensor) -> Tensor:
    """The published IST formulation on ``head``'s parameters: ``B×C×D`` → ``B×P`` pair logits.

    ``g = fc1(f)``; per pair ``[g_i; g_j]`` (``B×P×2·hidden``) → ``fc2`` → ReLU → ``fc3`` (``B×P×output``),
    then one weight vector per pair (dot product + bias). Every pair activation is materialised.
    """
    first, second = pair_index(head.num_classes, device=semantic.device)
    g = head.fc1(semantic)
    pairs = torch.cat([g[:, first], g[:, second]], dim=2)
    out = head.fc3(torch.relu(head.fc2(pairs)))
    classifier = head.pair_classifier
    return (out * classifier.weight).sum(2) + classifier.bias


@dataclass(frozen=True)
class IstDims:
    feature_dim: int = 1024
    hidden_dim: int = 512
    output_dim: int = 1024


@dataclass
class IstMeasurement:
    impl: str
    num_classes: int
    batch: int
    seconds: list[float]
    peak_bytes: float
    output: np.ndarray
    """``batch × P`` pair logits of the last iteration."""
    grad_semantic: np.ndarray
    """``batch × C × D`` gradient of the fixed random projection of the output w.r.t. the input."""

    @property
    def ms(self) -> float:
        return _median_ms(self.seconds)


def ist_inputs(
    num_classes: int,
    batch: int,
    full_batch: int,
    dims: IstDims,
    device: torch.device,
    seed: int = 0,
    kernel: str = "eager",
) -> tuple[ISTHead, Tensor, Tensor]:
    """Seeded head, input features (``batch`` of ``full_batch`` rows, requiring grad) and output projection."""
    torch.manual_seed(seed)
    head = ISTHead(num_classes, dims.feature_dim, dims.hidden_dim, dims.output_dim, kernel=kernel).to(device)
    generator = torch.Generator().manual_seed(seed + 1)
    num_pairs = num_classes * (num_classes - 1) // 2
    semantic = torch.randn(full_batch, num_classes, dims.feature_dim, generator=generator)[:batch]
    projection = torch.randn(full_batch, num_pairs, generator=generator)[:batch]
    return head, semantic.to(device).requires_grad_(True), projection.to(device)


def ist_forward(impl: str) -> Callable[[ISTHead, Tensor], Tensor]:
    """``published`` → :func:`published_ist`; ``ours`` → ``ISTHead.forward``."""
    if impl not in ("published", "ours"):
        raise ValueError(f"impl must be 'published' or 'ours', got {impl!r}")
    return published_ist if impl == "published" else ISTHead.forward


def profile_ist(
    impl: str, num_classes: int, batch: int, dims: IstDims, device: torch.device, kernel: str = "eager"
) -> str:
    """torch.profiler top operators (self time) of one forward+backward after one warm-up."""
    head, semantic, projection = ist_inputs(num_classes, batch, batch, dims, device, kernel=kernel)
    forward = ist_forward(impl)
    (forward(head, semantic) * projection).sum().backward()
    with torch.profiler.profile(activities=_activities(device)) as prof:
        (forward(head, semantic) * projection).sum().backward()
        _sync(device)
    return _top_ops(prof, device)


def measure_ist(
    impl: str,
    num_classes: int,
    batch: int,
    full_batch: int,
    dims: IstDims,
    repeats: int,
    device: str,
    seed: int = 0,
    kernel: str = "eager",
) -> IstMeasurement:
    """Forward + backward of one implementation (``published`` or ``ours``): 1 warm-up, ``repeats`` timed.

    Inputs are the first ``batch`` rows of the same seeded ``full_batch`` inputs, so measurements at
    different batch sizes and implementations see identical rows and parameters.
    """
    dev = torch.device(device)
    head, semantic, projection = ist_inputs(num_classes, batch, full_batch, dims, dev, seed, kernel)
    forward = ist_forward(impl)
    memory = PeakMemory(dev)
    memory.start()
    seconds: list[float] = []
    out = projection
    for step in range(1 + repeats):
        head.zero_grad(set_to_none=True)
        semantic.grad = None
        _sync(dev)
        start = time.perf_counter()
        out = forward(head, semantic)
        (out * projection).sum().backward()
        _sync(dev)
        if step > 0:
            seconds.append(time.perf_counter() - start)
    peak = memory.peak()
    assert semantic.grad is not None
    return IstMeasurement(
        impl,
        num_classes,
        batch,
        seconds,
        peak,
        out.detach().cpu().numpy(),
        semantic.grad.detach().cpu().numpy(),
    )


def relative_difference(actual: np.ndarray, expected: np.ndarray) -> float:
    """``max |actual − expected| / max |expected|`` over the rows both have."""
    rows = min(len(actual), len(expected))
    a, e = actual[:rows].astype(np.float64), expected[:rows].astype(np.float64)
    return float(np.abs(a - e).max() / max(np.abs(e).max(), 1e-30))


def float64_check(
    num_classes: int, dims: IstDims, device: torch.device, rows: int = 2, full_batch: int = 32, seed: int = 0
) -> tuple[float, float]:
    """Input-gradient error of ours and of the published formulation, both float32, against the published
    formulation in float64, on the first ``rows`` rows of the benchmark inputs.

    A ReLU whose input lies within rounding of 0 flips between the float32 and float64 runs, so float32
    gradients carry errors far above the output's; this shows how large they are for either formulation.
    """
    head, semantic, projection = ist_inputs(num_classes, rows, full_batch, dims, device, seed)
    grads: dict[str, np.ndarray] = {}
    runs = [("ours", "ours", torch.float32), ("published", "published", torch.float32)]
    for name, impl, dtype in [*runs, ("exact", "published", torch.float64)]:
        head.to(dtype)
        inputs = semantic.detach().to(dtype).requires_grad_(True)
        (ist_forward(impl)(head, inputs) * projection.to(dtype)).sum().backward()
        assert inputs.grad is not None
        grads[name] = inputs.grad.double().cpu().numpy()
    head.float()
    return relative_difference(grads["ours"], grads["exact"]), relative_difference(grads["published"], grads["exact"])


def measure_fold(num_pairs: int, dim: int, repeats: int, device: torch.device) -> float:
    """Median ms of the fold ``W_pairs @ W3`` (``P×K`` by ``K×K``) forward + backward that ISTHead runs once
    per step whatever the batch size."""
    pair_weight = torch.randn(num_pairs, dim, device=device, requires_grad=True)
    fc3_weight = torch.randn(dim, dim, device=device, requires_grad=True)
    grad = torch.randn(num_pairs, dim, device=device)
    seconds = []
    for step in range(1 + repeats):
        pair_weight.grad = fc3_weight.grad = None
        _sync(device)
        start = time.perf_counter()
        (pair_weight @ fc3_weight).backward(grad)
        _sync(device)
        if step > 0:
            seconds.append(time.perf_counter() - start)
    return _median_ms(seconds)


@dataclass
class IstRow:
    num_classes: int
    batch: int
    published_ms: float
    ours_ms: float
    published_bytes: float
    ours_bytes: float
    output_diff: float
    grad_diff: float
    note: str = ""
    grad_error_ours: float = math.nan
    """Input-gradient error against float64 (see :func:`float64_check`)."""
    grad_error_published: float = math.nan

    @property
    def speedup(self) -> float:
        return self.published_ms / self.ours_ms

    @property
    def memory_ratio(self) -> float:
        return self.published_bytes / self.ours_bytes if self.ours_bytes > 0 else math.nan


def _linear_at(x: float, x0: float, y0: float, x1: float, y1: float) -> float:
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def ist_benchmark(
    classes: Sequence[int],
    batch: int,
    dims: IstDims,
    repeats: int,
    device: torch.device,
    isolate: bool,
    max_published_elements: int | None,
    fallback_batches: tuple[int, int],
    log: Callable[[str], None] = print,
    kernel: str = "eager",
) -> list[IstRow]:
    """Rows of table (a). A published pair activation above ``max_published_elements`` (``B·P·output``)
    is measured at ``fallback_batches`` instead and extrapolated linearly to ``batch``; a row measured at
    the larger fallback batch is added so one ratio at that size is measured outright."""
    rows: list[IstRow] = []

    def measure(impl: str, num: int, b: int) -> IstMeasurement:
        log(f"  measuring {impl:9s} C={num:<4d} B={b:<3d} ...")
        result: IstMeasurement = run_isolated(
            isolate,
            measure_ist,
            impl=impl,
            num_classes=num,
            batch=b,
            full_batch=batch,
            dims=dims,
            repeats=repeats,
            device=str(device),
            kernel=kernel,
        )
        log(f"    {result.ms:10.1f} ms, peak {result.peak_bytes / MIB:9.1f} MiB")
        return result

    for num in classes:
        pairs = num * (num - 1) // 2
        ours = measure("ours", num, batch)
        too_big = max_published_elements is not None and batch * pairs * dims.output_dim > max_published_elements
        check_rows = min(2, batch)
        log(f"  float64 check C={num:<4d} on {check_rows} rows ...")
        errors = float64_check(num, dims, device, rows=check_rows, full_batch=batch)
        if not too_big:
            pub = measure("published", num, batch)
            rows.append(
                IstRow(
                    num,
                    batch,
                    pub.ms,
                    ours.ms,
                    pub.peak_bytes,
                    ours.peak_bytes,
                    relative_difference(ours.output, pub.output),
                    relative_difference(ours.grad_semantic, pub.grad_semantic),
                    "",
                    *errors,
                )
            )
            continue
        small, large = fallback_batches
        pub_small = measure("published", num, small)
        pub_large = measure("published", num, large)
        ours_large = measure("ours", num, large)
        rows.append(
            IstRow(
                num,
                large,
                pub_large.ms,
                ours_large.ms,
                pub_large.peak_bytes,
                ours_large.peak_bytes,
                relative_difference(ours_large.output, pub_large.output),
                relative_difference(ours_large.grad_semantic, pub_large.grad_semantic),
                note=f"both measured at B={large}",
                grad_error_ours=errors[0],
                grad_error_published=errors[1],
            )
        )
        rows.append(
            IstRow(
                num,
                batch,
                _linear_at(batch, small, pub_small.ms, large, pub_large.ms),
                ours.ms,
                _linear_at(batch, small, pub_small.peak_bytes, large, pub_large.peak_bytes),
                ours.peak_bytes,
                relative_difference(ours.output, pub_large.output),
                relative_difference(ours.grad_semantic, pub_large.grad_semantic),
                note=(
                    f"published EXTRAPOLATED linearly from B={small} ({pub_small.ms:.0f} ms, "
                    f"{pub_small.peak_bytes / MIB:.0f} MiB) and B={large}; diffs on the first {large} rows"
                ),
                grad_error_ours=errors[0],
                grad_error_published=errors[1],
            )
        )
    return rows


def format_ist_table(
    rows: Sequence[IstRow], dims: IstDims, repeats: int, device: torch.device, kernel: str = "eager"
) -> str:
    head = (
        f"(a) IST head forward+backward, D={dims.feature_dim}, hidden {dims.hidden_dim}, output "
        f"{dims.output_dim}, float32, {device.type}; ours = ISTHead(kernel={kernel!r}); median of {repeats} "
        "after 1 warm-up; peak memory above the inputs"
    )
    header = (
        f"{'C':>4} {'B':>3} {'published ms':>13} {'ours ms':>9} {'speedup':>8} {'published MiB':>14} "
        f"{'ours MiB':>9} {'mem ratio':>9} {'out diff':>9} {'grad diff':>9} {'f64 err ours/pub':>17}  note"
    )
    lines = [head, header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r.num_classes:>4} {r.batch:>3} {r.published_ms:>13.1f} {r.ours_ms:>9.1f} {r.speedup:>7.1f}x "
            f"{r.published_bytes / MIB:>14.1f} {r.ours_bytes / MIB:>9.1f} {r.memory_ratio:>8.1f}x "
            f"{r.output_diff:>9.1e} {r.grad_diff:>9.1e} {r.grad_error_ours:>8.1e}/{r.grad_error_published:<8.1e}  "
            f"{r.note}"
        )
    lines.append(
        "diff = max |ours − published| / max |published| (float32 outputs; gradients w.r.t. the input features);"
    )
    lines.append(
        "f64 err = the same for the input gradient of ours / of published (float32) against published in float64, "
        "first 2 rows"
    )
    return "\n".join(lines)


# ---- (b) training step -------------------------------------------------------------------------------

PHASES = ("forward", "loss", "backward", "optimizer")


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
) -> StepSetup:
    """One network shared by every method (each with its own Adam, as the engine sets it up), random
    images and partial labels (~50% unknown); hst gets prototypes from a small random feature source and
    is stepped in its pseudo-label phase."""
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

    def feature_source() -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        yield torch.arange(len(source_labels), device=device), source_features, source_labels

    methods: dict[str, Method] = {}
    optimizers: dict[str, torch.optim.Optimizer] = {}
    for name in method_names:
        config = MethodConfig(name=name, ist_kernel=ist_kernel)
        method = create(name, config, num_classes, network.feature_dim, 1000).to(device).train()
        method.on_train_epoch_start(epoch, feature_source)
        thresholds = method.threshold_parameters()
        ids = {id(p) for p in thresholds}
        main = [p for p in [*network.parameters(), *method.parameters()] if p.requires_grad and id(p) not in ids]
        groups: list[dict[str, Any]] = [{"params": main, "lr": 3e-4, "weight_decay": 5e-4}]
        if thresholds:
            groups.append({"params": thresholds, "lr": 1e-3, "weight_decay": 0.0})
        methods[name] = method
        optimizers[name] = torch.optim.Adam(groups)
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
    _sync(device)
    times.append(time.perf_counter())
    with torch.profiler.record_function("step: method loss"):
        loss = method.training_loss(output, setup.labels, ctx).loss
    _sync(device)
    times.append(time.perf_counter())
    with torch.profiler.record_function("step: backward"):
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
    _sync(device)
    times.append(time.perf_counter())
    with torch.profiler.record_function("step: optimizer"):
        optimizer.step()
    _sync(device)
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
        row.phases_ms[name] = {key: _median_ms([r[key] for r in runs]) for key in (*PHASES, "total")}
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
    with torch.profiler.profile(activities=_activities(device)) as prof:
        training_step(setup, name, 1, device)
    return _top_ops(prof, device, row_limit)


def _activities(device: torch.device) -> list[torch.profiler.ProfilerActivity]:
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    return activities


def _top_ops(prof: torch.profiler.profile, device: torch.device, row_limit: int = 12) -> str:
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort_by, row_limit=row_limit, max_name_column_width=48)


# ---- command line ------------------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds; for tests)")
    parser.add_argument("--skip-resnet", action="store_true", help="leave resnet101 out of (b)")
    parser.add_argument("--ist-classes", type=_ints, default=None, help="default 20,80,200 (quick: 5)")
    parser.add_argument("--step-classes", type=_ints, default=None, help="default 80,200 (quick: 5,6)")
    parser.add_argument("--repeats", type=int, default=None, help="timed iterations; default 3 on CPU, 10 on GPU")
    parser.add_argument(
        "--published-max-elements",
        type=int,
        default=None,
        help="largest published pair activation B·P·1024 measured outright; default 2^28 on CPU, none on GPU",
    )
    parser.add_argument("--fallback-batches", type=_ints, default=None, help="the two smaller batches; default 4,8")
    parser.add_argument("--ist-kernel", dest="ist_kernel", choices=["eager", "compiled"], default="compiled",
                        help="ISTHead kernel measured as 'ours' and used in the hst step (compiled)")
    parser.add_argument("--no-isolate", action="store_true", help="measure (a) in this process (CPU peak less exact)")
    parser.add_argument("--no-profile", action="store_true", help="no profile even when a target is missed")
    parser.add_argument("--profile", action="store_true", help="print the step profiles even when targets are met")
    return parser.parse_args(argv)


@dataclass
class Plan:
    ist_classes: list[int]
    ist_batch: int
    dims: IstDims
    step_classes: list[int]
    step_batch: int
    image_size: int
    step_dims: tuple[int, int]
    """(feature_dim, hidden_dim) of the network in (b)."""
    backbones: list[tuple[str, str]]
    """(name, weights) per backbone of (b); the last three lines use the first."""
    repeats: int
    max_published_elements: int | None
    fallback_batches: tuple[int, int]


def make_plan(args: argparse.Namespace, device: torch.device) -> Plan:
    on_gpu = device.type == "cuda"
    if args.quick:
        lite = [("tf_efficientnet_lite0", "none")]
        plan = Plan([5], 4, IstDims(32, 16, 32), [5, 6], 2, 64, (32, 16), lite, 2, None, (1, 2))
    else:
        backbones = [("tf_efficientnet_lite0", "offline")]
        if not args.skip_resnet:
            backbones.append(("resnet101", "none"))
        plan = Plan(
            [20, 80, 200],
            32,
            IstDims(),
            [80, 200],
            8,
            448,
            (1024, 512),
            backbones,
            10 if on_gpu else 3,
            None if on_gpu else 2**28,
            (4, 8),
        )
    if args.ist_classes:
        plan.ist_classes = args.ist_classes
    if args.step_classes:
        plan.step_classes = args.step_classes
    if args.repeats:
        plan.repeats = args.repeats
    if args.published_max_elements is not None:
        plan.max_published_elements = args.published_max_elements
    if args.fallback_batches:
        small, large = args.fallback_batches
        plan.fallback_batches = (small, large)
    return plan


def summary_lines(ist_rows: Sequence[IstRow], step_rows: Sequence[StepRow], plan: Plan) -> list[str]:
    """The closing lines: IST speedup at the middle class count, step ratios on the first backbone."""
    middle = plan.ist_classes[len(plan.ist_classes) // 2]
    ist = next(r for r in ist_rows if r.num_classes == middle and r.batch == plan.ist_batch)
    lines = [f"ist_speedup_c{middle} {ist.speedup:.2f}"]
    first = plan.backbones[0][0]
    for num in plan.step_classes:
        step = next(r for r in step_rows if r.backbone == first and r.num_classes == num)
        lines.append(f"step_ratio_c{num} {step.ratio:.3f}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    plan = make_plan(args, device)
    started = time.perf_counter()
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, torch {torch.__version__}, device {device} ({machine}), "
        f"{torch.get_num_threads()} threads, python {platform.python_version()}"
    )
    ist_rows = ist_benchmark(
        plan.ist_classes,
        plan.ist_batch,
        plan.dims,
        plan.repeats,
        device,
        isolate=device.type == "cpu" and not args.no_isolate,
        max_published_elements=plan.max_published_elements,
        fallback_batches=plan.fallback_batches,
        kernel=args.ist_kernel,
    )
    print()
    print(format_ist_table(ist_rows, plan.dims, plan.repeats, device, args.ist_kernel))
    print()
    middle = plan.ist_classes[len(plan.ist_classes) // 2]
    ist_met = all(r.speedup >= IST_TARGET for r in ist_rows if r.num_classes == middle)
    if args.profile or (not ist_met and not args.no_profile):
        batch = plan.ist_batch
        limit = plan.max_published_elements
        if limit is not None and batch * middle * (middle - 1) // 2 * plan.dims.output_dim > limit:
            batch = plan.fallback_batches[1]
        for impl in ("ours", "published"):
            print(f"profile of one {impl} IST forward+backward, C={middle}, B={batch} (top operators):")
            print(profile_ist(impl, middle, batch, plan.dims, device, args.ist_kernel))
    step_rows: list[StepRow] = []
    profiles: list[str] = []
    ist_alone: dict[int, tuple[float, float]] = {}
    for num in plan.step_classes:
        # HST builds ISTHead(C, feature_dim) with the default hidden 512 and output 1024
        ist_dims = IstDims(plan.step_dims[0], 512, 1024)
        alone = measure_ist(
            "ours", num, plan.step_batch, plan.step_batch, ist_dims, plan.repeats, str(device), kernel=args.ist_kernel
        )
        fold = measure_fold(num * (num - 1) // 2, ist_dims.output_dim, plan.repeats, device)
        ist_alone[num] = (alone.ms, fold)
        print(f"  IST head alone C={num} B={plan.step_batch}: {alone.ms:.1f} ms, of which fold {fold:.1f} ms")
    for backbone, weights in plan.backbones:
        for num in plan.step_classes:
            print(f"  stepping {backbone} ({weights} weights) C={num} ...")
            feature_dim, hidden_dim = plan.step_dims
            setup = build_step_setup(
                backbone,
                weights,
                num,
                plan.step_batch,
                plan.image_size,
                device,
                feature_dim=feature_dim,
                hidden_dim=hidden_dim,
                ist_kernel=args.ist_kernel,
            )
            row = step_benchmark(setup, plan.repeats, device, backbone, plan.image_size)
            row.ist_ms, row.fold_ms = ist_alone[num]
            step_rows.append(row)
            print(f"    hst / partial_bce = {row.ratio:.3f}")
            target = STEP_TARGETS.get(num)
            missed = target is not None and row.ratio > target
            if args.profile or (missed and not args.no_profile):
                for name in setup.methods:
                    profiles.append(
                        f"profile of one {name} step, {backbone} {plan.image_size} px, B={plan.step_batch}, "
                        f"C={num} (top operators by self time):\n{profile_step(setup, name, device)}"
                    )
            del setup
    print()
    print(format_step_table(step_rows, plan.repeats, device))
    for text in profiles:
        print()
        print(text)
    print()
    print(f"target (a) ≥ {IST_TARGET:.0f}x at C={middle}: {'met' if ist_met else 'MISSED'}")
    for r in step_rows:
        target = STEP_TARGETS.get(r.num_classes)
        if target is not None:
            verdict = "met" if r.ratio <= target else "MISSED"
            print(f"target (b) {r.backbone} C={r.num_classes}: {r.ratio:.3f} ≤ {target}: {verdict}")
    print(f"# total wall time {time.perf_counter() - started:.0f} s")
    print("\n".join(summary_lines(ist_rows, step_rows, plan)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
