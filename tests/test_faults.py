"""Faults a long run meets: a full disk or file-size limit mid-write, two writers on one folder, a benchmark
worker killed mid-cell, and the data-parallel / resume corner cases. Every test is bounded in time."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from fault_jobs import job
from hst.apps.benchmark import FAILURES_FILE, BenchmarkError, BenchmarkOptions, run_benchmark
from hst.apps.benchmark_workers import KILL_CELL_ENV
from hst.apps.results import FIELDS, read_results
from hst.config import ConfigError, DataConfig, TrainConfig, resolve_config, save_config
from hst.data.splits import prepare_splits
from hst.engine.datamodule import PartialLabelDataModule, last_batch_size
from hst.engine.train import resume_training
from hst.io import OWNER_NAME, FolderBusyError, WriteError, atomic_write, folder_lock, write_text_atomic
from tiny_run import TINY

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _env(**extra: str) -> dict[str, str]:
    # The subprocesses import this checkout's package, whether or not it is installed.
    path = os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **extra}


# ---------------------------------------------------------------- full disk / file-size limit mid-write

LIMITED_WRITE = r"""
import json, resource, signal, sys
from pathlib import Path

kind, folder, limit = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
from hst.io import WriteError
import numpy as np

if kind == "checkpoint":
    import torch
    from hst.engine.checkpoint_io import AtomicCheckpointIO
    payload = {"state_dict": {"w": torch.zeros(1 << 18)}, "epoch": 2}
    write = lambda: AtomicCheckpointIO().save_checkpoint(payload, folder / "checkpoints" / "last.ckpt")
elif kind == "results":
    from dataclasses import dataclass, field
    from hst.apps.benchmark import BenchmarkOptions, run_benchmark

    @dataclass
    class Result:
        test_metrics: dict = field(default_factory=lambda: {"mAP": 1.0, "OF1": 2.0, "CF1": 3.0})
        val_metrics: dict = field(default_factory=lambda: {"mAP": 1.0})
        run_dir: Path = Path("nowhere")

    options = BenchmarkOptions(methods=["hst"], proportions=[0.1, 0.2, 0.3, 0.4, 0.5], seeds=[0], out=str(folder))
    write = lambda: run_benchmark(options, lambda config: Result(), log=lambda _: None)
elif kind == "manifest":
    from hst.data.base import MultiLabelData
    from hst.data.readers import write_csv_manifest
    n = 5000
    data = MultiLabelData([f"img{i}.jpg" for i in range(n)], np.ones((n, 20), np.int8), [f"c{i}" for i in range(20)],
                          image_paths=[folder / f"img{i}.jpg" for i in range(n)], source="big")
    write = lambda: write_csv_manifest(data, folder / "completed.csv")
elif kind == "metrics":
    from hst.engine.decision_thresholds import write_json
    write = lambda: write_json(folder / "metrics.json", {"test": {f"AP_{i}": 0.5 for i in range(20000)}})

# A process over its file-size limit gets SIGXFSZ (which kills it); ignored, the write fails with EFBIG.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    write()
except WriteError as error:
    print(json.dumps({"error": str(error), "target": str(error.target)}))
    sys.exit(5)
