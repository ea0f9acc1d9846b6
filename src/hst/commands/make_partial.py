"""``hst make-partial``: hide labels of a fully labelled dataset by a seeded protocol."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from hst.commands import add_overrides, print_lines

HELP = "hide labels by a seeded protocol and write a CSV manifest"


@dataclass
class Options:
    """The flags and ``key=value`` overrides, resolved into ``args.options`` by the CLI."""

    data: str = "synthetic"
    scheme: str = "entry"
    proportion: float = 0.5
    seed: int = 0
    out: str = ""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", nargs="?", default=None, help="data spec of the fully labelled dataset")
    parser.add_argument(
        "--scheme",
        default=None,
        choices=["entry", "image-count", "class", "single-positive"],
        help="entry (published protocol, default), image-count, class, single-positive",
    )
    parser.add_argument("--proportion", type=float, default=None, help="known proportion in [0, 1] (0.5)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (0)")
    parser.add_argument("--out", default=None, help="output CSV manifest")
    add_overrides(parser)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hst.config import ConfigError
    from hst.data.partial import make_partial, partial_stats
    from hst.data.readers import write_csv_manifest
    from hst.data.spec import load_dataset

    options: Options = args.options
    if not options.out:
        raise ConfigError("make-partial needs --out FILE.csv")
    data = load_dataset(options.data)
    partial = make_partial(data.labels, options.scheme, options.proportion, options.seed)
    out = Path(options.out)
    write_csv_manifest(data.with_labels(partial), out)
    print(f"wrote {out} ({options.scheme}, proportion {options.proportion}, seed {options.seed}) from {data.source}")
    print_lines(partial_stats(partial, data.class_names, full=data.labels).lines())
    return 0
