"""``hst report``: an HTML page of a run, benchmark or simulate-review folder."""

from __future__ import annotations

import argparse

HELP = "one self-contained HTML page (plus PNGs) of a run, benchmark or simulate-review folder"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run_dir", help="run folder written by hst train, an hst benchmark folder, or an hst simulate-review folder"
    )
    parser.add_argument("--out", default=None, help="output folder (default RUN_DIR/report)")
    parser.add_argument(
        "--entries",
        type=int,
        default=None,
        help="simulate-review folders: training entries (images x classes), to place the random-proportion curve "
        "(default: from rounds.json)",
    )
    parser.add_argument(
        "--start-proportion",
        dest="start_proportion",
        type=float,
        default=None,
        help="simulate-review folders: the runs' starting known proportion (default: from rounds.json, else the "
        "curve point whose model is the runs' round 0)",
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hst.apps.report import build_report

    out = Path(args.out) if args.out else None
    page = build_report(Path(args.run_dir), out, args.entries, args.start_proportion)
    print(f"wrote {page}")
    return 0
