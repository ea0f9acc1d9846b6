"""``hst simulate-review``: the review loop answered by a simulated annotator, per question policy."""

from __future__ import annotations

import argparse

from hst.commands import add_overrides

HELP = "measure the review loop: a simulated annotator answers from the full labels, in rounds, per question policy"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="training config with a frozen backbone (YAML)")
    parser.add_argument(
        "--policies",
        default=None,
        help="comma-separated question policies: random, uncertain, positive, rarest, image, mix "
        "(default: the default policy and random)",
    )
    parser.add_argument("--seeds", default=None, help="comma-separated partial-label seeds (default: the config's)")
    parser.add_argument(
        "--budget", type=float, default=0.02, help="questions, as a fraction of all training entries (0.02)"
    )
    parser.add_argument("--round-size", dest="round_size", type=int, default=130, help="questions per round (130)")
    parser.add_argument(
        "--precision", type=float, default=0.9, help="precision the completed manifest's fills are calibrated to (0.9)"
    )
    parser.add_argument(
        "--curve",
        default=None,
        help="comma-separated random known proportions to fit the same model at, e.g. 0.1,0.12,0.15,0.2,0.3",
    )
    parser.add_argument(
        "--skip-filled",
        dest="skip_filled",
        action="store_true",
        help="ask only entries the calibrated fills leave unknown",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: fastest for the small probe)")
    parser.add_argument("--out", default="simulate-review", help="output folder (simulate-review)")
    add_overrides(parser, "overrides of the training config, e.g. data.split_seed=2 data.proportion=0.1")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hst.apps.simulate_review import SimulateReviewOptions, simulate_review
    from hst.commands import print_lines
    from hst.config import TrainConfig, resolve_config
    from hst.methods.question_policy import DEFAULT_POLICY

    config = resolve_config(TrainConfig, args.config, args.overrides)
    default = [DEFAULT_POLICY, "random"] if DEFAULT_POLICY != "random" else ["random"]
    options = SimulateReviewOptions(
        policies=args.policies.split(",") if args.policies else default,
        seeds=[int(s) for s in args.seeds.split(",")] if args.seeds else [config.data.partial_seed],
        budget=args.budget,
        round_size=args.round_size,
        precision=args.precision,
        curve=[float(p) for p in args.curve.split(",")] if args.curve else [],
        skip_filled=args.skip_filled,
        threads=args.threads,
    )
    print_lines(simulate_review(config, options, Path(args.out), progress=True))
    return 0
