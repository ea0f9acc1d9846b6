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
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from speed_common import PeakMemory, resolve_device, run_isolated
from speed_ist import (
    IST_TARGET,
    IstDims,
    IstRow,
    format_ist_table,
    ist_benchmark,
    linear_at,
    measure_fold,
    measure_ist,
    profile_ist,
    published_ist,
    relative_difference,
)
from speed_step import STEP_TARGETS, StepRow, build_step_setup, format_step_table, profile_step, step_benchmark


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
    parser.add_argument(
        "--ist-kernel",
        dest="ist_kernel",
        choices=["eager", "compiled"],
        default="compiled",
        help="ISTHead kernel measured as 'ours' and used in the hst step (compiled)",
    )
    parser.add_argument(
        "--adam",
        choices=["default", "fused"],
        default="default",
        help="Adam of (b): the engine's default implementation, or fused=True (what it would change)",
    )
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
                adam=args.adam,
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
    if args.adam == "fused":
        print("Adam: torch.optim.Adam(fused=True) in (b); the training engine uses the default implementation")
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


__all__ = [
    "IstDims",
    "IstRow",
    "PeakMemory",
    "StepRow",
    "format_ist_table",
    "ist_benchmark",
    "linear_at",
    "main",
    "make_plan",
    "measure_ist",
    "parse_args",
    "published_ist",
    "relative_difference",
    "run_isolated",
    "summary_lines",
]


if __name__ == "__main__":
    sys.exit(main())
