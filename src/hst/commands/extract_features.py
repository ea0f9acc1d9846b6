"""``hst extract-features``: store the frozen backbone's feature maps once, for training to reuse."""

from __future__ import annotations

import argparse

from hst.commands import add_overrides, print_lines

HELP = (
    "run the frozen backbone once over the data of a config and store its feature maps "
    "(float16, memory-mapped; reused by training with model.trainable=none)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="YAML config file (e.g. configs/coco128-benchmark.yaml)")
    add_overrides(parser, "overrides of the training config")


def run(args: argparse.Namespace) -> int:
    from hst.apps.extract_features import extract_features
    from hst.config import TrainConfig, resolve_config

    config = resolve_config(TrainConfig, args.config, args.overrides)
    print_lines(extract_features(config, progress=True))
    return 0
