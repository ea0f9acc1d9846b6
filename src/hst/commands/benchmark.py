"""``hst benchmark``: methods x known proportions x seeds under one protocol."""

from __future__ import annotations

import argparse

from hst.commands import add_overrides

HELP = "methods x known proportions x seeds under one protocol (resumable)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="base training config (YAML)")
    parser.add_argument("--methods", default=None, help="comma-separated (default hst,partial_bce,sst,assume_negative)")
    parser.add_argument("--proportions", default=None, help="comma-separated known proportions (default 0.1,...,0.9)")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default 0)")
    parser.add_argument("--out", default="benchmark", help="output folder (results.csv/.md/.png, runs/)")
    parser.add_argument(
        "--tune",
        default=None,
        help="per-method grid chosen on validation mAP, e.g. "
        "'linear_assume_negative:optim.lr=0.003,0.03;optim.weight_decay=0,0.001' "
        "(several methods joined by '+'; 'all:...' gives every method the same grid)",
    )
    parser.add_argument(
        "--tune-seeds",
        default=None,
        help="seeds whose cells train the whole grid; the other seeds reuse the point chosen there "
        "for the same method and proportion (default: every cell tunes)",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="cells trained at once in separate processes, CPU threads shared out (1)"
    )
    parser.add_argument(
        "--allow-diagnostics",
        action="store_true",
        help="train diagnostic options (method.pseudo_label_oracle other than none, trainer.select_on=test), "
        "refused otherwise; their rows are marked [diagnostic: ...] in results.csv and results.md",
    )
    add_overrides(parser, "overrides of the training config")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hst.apps.benchmark import options_from_text, run_benchmark

    options = options_from_text(
        args.config,
        args.out,
        list(args.overrides),
        args.methods,
        args.proportions,
        args.seeds,
        args.tune,
        args.tune_seeds,
        args.workers,
        args.allow_diagnostics,
    )
    run_benchmark(options)
    out = Path(options.out)
    print((out / "results.md").read_text())
    print(f"wrote {out / 'results.csv'}, {out / 'results.md'}, {out / 'results.png'}")
    return 0
