"""``hst data stats``: what a dataset holds."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from hst.commands import add_overrides, print_lines

HELP = "images, classes, positives per image, frequent co-occurring pairs"


@dataclass
class Options:
    """The flags and ``key=value`` overrides, resolved into ``args.options`` by the CLI."""

    data: str = "synthetic"
    top: int = 10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", nargs="?", default=None, help="data spec (default: synthetic)")
    parser.add_argument("--top", type=int, default=None, help="number of co-occurring pairs to list (10)")
    add_overrides(parser)


def run(args: argparse.Namespace) -> int:
    from hst.data.spec import load_dataset
    from hst.data.stats import dataset_stats

    options: Options = args.options
    data = load_dataset(options.data)
    print(f"dataset: {data.source}")
    print_lines(dataset_stats(data, top=options.top).lines())
    return 0