print("written")
"""


def _previous_files(kind: str, folder: Path) -> Path:
    """Write the file the limited write will try to replace, as a finished earlier run left it."""
    if kind == "checkpoint":
        import torch

        from hst.engine.checkpoint_io import AtomicCheckpointIO

        io = AtomicCheckpointIO()
        io.save_checkpoint({"state_dict": {"w": torch.ones(4)}, "epoch": 0}, folder / "checkpoints" / "last.ckpt")
        io.save_checkpoint({"state_dict": {"w": torch.ones(4)}, "epoch": 1}, folder / "checkpoints" / "last.ckpt")
        return folder / "checkpoints" / "last.ckpt"
    if kind == "results":
        # Earlier cells (of another method) make the file larger than the lock's owner note.
        rows = [
            {
                "method": method,
                "proportion": "0.1",
                "seed": str(seed),
                "test_mAP": "1.0000",
                "test_OF1": "2.0000",
                "test_CF1": "3.0000",
                "val_mAP": "1.0000",
                "seconds": "0.0",
                "run_dir": "nowhere",
                "chosen": "",
            }
            for method, seed in [("hst", 0), *(("old", seed) for seed in range(20))]
        ]
        with atomic_write(folder / "results.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        return folder / "results.csv"
    name = {"manifest": "completed.csv", "metrics": "metrics.json"}[kind]
    write_text_atomic(folder / name, "the previous file\n")
    return folder / name


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE and SIGXFSZ are POSIX")
@pytest.mark.parametrize("kind", ["checkpoint", "results", "manifest", "metrics"])
def test_file_size_limit_mid_write_keeps_the_previous_file(tmp_path: Path, kind: str) -> None:
    previous = _previous_files(kind, tmp_path)
    before = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    # Room for the small files (the previous one, the folder lock's owner note), not for the new big file.
    # results.csv: not even one more row (about 60 bytes) fits.
    limit = max(len(data) for data in before.values()) + (30 if kind == "results" else 4096)
    done = subprocess.run(
        [sys.executable, "-c", LIMITED_WRITE, kind, str(tmp_path), str(limit)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 5, (done.stdout, done.stderr[-3000:])
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert "file size limit reached" in report["error"] and str(tmp_path) in report["target"]
    assert "previous file (if any) is unchanged" in report["error"]
    # The previous file (and for checkpoints its fallback) is byte for byte what it was; no temporary file is left.
    after = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    after.pop(Path(".hst.lock"), None)
    assert after == before
    assert previous.read_bytes() == before[previous.relative_to(tmp_path)]


def test_write_error_names_target_and_cause_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")

    class DiskFullError(OSError):
        pass

    with pytest.raises(WriteError) as info, atomic_write(target) as handle:
        handle.write("new")
        raise DiskFullError(28, "No space left on device")
    assert str(info.value).startswith(f"cannot write {target}: disk full (ENOSPC)")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
    # An error that is not about writing passes through unchanged.
    with pytest.raises(KeyError), atomic_write(target) as handle:
        raise KeyError("not an I/O problem")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_two_writers_use_distinct_temporary_names(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    with atomic_write(target) as first, atomic_write(target) as second:
        assert first.name != second.name  # interleaved writers no longer share one fixed temporary file
        first.write("1")
        second.write("2")
    assert target.read_text() in {"1", "2"}


# ---------------------------------------------------------------- one writer per folder

HOLD_LOCK = r"""
import sys, time
from hst.io import folder_lock
lock = folder_lock(sys.argv[1], "run")  # kept referenced: a collected lock is released
lock.acquire()
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


def _holder(folder: Path, seconds: float = 60) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(folder), str(seconds)], env=_env(), stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


@dataclass
class _FakeResult:
    test_metrics: dict[str, float] = field(default_factory=lambda: {"mAP": 50.0, "OF1": 1.0, "CF1": 1.0})
    val_metrics: dict[str, float] = field(default_factory=lambda: {"mAP": 40.0})
    run_dir: Path = Path("nowhere")


def test_second_benchmark_writer_fails_at_once_and_a_dead_holder_is_taken_over(tmp_path: Path) -> None:
    options = BenchmarkOptions(methods=["hst"], proportions=[0.5], seeds=[0], out=str(tmp_path / "bench"))
    holder = _holder(tmp_path / "bench")
    try:
        started = time.perf_counter()
        with pytest.raises(FolderBusyError) as info:
            run_benchmark(options, lambda config: _FakeResult(), log=lambda _: None)
        assert time.perf_counter() - started < 5
        assert f"pid {holder.pid}" in str(info.value) and str(tmp_path / "bench") in str(info.value)
        assert not (tmp_path / "bench" / "results.csv").exists()
    finally:
        holder.kill()  # SIGKILL: the holder cannot clean up; the OS drops its lock
        holder.wait(30)
    assert json.loads((tmp_path / "bench" / OWNER_NAME).read_text())["pid"] == holder.pid  # stale note left behind
    rows = run_benchmark(options, lambda config: _FakeResult(), log=lambda _: None)
    assert len(rows) == 1 and not (tmp_path / "bench" / OWNER_NAME).exists()


RESUME = [sys.executable, "-m", "hst.cli", "train", "--resume"]


