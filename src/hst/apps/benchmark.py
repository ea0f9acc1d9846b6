"""``hst benchmark``: methods × known proportions × seeds under one protocol, resumable.

Writes ``results.csv`` (one row per finished cell), ``results.md`` (rows = methods, columns = proportions and
their average, mean ± std over seeds: the form of the paper's Table 1) and ``results.png`` (test mAP against
the known proportion, one line per method, seed spread shaded).
"""

from __future__ import annotations

import csv
import itertools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hst.apps.diagnostics import cell_diagnostic, refuse_diagnostics
from hst.apps.results import (
    RESULTS_FILE,
    Result,
    aggregate,
    cell_values,
    method_label,
    parse_results,
    proportion_figure,
    read_results,
    write_results,
)
from hst.config import ConfigError, TrainConfig, resolve_config
from hst.io import atomic_write, folder_lock, write_text_atomic

if TYPE_CHECKING:
    from hst.apps.benchmark_workers import CellFailure

DEFAULT_PROPORTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class BenchmarkOptions:
    config: str | None = None
    methods: list[str] = field(default_factory=lambda: ["hst", "partial_bce", "sst", "assume_negative"])
    proportions: list[float] = field(default_factory=lambda: list(DEFAULT_PROPORTIONS))
    seeds: list[int] = field(default_factory=lambda: [0])
    out: str = "benchmark"
    overrides: list[str] = field(default_factory=list)
    tune: dict[str, list[list[str]]] = field(default_factory=dict)
    """Per method, a grid of override sets; each cell trains every point and keeps the best validation mAP."""
    workers: int = 1
    """Cells run in this many processes at once (CPU threads are shared out between them)."""
    tune_seeds: list[int] | None = None
    """Seeds whose cells train the whole tuning grid; the other seeds of a (method, proportion) train only the
    point chosen there (None: every cell tunes)."""
    allow_diagnostics: bool = False
    """Train diagnostic options (``hst.apps.diagnostics``) instead of refusing them; their rows are marked."""


def parse_tune(text: str) -> dict[str, list[list[str]]]:
    """``METHOD:key=v1,v2;key2=w1,w2`` (several specs joined by ``+``) → the cartesian grid per method."""
    grids: dict[str, list[list[str]]] = {}
    for spec in (part.strip() for part in text.split("+")):
        if not spec:
            continue
        method, sep, body = spec.partition(":")
        if not sep or not method.strip() or not body.strip():
            raise ConfigError(f"--tune {spec!r}: expected METHOD:key=v1,v2;key2=w1,w2")
        axes: list[list[str]] = []
        for axis in body.split(";"):
            key, eq, values = axis.partition("=")
            choices = [v.strip() for v in values.split(",") if v.strip()]
            if not eq or not key.strip() or not choices:
                raise ConfigError(f"--tune {spec!r}: cannot read {axis!r} (expected key=v1,v2)")
            axes.append([f"{key.strip()}={v}" for v in choices])
        grids[method.strip()] = [list(point) for point in itertools.product(*axes)]
    return grids


def _text_list(text: str, kind: type) -> list:
    try:
        return [kind(item) for item in text.split(",") if item.strip()]
    except ValueError as error:
        raise ConfigError(f"cannot parse list {text!r}: {error}") from error


def options_from_text(
    config: str | None,
    out: str,
    overrides: list[str],
    methods: str | None = None,
    proportions: str | None = None,
    seeds: str | None = None,
    tune: str | None = None,
    tune_seeds: str | None = None,
    workers: int = 1,
    allow_diagnostics: bool = False,
) -> BenchmarkOptions:
    """Options from the command line's comma-separated lists and ``--tune`` grid (None: the default)."""
    from hst.methods import available

    options = BenchmarkOptions(config=config, out=out, overrides=overrides)
    if methods:
        options.methods = _text_list(methods, str)
    if proportions:
        options.proportions = _text_list(proportions, float)
    if seeds:
        options.seeds = _text_list(seeds, int)
    if tune:
        options.tune = parse_tune(tune)
        if "all" in options.tune:
            # One grid for every benchmarked method (a method given its own grid keeps that one).
            shared = options.tune.pop("all")
            options.tune = {method: options.tune.get(method, shared) for method in options.methods}
    if tune_seeds:
        options.tune_seeds = _text_list(tune_seeds, int)
    options.workers = workers
    options.allow_diagnostics = allow_diagnostics
    unknown = [m for m in options.methods if m not in available()]
    if unknown:
        raise ConfigError(f"unknown method(s) {unknown}; available: {', '.join(available())}")
    return options


def _cell_key(method: str, proportion: float, seed: int) -> tuple[str, str, int]:
    return method, f"{proportion:.4g}", int(seed)


