"""``hst metrics``: score a file of predictions against a file of labels."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass

from hst.commands import add_overrides, print_metrics

HELP = "mAP, OF1, CF1 and per-class AP of a score file against a label file"


@dataclass
class Options:
    """The flags and ``key=value`` overrides, resolved into ``args.options`` by the CLI."""

    scores: str = ""
    labels: str = ""
    json: bool = False
    scores_are_probabilities: bool = False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scores", default=None, help="CSV: image,<classes…> with real-valued scores")
    parser.add_argument("--labels", default=None, help="CSV manifest with 1/-1/0/empty labels")
    parser.add_argument("--json", action="store_const", const=True, default=None, help="print one JSON object")
    parser.add_argument(
        "--scores-are-probabilities",
        dest="scores_are_probabilities",
        action="store_const",
        const=True,
        default=None,
        help="scores are probabilities (threshold 0.5) rather than logits (threshold 0)",
    )
    add_overrides(parser)


def run(args: argparse.Namespace) -> int:
    from hst.apps.evaluate import evaluate_score_files
    from hst.config import ConfigError

    options: Options = args.options
    if not options.scores or not options.labels:
        raise ConfigError("metrics needs --scores S.csv and --labels L.csv")
    result, messages = evaluate_score_files(options.scores, options.labels, options.scores_are_probabilities)
    for message in messages:
        print(f"warning: {message}", file=sys.stderr)
    if options.json:
        print(json.dumps(result.to_dict()))
        return 0
    print_metrics(result.to_dict(), with_rates=True)
    return 0
