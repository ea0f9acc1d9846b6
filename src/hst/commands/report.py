"""``hst report``: an HTML page of a run or benchmark folder."""

from __future__ import annotations

import argparse

HELP = "one self-contained HTML page (plus PNGs) of a run or benchmark folder"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="run folder written by hst train, or an hst benchmark folder")
    parser.add_argument("--out", default=None, help="output folder (default RUN_DIR/report)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hst.apps.report import build_report

    page = build_report(Path(args.run_dir), Path(args.out) if args.out else None)
    print(f"wrote {page}")
    return 0
