"""``hst train``: train a method, or resume an interrupted run."""

from __future__ import annotations

import argparse

from hst.commands import add_overrides

HELP = "train a method (HST by default) and test the checkpoint chosen on validation"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="YAML config file (e.g. configs/paper/voc2007.yaml)")
    parser.add_argument(
        "--resume",
        default=None,
        metavar="RUN_DIR",
        help="continue an interrupted run exactly from its last checkpoint (same folder, same "
        "config; overrides such as trainer.epochs=30 extend it)",
    )
    add_overrides(parser, "e.g. data.proportion=0.5 method.name=partial_bce trainer.epochs=20")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hst.config import ConfigError, TrainConfig, resolve_config
    from hst.engine.train import resume_training, train

    if args.resume:
        if args.config:
            raise ConfigError("--resume continues a run with its own saved config.yaml; leave out --config")
        result = resume_training(Path(args.resume), args.overrides)
    else:
        result = train(resolve_config(TrainConfig, args.config, args.overrides))
    if result.rank != 0:  # under DDP only the main process reports
        return 0
    print()
    print(f"run folder: {result.run_dir}")
    for line in result.summary_lines:
        print(line)
    test = result.test_metrics
    if test:
        print(f"test mAP {test['mAP']:.2f}  OF1 {test['OF1']:.2f}  CF1 {test['CF1']:.2f}")
    return 0
