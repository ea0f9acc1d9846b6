"""The ``hst`` commands, one small module each: ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``.

A command module imports nothing heavy at import time (so ``hst --help`` stays fast); ``run`` imports the
app that does the work. ``hst.cli`` holds the table of command names; this package holds what commands share.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping
from typing import Any

EPILOG_OVERRIDES = "Options can also be given as dotted key=value overrides after the positional arguments."
CHECKPOINT_HELP = "checkpoint file written by hst train (checkpoints/best.ckpt)"
THRESHOLD_HELP = (
    "a probability in [0, 1] for every class, 'tuned' (per-class thresholds tuned for F1 on the "
    "validation split at train time, stored in the checkpoint) or 'auto' (tuned when present, else 0.5)"
)


def add_overrides(parser: argparse.ArgumentParser, help_text: str | None = None) -> None:
    """The trailing ``key=value`` overrides, and the help line that says they exist."""
    parser.add_argument("overrides", nargs="*", metavar="key=value", help=help_text)
    parser.epilog = EPILOG_OVERRIDES


def add_inference_arguments(parser: argparse.ArgumentParser, on_error: bool = True) -> None:
    """The options of a pass over images that predict, complete and review share."""
    parser.add_argument("--batch-size", dest="batch_size", type=int, default=32, help="images per batch (32)")
    if on_error:
        parser.add_argument(
            "--on-error",
            dest="on_error",
            choices=["error", "skip"],
            default="error",
            help="unreadable or missing image: stop (default) or skip it and report",
        )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto (cpu)")


def inference_options(args: argparse.Namespace) -> dict[str, Any]:
    """What ``add_inference_arguments`` (with ``--on-error``) parsed, as the apps' keyword arguments."""
    return {"batch_size": args.batch_size, "on_error": args.on_error, "device": args.device}


def add_evidence_argument(parser: argparse.ArgumentParser) -> None:
    """``--no-evidence``, as complete and review take it."""
    parser.add_argument(
        "--no-evidence",
        dest="no_evidence",
        action="store_true",
        help="use the classifier alone (no IST co-occurrence or CST prototype evidence)",
    )


def print_lines(lines: Iterable[str]) -> None:
    for line in lines:
        print(line)


def print_metrics(metrics: Mapping, with_rates: bool = False) -> None:
    print(f"mAP {metrics['mAP']:.2f}  OF1 {metrics['OF1']:.2f}  CF1 {metrics['CF1']:.2f}")
    if with_rates:
        print(f"OP {metrics['OP']:.2f}  OR {metrics['OR']:.2f}  CP {metrics['CP']:.2f}  CR {metrics['CR']:.2f}")
    print("per-class AP:")
    for name, value in metrics["per_class_AP"].items():
        print(f"  {name}: {value:.2f}")
