"""benchmarks/gpu_check.py: its CPU dry run trains both methods end to end on a few real photos, runs the speed
script, and prints the lines the GPU run will print."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

from conftest import real_data

ROOT = Path(__file__).resolve().parents[1]
RUN_LINE = re.compile(
    r"^gpu_check run (?P<method>\w+) trainable=(?P<trainable>\w+): test mAP (?P<map>nan|\d+\.\d\d), "
    r"train (?P<rate>\d+\.\d) img/s \((?P<images>\d+) images in \d+\.\d s\), run \d+\.\d s$",
    re.MULTILINE,
)


def test_gpu_check_dry_run_prints_every_line(tmp_path: Path) -> None:
    data_dir = real_data("voc2007-train").parent
    command = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run"]
    command += ["--data-dir", str(data_dir), "--out", str(tmp_path / "runs")]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert re.search(r"^gpu_check \S+ \S+ \S+ device cpu ", out, re.MULTILINE)
    runs = {(m["method"], m["trainable"]): m for m in RUN_LINE.finditer(out)}
    assert set(runs) == {(m, t) for m in ("hst", "partial_bce") for t in ("last_stage", "all")}
    for (method, trainable), match in runs.items():
        # the dry-run split trains on the photos left after validation and test: 1 epoch of them
        assert 0 < int(match["images"]) < 48 and float(match["rate"]) > 0
        # the printed mAP is the one the run wrote (a GPU run's line is its only report)
        written = json.loads((tmp_path / "runs" / f"{method}-{trainable}" / "metrics.json").read_text())
        assert math.isfinite(written["test"]["mAP"]) and match["map"] == f"{written['test']['mAP']:.2f}"
    for name in ("ist_speedup_c5", "step_ratio_c5", "step_ratio_c6"):
        assert re.search(rf"^gpu_check speed {name} \d+\.\d+$", out, re.MULTILINE), name
    assert re.search(r"^gpu_check done in \d+ s \(budget 480 s\)$", out, re.MULTILINE)


def test_gpu_check_refuses_without_a_gpu_or_data(tmp_path: Path) -> None:
    command = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--data-dir", str(tmp_path)]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert "no CUDA device" in done.stderr or "voc2007-train/labels.csv not found" in done.stderr
