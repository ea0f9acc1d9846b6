"""``hst export``: a checkpoint's inference graph as ONNX or TorchScript, checked against torch."""

from __future__ import annotations

import argparse
import sys

from hst.commands import CHECKPOINT_HELP, print_lines

HELP = (
    "export a checkpoint's inference graph (images → probabilities) to ONNX or "
    "TorchScript, with a JSON sidecar and a parity check"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help=CHECKPOINT_HELP)
    parser.add_argument("--format", required=True, choices=["onnx", "torchscript"], help="onnx or torchscript")
    parser.add_argument("--out", required=True, help="output file (model.onnx / model.pt); FILE.json is the sidecar")
    parser.add_argument(
        "--image-size",
        dest="image_size",
        type=int,
        default=None,
        help="input height and width N (default: the training size)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="largest allowed |exported - torch| probability in the parity check (1e-4)",
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hst.apps.export import ParityError, export_checkpoint

    try:
        result = export_checkpoint(
            Path(args.checkpoint), Path(args.out), args.format, args.image_size, tolerance=args.tolerance
        )
    except ParityError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print_lines(result.lines())
    return 0
