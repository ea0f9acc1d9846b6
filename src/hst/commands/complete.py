"""``hst complete``: fill the unknown labels of a partially labelled dataset; known labels never change."""

from __future__ import annotations

import argparse

from hst.commands import (
    CHECKPOINT_HELP,
    THRESHOLD_HELP,
    add_evidence_argument,
    add_inference_arguments,
    inference_options,
    print_lines,
)

HELP = (
    "fill the unknown labels of a partially labelled dataset with a trained checkpoint (classifier + "
    "IST/CST evidence); known labels are never changed"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help=CHECKPOINT_HELP)
    parser.add_argument(
        "partial_labels", help="CSV manifest with 1/-1/empty labels (as hst make-partial writes), or any data spec"
    )
    parser.add_argument(
        "--out", required=True, help="completed CSV manifest; OUT.confidence.csv lists every filled entry"
    )
    parser.add_argument(
        "--data",
        default=None,
        help="data spec with the full labels of the same images: prints precision/recall of the "
        "filled labels at several confidence levels",
    )
    parser.add_argument(
        "--min-confidence",
        dest="min_confidence",
        type=float,
        default=0.9,
        help="entries filled with lower confidence stay unknown (0.9)",
    )
    parser.add_argument(
        "--threshold", "--thresholds", dest="threshold", default="auto", help="auto (default): " + THRESHOLD_HELP
    )
    add_evidence_argument(parser)
    parser.add_argument(
        "--precision",
        type=float,
        default=None,
        help="fill with the cross-fitted rule calibrated per class on the known labels so that the filled labels "
        "are P precise (e.g. 0.9); classes that cannot reach P are left unfilled and listed (replaces the "
        "confidence rule and its options)",
    )
    parser.add_argument(
        "--calibrate-on",
        dest="calibrate_on",
        default=None,
        help="with --precision: the manifest before a person reviewed it; only its (randomly chosen) known "
        "labels calibrate the rule",
    )
    parser.add_argument(
        "--positives-only", dest="positives_only", action="store_true", help="with --precision: fill positives only"
    )
    add_inference_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if args.precision is not None:
        return _run_at_precision(args)
    from pathlib import Path

    from hst.apps.complete import complete

    result = complete(
        Path(args.checkpoint),
        args.partial_labels,
        Path(args.out),
        data=args.data,
        min_confidence=args.min_confidence,
        threshold=args.threshold,
        evidence=not args.no_evidence,
        **inference_options(args),
    )
    print_lines(result.lines())
    return 0


def _run_at_precision(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hst.apps.complete_at_precision import complete_at_precision
    from hst.engine.trained_model import TrainedModel

    calibrated = complete_at_precision(
        TrainedModel.from_checkpoint(Path(args.checkpoint)),
        args.partial_labels,
        Path(args.out),
        args.precision,
        data=args.data,
        calibrate_on=args.calibrate_on,
        negatives=not args.positives_only,
        **inference_options(args),
    )
    print_lines(calibrated.lines())
    return 0
