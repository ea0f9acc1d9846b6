"""``hst evaluate``: score a labelled dataset with a trained checkpoint."""

from __future__ import annotations

import argparse
import json

from hst.commands import CHECKPOINT_HELP, print_metrics

HELP = "score a dataset with a trained checkpoint (mAP, OF1, CF1, per-class AP)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help=CHECKPOINT_HELP)
    parser.add_argument("data", help="data spec with full labels")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hst.apps.evaluate import evaluate_checkpoint

    metrics = evaluate_checkpoint(Path(args.checkpoint), args.data)
    if args.json:
        print(json.dumps(metrics))
        return 0
    print_metrics(metrics)
    return 0
