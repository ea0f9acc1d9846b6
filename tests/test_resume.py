"""Fault tolerance: atomic checkpoints, a fallback for a damaged one, and exact resume after SIGKILL."""

from __future__ import annotations

import csv
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from hst.checkpoint import LAST_CHECKPOINT, PREVIOUS_CHECKPOINT, plain, resume_checkpoint
from hst.config import MethodConfig, TrainConfig, resolve_config
from hst.engine.checkpoint_io import AtomicCheckpointIO
from hst.engine.resume import rng_state, set_rng_state
from hst.engine.train import KILL_AT_STEP_ENV, RunResult, resume_training, train
from hst.methods import create
from hst.methods.base import StepContext
from hst.models.network import NetworkOutput
from tiny_run import TINY

# float sums depend on the thread count, and tiny tensors gain nothing from threads
pytestmark = pytest.mark.usefixtures("one_thread")

KILL_STEP = 7
"""43 training images in batches of 16: 3 steps per epoch, so step 7 is inside epoch 2, after pseudo labelling
(from epoch 1) and the epoch-2 prototypes have started."""


def _payload(value: float) -> dict[str, Any]:
    return {
        "hst_config": {},
        "hst_class_names": ["a"],
        "state_dict": {"w": torch.tensor([value])},
        "loops": {},
        "optimizer_states": [],
        "epoch": int(value),
        "global_step": int(value),
    }


def test_atomic_checkpoints_keep_the_previous_last_and_no_temp_files(tmp_path: Path) -> None:
    io = AtomicCheckpointIO()
    last = tmp_path / "checkpoints" / LAST_CHECKPOINT
    io.save_checkpoint(_payload(1.0), last)
    assert not (last.parent / PREVIOUS_CHECKPOINT).exists()
    io.save_checkpoint(_payload(2.0), last)
    io.save_checkpoint(_payload(3.0), last.parent / "best.ckpt")
    assert sorted(p.name for p in last.parent.iterdir()) == ["best.ckpt", LAST_CHECKPOINT, PREVIOUS_CHECKPOINT]
    assert io.load_checkpoint(last)["state_dict"]["w"].item() == 2.0
    assert io.load_checkpoint(last.parent / PREVIOUS_CHECKPOINT)["state_dict"]["w"].item() == 1.0


def test_a_write_that_dies_midway_leaves_the_old_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    io = AtomicCheckpointIO()
    last = tmp_path / LAST_CHECKPOINT
    io.save_checkpoint(_payload(1.0), last)

    def dies_midway(obj: object, handle: Any) -> None:
        handle.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint(_payload(2.0), last)
    assert [p.name for p in tmp_path.iterdir()] == [LAST_CHECKPOINT]  # no temp file, no rotation
    assert torch.load(last, weights_only=True)["state_dict"]["w"].item() == 1.0


