"""``hst predict``: label new images with a trained checkpoint."""

from __future__ import annotations

import argparse
import sys

from hst.commands import CHECKPOINT_HELP, THRESHOLD_HELP, add_inference_arguments, inference_options, print_lines

HELP = "label new images (file, folder or data spec) with a trained checkpoint"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help=CHECKPOINT_HELP)
    parser.add_argument("input", help="image file, folder (searched recursively) or data spec (csv:FILE, ...)")
    parser.add_argument(
        "--out", default=None, help="FILE.csv (image,label,probability per predicted label) or FILE.json"
    )
    parser.add_argument(
        "--threshold", "--thresholds", dest="threshold", default="0.5", help="0.5 (default): " + THRESHOLD_HELP
    )
    parser.add_argument(
        "--top-k",
        dest="top_k",
        type=int,
        default=None,
        help="predict the k most probable labels of each image instead of thresholding",
    )
    parser.add_argument(
        "--all-scores",
        dest="all_scores",
        action="store_true",
        help="CSV: image,<classes…> probabilities of every class (for hst metrics "
        "--scores-are-probabilities); JSON: add a probabilities object",
    )
    add_inference_arguments(parser)
    parser.add_argument(
        "--image-size",
        dest="image_size",
        type=int,
        default=None,
        help="resize images to N×N (default: the training size)",
    )
    parser.add_argument("--show", type=int, default=20, help="images listed in the printed table (20; -1 = all)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hst.apps.predict import predict
    from hst.config import ConfigError

    out = Path(args.out) if args.out else None
    if out is not None and out.suffix.lower() not in {".csv", ".json"}:
        raise ConfigError(f"--out must end in .csv or .json, got {out}")
    result = predict(
        Path(args.checkpoint),
        args.input,
        threshold=args.threshold,
        top_k=args.top_k,
        image_size=args.image_size,
        **inference_options(args),
    )
    print_lines(result.table_lines(limit=None if args.show < 0 else args.show))
    predicted = int(result.selected().sum())
    print(f"{len(result)} images, {predicted} predicted labels ({result.rule}), {len(result.class_names)} classes")
    if result.skipped:
        print(f"skipped {len(result.skipped)} unreadable images:", file=sys.stderr)
        for image, reason in result.skipped:
            print(f"  {image}: {reason}", file=sys.stderr)
    if out is not None:
        result.write(out, all_scores=args.all_scores)
        print(f"wrote {out}")
    return 0
