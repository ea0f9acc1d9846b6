"""`hst benchmark`: cells, resumability, table and plot (training replaced by a fake to stay fast)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hst.apps.benchmark import BenchmarkOptions, run_benchmark
from hst.apps.results import read_results
from hst.config import ConfigError, TrainConfig


@dataclass
class FakeResult:
    test_metrics: dict[str, float]
    val_metrics: dict[str, float] = field(default_factory=dict)
    run_dir: Path = Path("nowhere")


def fake_train(calls: list[TrainConfig]):
    def train(config: TrainConfig) -> FakeResult:
        calls.append(config)
        score = 50 + 40 * config.data.proportion + config.trainer.seed + (5 if config.method.name == "hst" else 0)
        return FakeResult({"mAP": score, "OF1": 1.0, "CF1": 2.0}, {"mAP": score - 1})

    return train


def test_benchmark_runs_every_cell_once_and_resumes(tmp_path: Path) -> None:
    options = BenchmarkOptions(
        methods=["hst", "partial_bce"], proportions=[0.1, 0.5], seeds=[0, 1], out=str(tmp_path), overrides=[]
    )
    calls: list[TrainConfig] = []
    rows = run_benchmark(options, fake_train(calls), log=lambda _: None)
    assert len(calls) == 8 and len(rows) == 8
    cells = {(c.method.name, c.data.proportion, c.trainer.seed, c.data.partial_seed) for c in calls}
    assert ("hst", 0.5, 1, 1) in cells and len(cells) == 8
    assert all(c.trainer.output_dir == str(tmp_path / "runs") for c in calls)

    # A second invocation with one more seed only runs the missing cells.
    calls.clear()
    options.seeds = [0, 1, 2]
    rows = run_benchmark(options, fake_train(calls), log=lambda _: None)
    assert len(calls) == 4 and {c.trainer.seed for c in calls} == {2}
    assert len(read_results(tmp_path / "results.csv")) == 12

    table = (tmp_path / "results.md").read_text()
    assert "| method | 10% | 50% | average |" in table
    # hst at 10%: seeds 0,1,2 → 59, 60, 61 → mean 60.0 ± 1.0; average over proportions (60 + 76) / 2 = 68.0
    assert "| hst | 60.0 ± 1.0 | 76.0 ± 1.0 | 68.0 |" in table
    png = (tmp_path / "results.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_benchmark_rejects_bad_override_before_running(tmp_path: Path) -> None:
    options = BenchmarkOptions(
        methods=["hst"], proportions=[0.1], seeds=[0], out=str(tmp_path), overrides=["data.proportoin=0.3"]
    )
    calls: list[TrainConfig] = []
    with pytest.raises(ConfigError, match=r"data\.proportion"):
        run_benchmark(options, fake_train(calls), log=lambda _: None)
    assert calls == []


@pytest.mark.slow
def test_benchmark_workers_run_cells_in_processes_and_match_a_serial_run(tmp_path: Path) -> None:
    tiny = [
        "data.train=synthetic:48",
        "data.image_size=64",
        "data.batch_size=16",
        "model.feature_dim=32",
        "model.hidden_dim=16",
        "model.trainable=none",
        "trainer.epochs=1",
        "trainer.save_last=false",
        f"data.cache_dir={tmp_path / 'cache'}",
    ]
    common = dict(methods=["partial_bce"], proportions=[0.5], seeds=[0, 1], overrides=tiny)
    parallel = run_benchmark(BenchmarkOptions(out=str(tmp_path / "par"), workers=2, **common), log=lambda _: None)
    serial = run_benchmark(BenchmarkOptions(out=str(tmp_path / "ser"), workers=1, **common), log=lambda _: None)
    assert sorted(r["seed"] for r in parallel) == ["0", "1"]
    assert all(r["run_dir"].startswith("runs/") for r in parallel)  # relative to the benchmark folder
    # One thread per worker against the default threads serially: same cells, same scores up to float sums.
    by_seed = {r["seed"]: float(r["test_mAP"]) for r in serial}
    for row in parallel:
        assert abs(float(row["test_mAP"]) - by_seed[row["seed"]]) < 1.0
