"""``build_report``: a run's and a benchmark's HTML page with its figures, and how it renders in a browser."""

from __future__ import annotations

import base64
import csv
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from hst.apps.report import FIGURE_FILES, REPORT_FILE, build_report
from hst.config import TrainConfig, resolve_config
from hst.engine.train import train
from tiny_run import TINY

RUN_FIGURES = ["loss", "map", "per_class_ap", "thresholds", "pseudo_labels"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    return train(resolve_config(TrainConfig, None, [*TINY, f"trainer.output_dir={out}", "trainer.run_name=r"])).run_dir


@pytest.fixture(scope="module")
def run_report(run_dir: Path) -> Path:
    return build_report(run_dir)


@pytest.fixture(scope="module")
def benchmark_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    bench = tmp_path_factory.mktemp("bench")
    (bench / "runs").mkdir()
    fields = ["method", "proportion", "seed", "test_mAP", "test_OF1", "test_CF1", "val_mAP", "seconds", "run_dir"]
    with (bench / "results.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for method, base in (("hst", 60.0), ("partial_bce", 50.0)):
            for proportion in (0.1, 0.5):
                for seed in (0, 1):
                    score = base + 20 * proportion + seed
                    writer.writerow(
                        {
                            "method": method,
                            "proportion": proportion,
                            "seed": seed,
                            "test_mAP": f"{score:.4f}",
                            "test_OF1": "40.0",
                            "test_CF1": "35.0",
                            "val_mAP": "55.0",
                            "seconds": "1.0",
                            "run_dir": f"bench/runs/{method}-p{proportion:g}-s{seed}",
                        }
                    )
    return bench


def assert_png(path: Path) -> None:
    assert path.is_file(), f"missing figure {path}"
    data = path.read_bytes()
    assert len(data) > 1000 and data.startswith(PNG_SIGNATURE), path
    with Image.open(path) as image:
        image.verify()


def embedded_images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)]


def test_run_report_has_every_figure(run_dir: Path, run_report: Path) -> None:
    assert run_report == run_dir / "report" / REPORT_FILE and run_report.is_file()
    page = run_report.read_text()
    for key in RUN_FIGURES:
        assert_png(run_report.parent / FIGURE_FILES[key])
        assert f"href='{FIGURE_FILES[key]}'" in page, f"page does not link {FIGURE_FILES[key]}"
    # Each embedded image is the very PNG written beside the page, so the single file stands alone.
    embedded = embedded_images(page)
    assert sorted(embedded) == sorted((run_report.parent / FIGURE_FILES[k]).read_bytes() for k in RUN_FIGURES)
    assert "Figure skipped" not in page
    assert not (run_report.parent / FIGURE_FILES["map_vs_proportion"]).exists()
    # Header: the run's config and its final test metrics.
    config = resolve_config(TrainConfig, run_dir / "config.yaml")
    assert "tf_efficientnet_lite0" in page and "synthetic:72" in page and "30%" in page
    assert f"<td>{config.trainer.epochs}</td>" in page
    metrics = (run_dir / "metrics.json").read_text()
    test_map = float(re.search(r'"mAP": ([0-9.]+)', metrics).group(1))  # type: ignore[union-attr]
    assert f"<td>{test_map:.2f}</td>" in page
    assert "data-figures-loaded" in page and "naturalWidth" in page