def test_resume_checkpoint_skips_a_torn_last_checkpoint(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "checkpoints"
    io = AtomicCheckpointIO()
    io.save_checkpoint(_payload(1.0), folder / LAST_CHECKPOINT)
    io.save_checkpoint(_payload(2.0), folder / LAST_CHECKPOINT)
    assert resume_checkpoint(tmp_path) == folder / LAST_CHECKPOINT

    data = (folder / LAST_CHECKPOINT).read_bytes()
    (folder / LAST_CHECKPOINT).write_bytes(data[: len(data) // 2])  # a torn write
    with caplog.at_level(logging.WARNING, logger="hst.checkpoint"):
        assert resume_checkpoint(tmp_path) == folder / PREVIOUS_CHECKPOINT
    assert "cannot resume from" in caplog.text and LAST_CHECKPOINT in caplog.text

    # A checkpoint without training state (an inference copy) is no resume point either.
    inference_only = {key: value for key, value in _payload(1.0).items() if key != "optimizer_states"}
    torch.save(inference_only, folder / PREVIOUS_CHECKPOINT)
    assert resume_checkpoint(tmp_path) is None
    assert resume_checkpoint(tmp_path / "missing") is None


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(3)
    np.random.seed(4)
    random.seed(5)
    np.random.standard_normal()  # leaves a cached Gaussian in numpy's legacy state
    path = tmp_path / "rng.pt"
    torch.save(plain(rng_state()), path)
    expected = (torch.rand(4), np.random.standard_normal(3), random.random())
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    set_rng_state(torch.load(path, weights_only=True))
    again = (torch.rand(4), np.random.standard_normal(3), random.random())
    assert torch.equal(expected[0], again[0])
    assert np.array_equal(expected[1], again[1])
    assert expected[2] == again[2]


def _output(semantic: torch.Tensor) -> NetworkOutput:
    return NetworkOutput(logits=semantic.sum(2), semantic=semantic)


def test_sst_memory_bank_survives_a_checkpoint_round_trip(tmp_path: Path) -> None:
    config = MethodConfig(name="sst", use_ist=False, sst_bank_size=3, pseudo_label_epoch=0, sst_threshold_min=0.0)
    generator = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(4, 5, 6, generator=generator), torch.randint(-1, 2, (4, 5), generator=generator).to(torch.int8))
        for _ in range(4)
    ]
    original = create("sst", config, 5, 6, 100)
    for step, (semantic, labels) in enumerate(batches[:2]):
        original.training_loss(_output(semantic), labels, StepContext(1, step, 4, torch.arange(4)))
    path = tmp_path / "state.pt"
    torch.save(plain(original.extra_state()), path)
    restored = create("sst", config, 5, 6, 100)
    restored.load_extra_state(torch.load(path, weights_only=True))
    for step, (semantic, labels) in enumerate(batches[2:], start=2):
        ctx = StepContext(1, step, 4, torch.arange(4))
        a = original.training_loss(_output(semantic), labels, ctx)
        b = restored.training_loss(_output(semantic), labels, ctx)
        assert torch.equal(a.loss, b.loss)
    assert original.bank is not None and restored.bank is not None
    assert torch.equal(original.bank.features, restored.bank.features)
    assert original.bank.count.tolist() == restored.bank.count.tolist()


# ---------------------------------------------------------------- kill and resume a real run


def _config(output_dir: Path, name: str) -> TrainConfig:
    return resolve_config(TrainConfig, None, [*TINY, f"trainer.output_dir={output_dir}", f"trainer.run_name={name}"])


KILLED_SCRIPT = """
import json, sys
from hst.config import resolve_config
from hst.config import TrainConfig
from hst.engine.train import train
train(resolve_config(TrainConfig, None, json.loads(sys.argv[1])))
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunResult, Path]:
    """An uninterrupted run, and the folder of the same run SIGKILLed at step KILL_STEP."""
    root = tmp_path_factory.mktemp("resume")
    reference = train(_config(root, "reference"))
    overrides = [*TINY, f"trainer.output_dir={root}", "trainer.run_name=killed"]
    env = {**os.environ, KILL_AT_STEP_ENV: str(KILL_STEP), "OMP_NUM_THREADS": "1"}
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_SCRIPT, json.dumps(overrides)], env=env, capture_output=True, text=True
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    return reference, root / "killed"


def _copy_run(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def _assert_same_run(reference: RunResult, resumed: RunResult) -> None:
    a = torch.load(reference.run_dir / "checkpoints" / LAST_CHECKPOINT, weights_only=True)
    b = torch.load(resumed.run_dir / "checkpoints" / LAST_CHECKPOINT, weights_only=True)
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"]) == (2, 9)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    different = [key for key in a["state_dict"] if not torch.equal(a["state_dict"][key], b["state_dict"][key])]
    assert not different
    optimizer_a, optimizer_b = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert optimizer_a.keys() == optimizer_b.keys()
    for index, state in optimizer_a.items():
        assert all(torch.equal(value, optimizer_b[index][key]) for key, value in state.items())
    assert a["lr_schedulers"] == b["lr_schedulers"]
    protos_a, protos_b = a["hst_method_state"]["prototypes"], b["hst_method_state"]["prototypes"]
    assert torch.equal(protos_a["centers"], protos_b["centers"]) and torch.equal(protos_a["valid"], protos_b["valid"])
    assert a["hst_thresholds"] == b["hst_thresholds"]
    assert resumed.test_metrics == reference.test_metrics
    assert resumed.val_metrics == reference.val_metrics
    metrics_a = json.loads((reference.run_dir / "metrics.json").read_text())
    assert json.loads((resumed.run_dir / "metrics.json").read_text()) == metrics_a

    # The CSV log reads as if the run had never stopped: same rows, no repeated epoch.
    def rows(run: RunResult) -> list[dict[str, str]]:
        return list(csv.DictReader((run.run_dir / "csv" / "metrics.csv").open()))

    assert rows(resumed) == rows(reference)


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights_and_metrics(runs: tuple[RunResult, Path], tmp_path: Path) -> None:
    reference, killed = runs
    run_dir = _copy_run(killed, tmp_path / "killed")
    saved = torch.load(run_dir / "checkpoints" / LAST_CHECKPOINT, weights_only=True)
    # The kill came in the middle of epoch 2; the newest checkpoint is the end of epoch 1.
    assert (saved["epoch"], saved["global_step"]) == (1, 6)
    assert saved["hst_method_state"]["prototypes"] is not None and "hst_resume" in saved
    assert not (run_dir / "metrics.json").exists()

    resumed = resume_training(run_dir)
    assert resumed.run_dir == run_dir
    assert "resumed from checkpoints/last.ckpt (end of epoch 1)" in resumed.summary_lines
    _assert_same_run(reference, resumed)


@pytest.mark.slow
def test_torn_last_checkpoint_resumes_from_the_previous_one(
    runs: tuple[RunResult, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reference, killed = runs
    run_dir = _copy_run(killed, tmp_path / "torn")
    last = run_dir / "checkpoints" / LAST_CHECKPOINT
    torn = last.read_bytes()[:4096]
    last.write_bytes(torn)
    with caplog.at_level(logging.WARNING, logger="hst.checkpoint"):
        resumed = resume_training(run_dir)
    assert f"cannot resume from {last}" in caplog.text
    # The damaged file is set aside, so that a later save never rotates it into the fallback.
    assert (run_dir / "checkpoints" / "last.ckpt.damaged").read_bytes() == torn
    # The previous checkpoint is the end of epoch 0: two epochs are repeated, still to the same result.
    assert "resumed from checkpoints/last.ckpt.prev (end of epoch 0)" in resumed.summary_lines
    _assert_same_run(reference, resumed)
