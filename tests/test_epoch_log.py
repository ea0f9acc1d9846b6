"""Training output in a log file: one plain line per epoch, no progress-bar fragments, no third-party tips."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

from hst.engine.epoch_log import epoch_line, silence_tips
from tiny_run import TINY

LINE = re.compile(r"^\[tiny\] epoch (\d+)/3  loss [0-9.]+ \(.*\)  val mAP [0-9.]+  (pseudo labels .*  )?[0-9.]+ s$")


def test_non_terminal_training_prints_one_plain_line_per_epoch(tmp_path: Path) -> None:
    # the progress bar is asked for, but stdout is a pipe (as under CI, nohup or > log): plain lines instead
    command = [sys.executable, "-m", "hst.cli", "train", *TINY, "trainer.progress_bar=true",
               f"trainer.output_dir={tmp_path}", "trainer.run_name=tiny"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    epochs = [line for line in done.stdout.splitlines() if "] epoch " in line]
    assert [LINE.match(line) is not None for line in epochs] == [True] * 3, epochs
    assert [int(LINE.match(line).group(1)) for line in epochs] == [1, 2, 3]  # type: ignore[union-attr]
    # HST decides its pseudo labels once, before the first step (they are used from pseudo_label_epoch on): the first
    # epoch's line reports them
    assert "pseudo labels positive" in epochs[0] and "negative" in epochs[0]
    both = done.stdout + done.stderr
    assert "Tip" not in both and "litlogger" not in both and "litmodels" not in both
    assert "\r" not in both and "━" not in both  # no bar redrawn into the log
    assert "test mAP" in done.stdout


def test_epoch_line_format() -> None:
    metrics = {
        "train/loss_epoch": 1.07141,
        "train/bce": 0.68278,
        "train/intra_pseudo_count": 3.0,
        "val/mAP": 53.064,
        "method/epoch_intra_pseudo_count": 12.0,
        "method/epoch_inter_pseudo_count": 40.0,
    }
    assert epoch_line("run", 2, 8, metrics, 4.123) == (
        "[run] epoch 3/8  loss 1.0714 (bce 0.6828)  val mAP 53.06  pseudo labels IST 12, CST 40  4.1 s"
    )
    assert epoch_line("run", 0, 1, {}, 0.5) == "[run] epoch 1/1  0.5 s"
    weak = {"method/pseudo_all_pos_count": 0.0, "method/withheld_count": 810.0}
    assert (
        epoch_line("sp", 0, 1, weak, 5.0)
        == "[sp] epoch 1/1  pseudo labels positive 0  weak negatives withheld 810  5.0 s"
    )


def test_tips_are_filtered() -> None:
    silence_tips()
    silence_tips()  # idempotent
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    assert sum(type(f).__name__ == "_NoTips" for f in logger.filters) == 1
    record = logger.makeRecord(logger.name, logging.INFO, __file__, 1, "💡 Tip: try installing litlogger", (), None)
    assert not logger.filter(record)
    record = logger.makeRecord(logger.name, logging.INFO, __file__, 1, "GPU available: False", (), None)
    assert logger.filter(record)