def test_run_report_survives_missing_files_and_leaves_no_stale_figure(run_dir: Path, tmp_path: Path) -> None:
    partial = tmp_path / "partial"
    (partial / "csv").mkdir(parents=True)
    # Keep only the loss and validation columns: no thresholds, no pseudo labels, no metrics.json / config.yaml.
    with (run_dir / "csv" / "metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    keep = ["epoch", "step", "train/loss_epoch", "val/mAP"]
    with (partial / "csv" / "metrics.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keep, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "out"
    out.mkdir()
    (out / FIGURE_FILES["thresholds"]).write_bytes(b"stale")
    page = build_report(partial, out).read_text()
    assert_png(out / FIGURE_FILES["loss"])
    assert_png(out / FIGURE_FILES["map"])
    for key in ("per_class_ap", "thresholds", "pseudo_labels"):
        assert not (out / FIGURE_FILES[key]).exists(), key
    assert page.count("Figure skipped") == 3
    assert "config.yaml is missing" in page and len(embedded_images(page)) == 2


def test_benchmark_report_plots_map_against_proportion(benchmark_dir: Path, tmp_path: Path) -> None:
    sub_report = benchmark_dir / "runs" / "hst-p0.5-s1" / "report" / REPORT_FILE
    sub_report.parent.mkdir(parents=True)
    sub_report.write_text("<html></html>")
    out = tmp_path / "bench-report"
    report = build_report(benchmark_dir, out)
    assert report == out / REPORT_FILE
    assert_png(out / FIGURE_FILES["map_vs_proportion"])
    page = report.read_text()
    assert len(embedded_images(page)) == 1 and "href='map_vs_proportion.png'" in page
    # Results table: mean ± sample std over the two seeds (62 and 63 → 62.5 ± 0.7 for hst at 10%).
    assert "62.5 ± 0.7 (n=2)" in page and "60.5 ± 0.7 (n=2)" in page
    assert "<th>10%</th>" in page and "<th>50%</th>" in page
    # A run that has its own report is linked (relative to the page); the others are not.
    link = Path(os.path.relpath(sub_report, out)).as_posix()
    assert f"<a href='{link}'>hst-p0.5-s1</a>" in page and page.count("report.html'>") == 1
    for key in RUN_FIGURES:
        assert not (out / FIGURE_FILES[key]).exists()


def test_benchmark_results_without_required_column_are_rejected(tmp_path: Path) -> None:
    (tmp_path / "results.csv").write_text("method,seed\nhst,0\n")
    with pytest.raises(ValueError, match=r"results\.csv.*proportion.*test_mAP"):
        build_report(tmp_path)


def test_bad_directories_raise_naming_the_path(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty.*config\.yaml.*csv/metrics\.csv.*results\.csv"):
        build_report(empty)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_report(tmp_path / "nowhere")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ValueError, match=r"file\.txt.*not a directory"):
        build_report(tmp_path / "file.txt")
    assert not (empty / "report").exists()


def _browser() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(f"no headless browser found ({', '.join(BROWSERS)}): install it with `apt-get install -y chromium`")


def _run_browser(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        binary, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
        f"--user-data-dir={profile}", *args,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)


@pytest.mark.slow
def test_report_renders_in_headless_chromium(run_report: Path, tmp_path: Path) -> None:
    binary = _browser()
    # Moved away from its PNG files, the page must still show every figure from its embedded copies.
    moved = tmp_path / "moved" / REPORT_FILE
    moved.parent.mkdir()
    shutil.copy(run_report, moved)
    dom = _run_browser(binary, tmp_path / "profile", "--dump-dom", moved.as_uri())
    match = re.search(r'data-figures-loaded="(\d+)/(\d+)"', dom.stdout)
    assert match, f"no data-figures-loaded in the rendered DOM (rc {dom.returncode}): {dom.stderr[-2000:]}"
    assert match.groups() == (str(len(RUN_FIGURES)), str(len(RUN_FIGURES)))

    shot = tmp_path / "shot.png"
    result = _run_browser(
        binary, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,2000", moved.as_uri()
    )
    assert shot.is_file(), f"no screenshot (rc {result.returncode}): {result.stderr[-2000:]}"
    with Image.open(shot) as image:
        assert image.size == (1280, 2000)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is None or len(colours) > 50, "the screenshot is (nearly) a single flat colour"


def test_missing_browser_fails_with_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(pytest.fail.Exception, match=r"apt-get install -y chromium"):
        _browser()