def cell_config(
    options: BenchmarkOptions, method: str, proportion: float, seed: int, point: Sequence[str] = (), tag: str = ""
) -> TrainConfig:
    """The config of one cell: the base config, the user's overrides, a tuning point, then the cell's values."""
    cell = [
        f"method.name={method}",
        f"data.proportion={proportion}",
        f"data.partial_seed={seed}",
        f"trainer.seed={seed}",
        f"trainer.output_dir={Path(options.out) / 'runs'}",
        f"trainer.run_name={method}-p{proportion:g}-s{seed}{tag}",
        "trainer.progress_bar=false",
    ]
    return resolve_config(TrainConfig, options.config, [*options.overrides, *point, *cell])


@dataclass
class CellPlan:
    """One cell and the configs of its tuning points (one point when the method is not tuned)."""

    method: str
    proportion: float
    seed: int
    points: list[list[str]]
    configs: list[TrainConfig]


def _plan(
    options: BenchmarkOptions, method: str, proportion: float, seed: int, chosen: list[str] | None = None
) -> CellPlan:
    grid = [chosen] if chosen is not None else (options.tune.get(method) or [[]])
    tagged = len(grid) > 1
    configs = [
        cell_config(options, method, proportion, seed, point, f"-t{k}" if tagged else "")
        for k, point in enumerate(grid)
    ]
    return CellPlan(method, proportion, seed, grid, configs)


def _best_val_map(result: object) -> float:
    """The validation mAP of the epoch the run kept (its best), read from the run's CSV log when present."""
    log = Path(str(getattr(result, "run_dir", ""))) / "csv" / "metrics.csv"
    if log.is_file():
        with log.open(newline="") as handle:
            values = [float(r["val/mAP"]) for r in csv.DictReader(handle) if r.get("val/mAP")]
        if values:
            return max(values)
    return float(getattr(result, "val_metrics", {}).get("mAP", float("nan")))


def run_cell(plan: CellPlan, train_fn: Callable[[TrainConfig], object]) -> dict[str, str]:
    """Train every tuning point of a cell; the row reports the point with the best validation mAP."""
    started = time.perf_counter()
    best: tuple[float, int, object] | None = None
    for k, config in enumerate(plan.configs):
        result = train_fn(config)
        val_map = _best_val_map(result)
        score = val_map if math.isfinite(val_map) else -math.inf
        if best is None or score > best[0]:  # ties keep the earlier point
            best = (score, k, result)
    assert best is not None
    _, k, result = best
    test = getattr(result, "test_metrics", {})
    return {
        "method": plan.method,
        "proportion": f"{plan.proportion:.4g}",
        "seed": str(plan.seed),
        "test_mAP": f"{test.get('mAP', float('nan')):.4f}",
        "test_OF1": f"{test.get('OF1', float('nan')):.4f}",
        "test_CF1": f"{test.get('CF1', float('nan')):.4f}",
        "val_mAP": f"{_best_val_map(result):.4f}",
        "seconds": f"{time.perf_counter() - started:.1f}",
        "run_dir": str(getattr(result, "run_dir", "")),
        "chosen": " ".join(plan.points[k]),
        "diagnostic": cell_diagnostic(plan.configs),
    }


def _worker_cell(plan: CellPlan) -> dict[str, str]:
    import logging

    from hst.engine.train import train

    # after Lightning's import, which sets its own level: a worker's info lines (checkpoint restored, GPU
    # available, ...) would interleave with the progress log of the parent
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
    return run_cell(plan, train)


def _prepare_caches(plans: Sequence[CellPlan], log: Callable[[str], None]) -> None:
    """Extract frozen-backbone features once, before parallel workers would race to write them."""
    from hst.feature_cache import extract_for_config
    from hst.midlevel_cache import extract_fronts_for_config

    seen: set[str] = set()
    for plan in plans:
        for config in plan.configs:
            if config.data.feature_cache != "auto":
                continue
            d, m = config.data, config.model
            key = repr((d.train, d.test, d.image_size, d.cache_dir, d.augment, m.backbone, m.weights, m.trainable))
            if key not in seen:
                seen.add(key)
                caches = (
                    extract_for_config(config, progress=False)
                    if m.trainable == "none"
                    else extract_fronts_for_config(config, progress=False)
                )
                if caches:
                    log(f"feature cache ready: {', '.join(c.key for c in caches)}")


class BenchmarkError(RuntimeError):
    """Some cells failed; the others are in results.csv and a rerun trains only the missing ones."""


FAILURES_FILE = "failures.csv"
"""The cells of the last invocation that failed, with the reason (removed when none failed)."""