@pytest.mark.slow
def test_two_concurrent_train_resume_on_one_run_one_refuses(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    save_config(resolve_config(TrainConfig, None, [*TINY, "trainer.epochs=200"]), run_dir / "config.yaml")
    first = subprocess.Popen([*RESUME, str(run_dir)], env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not (run_dir / OWNER_NAME).exists():  # the first one holds the run once its owner note is written
            assert first.poll() is None and time.time() < deadline, "the first hst train --resume did not start"
            time.sleep(0.2)
        started = time.perf_counter()
        second = subprocess.run([*RESUME, str(run_dir)], env=_env(), capture_output=True, text=True, timeout=120)
        elapsed = time.perf_counter() - started
        assert second.returncode == 4, second.stderr[-3000:]
        assert f"pid {first.pid}" in second.stderr and f"{run_dir} is in use" in second.stderr
        assert "train --resume" in second.stderr  # the holder's command
        assert elapsed < 60  # refused at once: no data read, nothing trained (the time is Python's start-up)
        assert first.poll() is None  # the first one goes on
    finally:
        first.kill()
        first.wait(30)
    with folder_lock(run_dir, "run"):  # the killed holder's lock is taken over
        pass


def test_resume_with_loader_workers_is_refused_plainly(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    save_config(resolve_config(TrainConfig, None, TINY), run_dir / "config.yaml")
    with pytest.raises(ConfigError, match=r"data\.num_workers=2 is refused.*Resume with data\.num_workers=0"):
        resume_training(run_dir, ["data.num_workers=2"])


# ---------------------------------------------------------------- data parallelism


def test_drop_last_is_decided_from_each_ranks_share() -> None:
    # 34 images: whole set 34 % 16 = 2 (kept), but 2 ranks get 17 each: 17 % 16 = 1 image, which BatchNorm refuses.
    assert last_batch_size(34, 16, 1) == 2 and last_batch_size(34, 16, 2) == 1
    assert last_batch_size(33, 16, 2) == 1  # 17 per rank after the sampler's padding
    assert last_batch_size(32, 16, 2) == 16 and last_batch_size(5, 16, 2) == 3
    config = DataConfig(train="synthetic:48?size=32", val_fraction=0.15, test_fraction=0.15, image_size=32)
    splits = prepare_splits(config)
    share = -(-len(splits.train) // 2)
    config.batch_size = share - 1  # leaves one image per rank in the last batch, but not in the whole set
    assert len(splits.train) % config.batch_size != 1
    module = PartialLabelDataModule(splits, config, (0.5,) * 3, (0.25,) * 3)
    assert module.train_dataloader().drop_last is False
    module.trainer = SimpleNamespace(world_size=2)  # type: ignore[assignment]
    assert module.train_dataloader().drop_last is True


# ---------------------------------------------------------------- a benchmark worker killed mid-cell

TINY_BENCH = [
    "data.train=synthetic:48",
    "data.image_size=64",
    "data.batch_size=16",
    "model.feature_dim=32",
    "model.hidden_dim=16",
    "model.trainable=none",
    "trainer.epochs=1",
    "trainer.save_last=false",
]


@pytest.mark.slow
def test_killed_benchmark_worker_costs_only_its_cell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "bench"
    options = BenchmarkOptions(
        methods=["partial_bce"],
        proportions=[0.5],
        seeds=[0, 1],
        out=str(out),
        workers=2,
        overrides=[*TINY_BENCH, f"data.cache_dir={tmp_path / 'cache'}"],
    )
    monkeypatch.setenv(KILL_CELL_ENV, "partial_bce-p0.5-s1")  # that cell's worker SIGKILLs itself at step 1
    lines: list[str] = []
    with pytest.raises(BenchmarkError, match=r"1 of 2 cells failed \(partial_bce p=0.5 seed=1\)"):
        run_benchmark(options, log=lines.append)
    assert any("seed=1: FAILED: worker process killed by SIGKILL" in line for line in lines), lines
    rows = read_results(out / "results.csv")
    assert [(r["method"], r["proportion"], r["seed"]) for r in rows] == [("partial_bce", "0.5", "0")]
    assert all(set(r) == set(FIELDS) and None not in r.values() for r in rows)  # whole rows only
    with (out / FAILURES_FILE).open(newline="") as handle:
        failures = list(csv.DictReader(handle))
    assert [(f["seed"], f["reason"].split(" (")[0]) for f in failures] == [("1", "worker process killed by SIGKILL")]
    assert (out / "results.md").is_file()  # the table of the finished cells is written anyway

    monkeypatch.delenv(KILL_CELL_ENV)
    lines.clear()
    rows = run_benchmark(options, log=lines.append)
    assert lines[0] == "2 cells, 1 already done, 1 to run"
    assert sorted(r["seed"] for r in rows) == ["0", "1"]
    on_disk = read_results(out / "results.csv")
    keys = [(r["method"], r["proportion"], r["seed"]) for r in on_disk]
    assert len(keys) == len(set(keys)) == 2 and all(None not in r.values() for r in on_disk)
    assert not (out / FAILURES_FILE).exists()
    assert np.isfinite([float(r["test_mAP"]) for r in on_disk]).all()


def test_killed_worker_is_recorded_and_the_others_finish() -> None:
    """The process pool itself, without training: one job dies by SIGKILL, one raises, two finish."""
    from hst.apps.benchmark_workers import run_cells

    done: dict[str, dict[str, str]] = {}
    failed: dict[str, str] = {}
    failures = run_cells(
        [(name, name, "") for name in ("ok-1", "kill", "raise", "ok-2")],
        job,
        workers=2,
        threads=1,
        on_done=lambda key, row: done.__setitem__(key, row),
        on_failed=lambda failure: failed.__setitem__(failure.key, failure.reason),
    )
    assert done == {"ok-1": {"job": "ok-1"}, "ok-2": {"job": "ok-2"}}
    assert len(failures) == 2 and failed["kill"].startswith("worker process killed by SIGKILL")
    assert failed["raise"].startswith("ValueError: cell raise failed")
