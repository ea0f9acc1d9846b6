"""`hst benchmark`: cells, resumability, table and plot, diagnostic options, tuning on validation (training replaced
by a fake to stay fast)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hst.apps.benchmark import BenchmarkOptions, options_from_text, run_benchmark
from hst.apps.results import read_results
from hst.cli import main
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


# ---- diagnostic options: refused unless asked for, marked when run ----------------------------------------------

REFUSED = [
    ({"overrides": ["method.pseudo_label_oracle=hidden"]}, r"method\.pseudo_label_oracle=hidden \(from --config or"),
    ({"overrides": ["trainer.select_on=test"]}, r"trainer\.select_on=test \(from --config or"),
    ({"tune": "hst:method.pseudo_label_oracle=none,clean"}, r"method\.pseudo_label_oracle=clean \(from the --tune"),
    ({"tune": "all:trainer.select_on=val,test"}, r"trainer\.select_on=test \(from the --tune"),
    ({"config": "trainer:\n  select_on: test\n"}, r"trainer\.select_on=test \(from --config or"),
]


@pytest.mark.parametrize(
    ("given", "message"), REFUSED, ids=["oracle", "select_on", "tune-oracle", "tune-select", "yaml"]
)
def test_benchmark_refuses_diagnostic_options_without_the_flag(tmp_path: Path, given: dict, message: str) -> None:
    config = None
    if "config" in given:
        config = tmp_path / "diagnostic.yaml"
        config.write_text(given["config"])
    options = options_from_text(
        str(config) if config else None,
        str(tmp_path / "bench"),
        list(given.get("overrides", [])),
        methods="hst,partial_bce",
        proportions="0.1",
        seeds="0",
        tune=given.get("tune"),
    )
    calls: list[TrainConfig] = []
    with pytest.raises(ConfigError, match=message) as refused:
        run_benchmark(options, fake_train(calls), log=lambda _: None)
    assert "--allow-diagnostics" in str(refused.value)
    assert calls == [] and not (tmp_path / "bench" / "results.csv").exists()


def test_benchmark_cli_refuses_a_diagnostic_override(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["benchmark", "--methods", "hst", "--proportions", "0.1", "--out", str(tmp_path), "trainer.select_on=test"]
    assert main(argv) == 2
    assert "trainer.select_on=test" in capsys.readouterr().err


def test_benchmark_marks_diagnostic_rows_with_the_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[TrainConfig] = []
    real_run = run_benchmark
    monkeypatch.setattr(
        "hst.apps.benchmark.run_benchmark", lambda options: real_run(options, fake_train(calls), log=lambda _: None)
    )
    tune = "hst:method.pseudo_label_oracle=hidden+partial_bce:trainer.select_on=val,test"
    common = ["--proportions", "0.1,0.5", "--seeds", "0", "--out", str(tmp_path)]
    argv = ["benchmark", "--methods", "hst,partial_bce,assume_negative", *common, "--tune", tune]
    assert main([*argv, "--allow-diagnostics"]) == 0
    assert len(calls) == 2 + 4 + 2  # partial_bce trains both points of its grid in each of its 2 cells
    marks = {(r["method"], r["proportion"]): r["diagnostic"] for r in read_results(tmp_path / "results.csv")}
    assert set(marks.values()) == {"pseudo_label_oracle=hidden", "select_on=test", ""}
    assert marks[("hst", "0.1")] == "pseudo_label_oracle=hidden" and marks[("assume_negative", "0.5")] == ""
    # Every point of partial_bce's grid counts: the choice between them compared test scores.
    assert marks[("partial_bce", "0.1")] == "select_on=test"
    printed = capsys.readouterr().out
    for text in (printed, (tmp_path / "results.md").read_text()):
        assert "| hst [diagnostic: pseudo_label_oracle=hidden] | 59.0 | 75.0 | 67.0 |" in text
        assert "| partial_bce [diagnostic: select_on=test] | 54.0 | 70.0 | 62.0 |" in text
        assert "| assume_negative | 54.0 | 70.0 | 62.0 |" in text
        assert "Lines marked [diagnostic: …]" in text

    # Resumed without the flag or the options: honest cells of a marked method get their own line.
    calls.clear()
    assert (
        main(["benchmark", "--methods", "hst", "--proportions", "0.1,0.5", "--seeds", "0,1", "--out", str(tmp_path)])
        == 0
    )
    assert len(calls) == 2 and all(c.method.pseudo_label_oracle == "none" for c in calls)
    table = (tmp_path / "results.md").read_text()
    assert "| hst [diagnostic: pseudo_label_oracle=hidden] | 59.0 | 75.0 | 67.0 |" in table
    assert "| hst | 60.0 | 76.0 | 68.0 |" in table


# ---- --tune chooses on validation, never on test ------------------------------------------------------------------

# Per weight decay: (validation mAP per epoch, test mAP). Point B (0.1, first in the grid) is best on test and
# on the last epoch's validation score; point A (0.01) is best on its best epoch's validation score.
DISAGREE = {"0.1": ([70.0, 70.0], 80.0), "0.01": ([75.0, 60.0], 60.0)}


def disagreeing_train(calls: list[TrainConfig]):
    def train(config: TrainConfig) -> FakeResult:
        calls.append(config)
        val, test = DISAGREE[f"{config.optim.weight_decay:g}"]
        run_dir = Path(config.trainer.output_dir) / config.trainer.run_name
        (run_dir / "csv").mkdir(parents=True)
        lines = ["epoch,val/mAP", *(f"{epoch},{value}" for epoch, value in enumerate(val))]
        (run_dir / "csv" / "metrics.csv").write_text("\n".join(lines) + "\n")
        # val_metrics is the last epoch's, as the engine returns it; the run kept (and tested) its best epoch.
        return FakeResult({"mAP": test, "OF1": 1.0, "CF1": 2.0}, {"mAP": val[-1]}, run_dir)

    return train


def test_tune_chooses_the_point_best_on_validation_and_reports_its_test_map(tmp_path: Path) -> None:
    options = options_from_text(
        None, str(tmp_path), [], "hst", "0.3", "0,1", tune="hst:optim.weight_decay=0.1,0.01", tune_seeds="0"
    )
    calls: list[TrainConfig] = []
    rows = run_benchmark(options, disagreeing_train(calls), log=lambda _: None)
    by_seed = {r["seed"]: r for r in rows}
    assert by_seed["0"]["chosen"] == "optim.weight_decay=0.01"  # point A, not B (best on test)
    assert (by_seed["0"]["test_mAP"], by_seed["0"]["val_mAP"]) == ("60.0000", "75.0000")
    # Seed 1 trains only the point seed 0 chose.
    assert [c.optim.weight_decay for c in calls] == [0.1, 0.01, 0.01]
    assert by_seed["1"]["chosen"] == "optim.weight_decay=0.01" and by_seed["1"]["test_mAP"] == "60.0000"
    assert "| hst | 60.0 ± 0.0 | 60.0 |" in (tmp_path / "results.md").read_text()