def run_benchmark(
    options: BenchmarkOptions,
    train_fn: Callable[[TrainConfig], object] | None = None,
    log: Callable[[str], None] = print,
) -> list[dict[str, str]]:
    """Run every missing cell, appending each finished one to results.csv, then write the table and plot.

    With ``workers > 1`` cells run in spawned processes, one per cell (``train_fn`` must then be None: the real
    trainer), each with ``torch.get_num_threads() // workers`` threads; results.csv is written by this process
    only. A worker that fails or dies (SIGKILL, out of memory) costs only its cell: it is listed in
    ``failures.csv`` and :class:`BenchmarkError` is raised after the other cells finished. One process at a time
    writes a benchmark folder (a second one fails at once, naming the first one's pid).
    """
    with folder_lock(options.out, "benchmark folder"):
        return _run_benchmark(options, train_fn, log)


def _run_benchmark(
    options: BenchmarkOptions, train_fn: Callable[[TrainConfig], object] | None, log: Callable[[str], None]
) -> list[dict[str, str]]:
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.csv"
    rows = read_results(results_path)
    done = {_cell_key(r["method"], float(r["proportion"]), int(r["seed"])) for r in rows}
    cells = [(m, p, s) for m in options.methods for p in options.proportions for s in options.seeds]
    unknown_tuned = sorted(set(options.tune) - set(options.methods))
    if unknown_tuned:
        raise ConfigError(f"--tune names methods that are not benchmarked: {unknown_tuned}")
    # Validate every cell's config before the first long run starts.
    plans = {cell: _plan(options, *cell) for cell in cells}
    refuse_diagnostics(plans.values(), options.allow_diagnostics)
    todo = [cell for cell in cells if _cell_key(*cell) not in done]
    log(f"{len(cells)} cells, {len(cells) - len(todo)} already done, {len(todo)} to run")

    def finish(number: int, row: dict[str, str]) -> None:
        try:  # runs/<name> relative to the benchmark folder: the table stays valid when the folder moves
            row["run_dir"] = str(Path(row["run_dir"]).resolve().relative_to(out.resolve()))
        except (ValueError, OSError):
            pass
        rows.append(row)
        write_results(results_path, rows)
        log(
            f"[{number}/{len(todo)}] {method_label(row)} p={row['proportion']} seed={row['seed']}: "
            f"test mAP {float(row['test_mAP']):.2f} ({float(row['seconds']):.0f} s) {row['chosen']}".rstrip()
        )

    def reused(cell: tuple[str, float, int]) -> bool:
        return options.tune_seeds is not None and cell[0] in options.tune and cell[2] not in options.tune_seeds

    def chosen_point(cell: tuple[str, float, int]) -> list[str] | None:
        """The grid point a tuning seed's cell of the same method and proportion chose (None: not run yet)."""
        method, proportion, _ = cell
        for seed in options.tune_seeds or []:
            for row in rows:
                if _cell_key(row["method"], float(row["proportion"]), int(row["seed"])) == _cell_key(
                    method, proportion, seed
                ):
                    return row["chosen"].split()
        return None

    counter = iter(range(1, len(todo) + 1))
    # Tuning cells first; cells that reuse a tuned point are planned once those have finished.
    first = [cell for cell in todo if not reused(cell)]
    failures = _run_cells([(cell, plans[cell]) for cell in first], options, train_fn, log, finish, counter, len(todo))
    later: list[tuple[tuple[str, float, int], CellPlan]] = []
    for cell in (cell for cell in todo if reused(cell)):
        point = chosen_point(cell)
        if point is not None:
            later.append((cell, _plan(options, *cell, chosen=point)))
            refuse_diagnostics([later[-1][1]], options.allow_diagnostics)  # a point read back from results.csv
        else:
            log(f"{cell[0]} p={cell[1]:g} seed={cell[2]}: its tuning cell did not finish; skipped")
    failures += _run_cells(later, options, train_fn, log, finish, counter, len(todo))
    _record_failures(out / FAILURES_FILE, failures)
    if failures:
        _write_summary(out, rows, options)
        names = ", ".join(f"{m} p={p:g} seed={s}" for m, p, s in (f.key for f in failures))
        raise BenchmarkError(
            f"{len(failures)} of {len(todo)} cells failed ({names}); see {out / FAILURES_FILE}. The "
            f"{len(todo) - len(failures)} finished cells are in {results_path}; the same command trains only "
            "the missing cells"
        )

    (out / FAILURES_FILE).unlink(missing_ok=True)  # every cell is done: earlier failures are filled
    return _write_summary(out, rows, options)


