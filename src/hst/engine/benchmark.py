"""``hst benchmark``: methods × known proportions × seeds under one protocol, resumable.

Writes ``results.csv`` (one row per finished cell), ``results.md`` (rows = methods, columns = proportions and
their average, mean ± std over seeds: the form of the paper's Table 1) and ``results.png`` (test mAP against
the known proportion, one line per method, seed spread shaded).
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hst.config import resolve_config
from hst.engine.config import TrainConfig

FIELDS = ["method", "proportion", "seed", "test_mAP", "test_OF1", "test_CF1", "val_mAP", "seconds", "run_dir"]
DEFAULT_PROPORTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class BenchmarkOptions:
    config: str | None = None
    methods: list[str] = field(default_factory=lambda: ["hst", "partial_bce", "sst", "assume_negative"])
    proportions: list[float] = field(default_factory=lambda: list(DEFAULT_PROPORTIONS))
    seeds: list[int] = field(default_factory=lambda: [0])
    out: str = "benchmark"
    overrides: list[str] = field(default_factory=list)


def _cell_key(method: str, proportion: float, seed: int) -> tuple[str, str, int]:
    return method, f"{proportion:.4g}", int(seed)


def read_results(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _write_results(path: Path, rows: list[dict[str, str]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def cell_config(options: BenchmarkOptions, method: str, proportion: float, seed: int) -> TrainConfig:
    """The config of one cell: the base config, the user's overrides, then the cell's own values."""
    cell = [
        f"method.name={method}",
        f"data.proportion={proportion}",
        f"data.partial_seed={seed}",
        f"trainer.seed={seed}",
        f"trainer.output_dir={Path(options.out) / 'runs'}",
        f"trainer.run_name={method}-p{proportion:g}-s{seed}",
        "trainer.progress_bar=false",
    ]
    return resolve_config(TrainConfig, options.config, [*options.overrides, *cell])


def run_benchmark(
    options: BenchmarkOptions,
    train_fn: Callable[[TrainConfig], object] | None = None,
    log: Callable[[str], None] = print,
) -> list[dict[str, str]]:
    """Run every missing cell, appending each finished one to results.csv, then write the table and plot."""
    if train_fn is None:
        from hst.engine.train import train as train_fn

    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.csv"
    rows = read_results(results_path)
    done = {_cell_key(r["method"], float(r["proportion"]), int(r["seed"])) for r in rows}
    cells = [(m, p, s) for m in options.methods for p in options.proportions for s in options.seeds]
    # Validate every cell's config before the first long run starts.
    configs = {cell: cell_config(options, *cell) for cell in cells}
    todo = [cell for cell in cells if _cell_key(*cell) not in done]
    log(f"{len(cells)} cells, {len(cells) - len(todo)} already done, {len(todo)} to run")
    for number, cell in enumerate(todo, start=1):
        method, proportion, seed = cell
        started = time.perf_counter()
        result = train_fn(configs[cell])
        seconds = time.perf_counter() - started
        test = getattr(result, "test_metrics", {})
        val = getattr(result, "val_metrics", {})
        rows.append(
            {
                "method": method,
                "proportion": f"{proportion:.4g}",
                "seed": str(seed),
                "test_mAP": f"{test.get('mAP', float('nan')):.4f}",
                "test_OF1": f"{test.get('OF1', float('nan')):.4f}",
                "test_CF1": f"{test.get('CF1', float('nan')):.4f}",
                "val_mAP": f"{val.get('mAP', float('nan')):.4f}",
                "seconds": f"{seconds:.1f}",
                "run_dir": str(getattr(result, "run_dir", "")),
            }
        )
        _write_results(results_path, rows)
        log(f"[{number}/{len(todo)}] {method} p={proportion:g} seed={seed}: "
            f"test mAP {test.get('mAP', float('nan')):.2f} ({seconds:.0f} s)")
    wanted = {_cell_key(*cell) for cell in cells}
    selected = [r for r in rows if _cell_key(r["method"], float(r["proportion"]), int(r["seed"])) in wanted]
    (out / "results.md").write_text(markdown_table(selected, options.methods, options.proportions))
    plot_results(selected, options.methods, options.proportions, out / "results.png")
    return selected


def _aggregate(
    rows: Sequence[dict[str, str]], method: str, proportion: float, metric: str = "test_mAP"
) -> np.ndarray:
    return np.array(
        [
            float(r[metric])
            for r in rows
            if r["method"] == method and abs(float(r["proportion"]) - proportion) < 1e-9
        ]
    )


def markdown_table(rows: Sequence[dict[str, str]], methods: Sequence[str], proportions: Sequence[float]) -> str:
    """Rows = methods, columns = known proportions + average; mean ± std over seeds (test mAP, %)."""
    header = "| method | " + " | ".join(f"{p:.0%}" for p in proportions) + " | average |"
    lines = [header, "|---" * (len(proportions) + 2) + "|"]
    for method in methods:
        cells: list[str] = []
        means: list[float] = []
        for proportion in proportions:
            values = _aggregate(rows, method, proportion)
            if values.size == 0:
                cells.append("—")
                continue
            means.append(float(values.mean()))
            spread = f" ± {values.std(ddof=1):.1f}" if values.size > 1 else ""
            cells.append(f"{values.mean():.1f}{spread}")
        average = f"{np.mean(means):.1f}" if len(means) == len(proportions) else "—"
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {average} |")
    seeds = sorted({int(r["seed"]) for r in rows})
    lines.append("")
    lines.append(f"Test mAP (%), mean ± sample std over seeds {seeds} where more than one seed ran.")
    return "\n".join(lines) + "\n"


def plot_results(
    rows: Sequence[dict[str, str]], methods: Sequence[str], proportions: Sequence[float], path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5), dpi=120)
    for method in methods:
        xs, means, lows, highs = [], [], [], []
        for proportion in proportions:
            values = _aggregate(rows, method, proportion)
            if values.size:
                xs.append(proportion * 100)
                means.append(values.mean())
                lows.append(values.min())
                highs.append(values.max())
        if not xs:
            continue
        (line,) = axis.plot(xs, means, marker="o", label=method)
        axis.fill_between(xs, lows, highs, color=line.get_color(), alpha=0.15)
    axis.set_xlabel("known labels (%)")
    axis.set_ylabel("test mAP (%)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    figure.savefig(tmp)
    plt.close(figure)
    os.replace(tmp, path)
