"""(a) of ``speed.py``: the IST pair head, published formulation against :class:`hst.models.ist.ISTHead`."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from hst.models.ist import ISTHead, pair_index
from hst.models.ist_kernel import folded_width
from speed_common import MIB, PeakMemory, activities, median_ms, run_isolated, sync, top_ops

IST_TARGET = 20.0


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
        return median_ms(self.seconds)


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
    with torch.profiler.profile(activities=activities(device)) as prof:
        (forward(head, semantic) * projection).sum().backward()
        sync(device)
    return top_ops(prof, device)


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
        sync(dev)
        start = time.perf_counter()
        out = forward(head, semantic)
        (out * projection).sum().backward()
        sync(dev)
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
    """Median ms of the fold ``W_pairs @ [W3 | b3 | 0]`` (``P×K`` by ``K×W``, ``W`` = K + 1 rounded up) forward +
    backward that ISTHead runs once per step whatever the batch size."""
    width = folded_width(dim)
    pair_weight = torch.randn(num_pairs, dim, device=device, requires_grad=True)
    fc3_weight = torch.randn(dim, width, device=device, requires_grad=True)
    grad = torch.randn(num_pairs, width, device=device)
    seconds = []
    for step in range(1 + repeats):
        pair_weight.grad = fc3_weight.grad = None
        sync(device)
        start = time.perf_counter()
        (pair_weight @ fc3_weight).backward(grad)
        sync(device)
        if step > 0:
            seconds.append(time.perf_counter() - start)
    return median_ms(seconds)


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


def linear_at(x: float, x0: float, y0: float, x1: float, y1: float) -> float:
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
                linear_at(batch, small, pub_small.ms, large, pub_large.ms),
                ours.ms,
                linear_at(batch, small, pub_small.peak_bytes, large, pub_large.peak_bytes),
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