def _run_cells(
    jobs: Sequence[tuple[tuple[str, float, int], CellPlan]],
    options: BenchmarkOptions,
    train_fn: Callable[[TrainConfig], object] | None,
    log: Callable[[str], None],
    finish: Callable[[int, dict[str, str]], None],
    counter: Iterator[int],
    total: int,
) -> list[CellFailure]:
    """Train the cells serially or in ``options.workers`` processes; returns the cells whose worker failed."""
    if not jobs:
        return []
    workers = max(1, int(options.workers))
    if workers == 1 or len(jobs) <= 1:
        if train_fn is None:
            from hst.engine.train import train as train_fn
        for _, plan in jobs:
            finish(next(counter), run_cell(plan, train_fn))
        return []
    if train_fn is not None:
        raise ValueError("a custom train_fn cannot be sent to worker processes; use workers=1")
    import torch

    from hst.apps.benchmark_workers import run_cells

    _prepare_caches([plan for _, plan in jobs], log)
    threads = max(1, torch.get_num_threads() // workers)

    def failed(failure: CellFailure) -> None:
        method, proportion, seed = failure.key
        log(
            f"[{next(counter)}/{total}] {method} p={proportion:g} seed={seed}: FAILED: "
            f"{failure.reason.splitlines()[0]} (not in results.csv; run again to train it)"
        )

    work = [(cell, plan, plan.configs[0].trainer.run_name) for cell, plan in jobs]
    return run_cells(work, _worker_cell, workers, threads, lambda _, row: finish(next(counter), row), failed)


def _write_summary(out: Path, rows: list[dict[str, str]], options: BenchmarkOptions) -> list[dict[str, str]]:
    """results.md and results.png of the rows of the cells ``options`` asks for; returns those rows."""
    cells = [(m, p, s) for m in options.methods for p in options.proportions for s in options.seeds]
    wanted = {_cell_key(*cell) for cell in cells}
    selected = [r for r in rows if _cell_key(r["method"], float(r["proportion"]), int(r["seed"])) in wanted]
    write_text_atomic(out / "results.md", markdown_table(selected, options.methods, options.proportions))
    plot_results(selected, options.methods, options.proportions, out / "results.png")
    return selected


def _record_failures(path: Path, failures: Sequence[object]) -> None:
    """List the failed cells of this invocation (method, proportion, seed, reason); no file when none failed."""
    if not failures:
        path.unlink(missing_ok=True)
        return
    with atomic_write(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "proportion", "seed", "reason"])
        for failure in failures:
            method, proportion, seed = failure.key  # type: ignore[attr-defined]
            writer.writerow([method, f"{proportion:.4g}", seed, failure.reason])  # type: ignore[attr-defined]


def _labels(results: Sequence[Result], method: str) -> list[str]:
    """The table lines of ``method``: one per diagnostic marker it ran with (none: its plain name), in row order."""
    return list(dict.fromkeys(r.method for r in results if r.raw.get("method") == method)) or [method]


def markdown_table(rows: Sequence[dict[str, str]], methods: Sequence[str], proportions: Sequence[float]) -> str:
    """Rows = methods, columns = known proportions + average; mean ± std over seeds (test mAP, %).

    A method's rows trained with diagnostic options get lines of their own, labelled ``[diagnostic: …]``.
    """
    results = parse_results(rows, RESULTS_FILE)
    table = aggregate(results)
    header = "| method | " + " | ".join(f"{p:.0%}" for p in proportions) + " | average |"
    lines = [header, "|---" * (len(proportions) + 2) + "|"]
    labels = [label for method in methods for label in _labels(results, method)]
    for label in labels:
        cells: list[str] = []
        means: list[float] = []
        for proportion in proportions:
            values = cell_values(table, label, proportion)
            if values.size == 0:
                cells.append("—")
                continue
            means.append(float(values.mean()))
            spread = f" ± {values.std(ddof=1):.1f}" if values.size > 1 else ""
            cells.append(f"{values.mean():.1f}{spread}")
        average = f"{np.mean(means):.1f}" if len(means) == len(proportions) else "—"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {average} |")
    seeds = sorted({int(r["seed"]) for r in rows})
    lines.append("")
    lines.append(f"Test mAP (%), mean ± sample std over seeds {seeds} where more than one seed ran.")
    if any("[diagnostic:" in label for label in labels):
        lines.append(
            "Lines marked [diagnostic: …] trained with diagnostic options (an oracle of the hidden training "
            "labels, or epochs selected on the test split): bounds, not results comparable with the others."
        )
    return "\n".join(lines) + "\n"


def plot_results(
    rows: Sequence[dict[str, str]], methods: Sequence[str], proportions: Sequence[float], path: Path
) -> None:
    """Test mAP against the known-label proportion for ``methods`` (the figure ``hst report`` draws too)."""
    results = parse_results(rows, RESULTS_FILE)
    table = aggregate(results)
    labels = [label for method in methods for label in _labels(results, method)]
    wanted = {label: {p: cell_values(table, label, p) for p in proportions} for label in labels}
    proportion_figure(wanted, path, always=True)
