"""``hst report`` of an ``hst simulate-review`` folder: test mAP against answers per policy, the random-proportion
curve on the same axes, and its tables, from a small folder written with simulate-review's own CSV writer."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from hst.apps.report import FIGURE_FILES, REPORT_FILE, build_report
from hst.apps.report_review import TABLE_FILES
from hst.apps.simulate_review import ROUND_COLUMNS
from hst.apps.simulate_review import _csv as simulate_review_csv
from hst.cli import main

ENTRIES = 1000
START = 0.1
# test mAP per round (answers 0, 25, 50) of each policy and seed; round 0 is the same model for every policy.
RUNS = {
    ("rarest", 0): [60.0, 66.0, 70.0],
    ("rarest", 1): [62.0, 67.0, 72.0],
    ("random", 0): [60.0, 61.0, 62.0],
    ("random", 1): [62.0, 62.0, 64.0],
}
# test mAP of the model at random known proportions (the 10% rows are the runs' round 0).
CURVE = {(0.1, 0): 60.0, (0.1, 1): 62.0, (0.2, 0): 68.0, (0.2, 1): 72.0, (0.3, 0): 74.0, (0.3, 1): 76.0}
CURVE_COLUMNS = ["proportion", "seed", "known", *ROUND_COLUMNS]


def _round_rows(values: list[float]) -> list[dict[str, float]]:
    rows = []
    for index, value in enumerate(values):
        row = {column: 0.0 for column in ROUND_COLUMNS}
        row |= {"round": index, "version": index, "answers": 25 * index, "test_mAP": value}
        rows.append(row)
    return rows


def write_review_folder(folder: Path, flat: bool = False, meta: bool = True) -> Path:
    """The files simulate-review writes (``flat``: the docs' copies, ``POLICY-sSEED.rounds.csv``, no rounds.json)."""
    folder.mkdir(parents=True, exist_ok=True)
    for (policy, seed), values in RUNS.items():
        rows = _round_rows(values)
        text = simulate_review_csv(rows, ROUND_COLUMNS)
        if flat:
            (folder / f"{policy}-s{seed}.rounds.csv").write_text(text)
            continue
        run = folder / f"{policy}-s{seed}"
        run.mkdir()
        (run / "rounds.csv").write_text(text)
        if meta:
            info = {"policy": policy, "seed": seed, "budget": 0.05, "entries": ENTRIES, "proportion": START}
            (run / "rounds.json").write_text(json.dumps({**info, "rounds": rows}))
    curve = []
    for (proportion, seed), value in CURVE.items():
        row = {"proportion": proportion, "seed": seed, "known": proportion, **_round_rows([value])[0]}
        curve.append(row)
    (folder / "curve.csv").write_text(simulate_review_csv(curve, CURVE_COLUMNS))
    return folder


def read_table(out: Path) -> dict[str, dict[str, str]]:
    with (out / TABLE_FILES[1]).open(newline="") as handle:
        return {row["series"]: row for row in csv.DictReader(handle)}


def test_report_of_a_simulate_review_folder_draws_the_figure(tmp_path: Path) -> None:
    folder = write_review_folder(tmp_path / "sim")
    report = build_report(folder)
    out = folder / "report"
    assert report == out / REPORT_FILE
    figure = out / FIGURE_FILES["review_curve"]
    with Image.open(figure) as image:
        image.verify()
        assert image.format == "PNG" and image.size[0] > 800
    page = report.read_text()
    assert page.count("data:image/png;base64,") == 1 and "href='review_curve.png'" in page
    assert "Review simulation report: sim" in page and "10% (rounds.json)" in page and "1000 (rounds.json)" in page
    for key in ("loss", "map", "map_vs_proportion"):
        assert not (out / FIGURE_FILES[key]).exists()


def test_tables_hold_the_means_and_standard_errors_over_seeds(tmp_path: Path) -> None:
    out = tmp_path / "out"
    build_report(write_review_folder(tmp_path / "sim"), out)
    table = read_table(out)
    # rarest ends at 70 and 72: mean 71, sample std √2, standard error √2/√2 = 1; random ends at 62 and 64.
    expected = {
        "rarest": ("50", "0.050000", "2", "71.0000", "1.0000"),
        "random": ("50", "0.050000", "2", "63.0000", "1.0000"),
        "random 0.1": ("0", "0.000000", "2", "61.0000", "1.0000"),
        "random 0.2": ("100", "0.100000", "2", "70.0000", "2.0000"),
        "random 0.3": ("200", "0.200000", "2", "75.0000", "1.0000"),
    }
    columns = ("answers", "fraction_of_entries", "seeds", "test_mAP_mean", "test_mAP_se")
    assert {name: tuple(row[c] for c in columns) for name, row in table.items()} == expected
    markdown = (out / TABLE_FILES[0]).read_text()
    # rarest's 71 lies on the curve between 20% (70) and 30% (75): 22%, i.e. (0.22 − 0.1) × 1000 / 50 = 2.4 entries
    # an answer; random's 63 between 10% (61) and 20% (70): 10% + 2/9 × 10% = 12.2%, worth 0.4.
    assert "| rarest | 2 | 50 | 61.00 ± 1.00 | 71.00 ± 1.00 | 22.0% | 2.4 |" in markdown
    assert "| random | 2 | 50 | 61.00 ± 1.00 | 63.00 ± 1.00 | 12.2% | 0.4 |" in markdown
    assert "| 20% | 100 | 2 | 70.00 ± 2.00 |" in markdown
    assert markdown.index("| rarest |") < markdown.index("| random |")


def test_curve_x_is_the_known_entries_beyond_the_start(tmp_path: Path) -> None:
    # Flat copies carry no rounds.json: the entries come from the command line, p0 from the curve row equal to
    # round 0 (10%); with 2000 entries the 30% point has (0.3 − 0.1) × 2000 = 400 known entries beyond the start.
    folder = write_review_folder(tmp_path / "flat", flat=True)
    out = tmp_path / "out"
    assert main(["report", str(folder), "--out", str(out), "--entries", "2000"]) == 0
    table = read_table(out)
    assert [table[f"random {p}"]["answers"] for p in (0.1, 0.2, 0.3)] == ["0", "200", "400"]
    assert table["rarest"]["fraction_of_entries"] == "0.025000"
    assert "the curve point equal to round 0" in (out / REPORT_FILE).read_text()
    # A given starting proportion wins over the inferred one: 15% puts the 30% point at 0.15 × 2000 = 300.
    assert main(["report", str(folder), "--out", str(out), "--entries", "2000", "--start-proportion", "0.15"]) == 0
    assert read_table(out)["random 0.3"]["answers"] == "300"


def test_curve_is_left_out_when_its_x_is_unknown(tmp_path: Path) -> None:
    out = tmp_path / "out"
    page = build_report(write_review_folder(tmp_path / "flat", flat=True), out).read_text()
    assert "The curve is left out" in page and "no --entries" in page
    assert (out / FIGURE_FILES["review_curve"]).is_file()
    assert set(read_table(out)) == {"rarest", "random"}


def test_rounds_csv_without_a_column_is_rejected_naming_file_and_column(tmp_path: Path) -> None:
    folder = write_review_folder(tmp_path / "sim")
    broken = folder / "random-s1" / "rounds.csv"
    lines = broken.read_text().splitlines()
    drop = lines[0].split(",").index("test_mAP")
    broken.write_text("\n".join(",".join(c for i, c in enumerate(line.split(",")) if i != drop) for line in lines))
    with pytest.raises(ValueError, match=r"random-s1/rounds\.csv: no column test_mAP \(columns: round,"):
        build_report(folder, tmp_path / "out")
    lines[2] = lines[2].replace("62.0000", "n/a")  # round 1 of random, seed 1
    broken.write_text("\n".join(lines))
    with pytest.raises(ValueError, match=r"random-s1/rounds\.csv, line 3: column test_mAP is not a number: 'n/a'"):
        build_report(folder, tmp_path / "out")


def test_other_folders_leave_no_stale_review_table(tmp_path: Path) -> None:
    out = tmp_path / "out"
    build_report(write_review_folder(tmp_path / "sim"), out)
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "results.csv").write_text("method,proportion,seed,test_mAP\nhst,0.1,0,50.0\n")
    build_report(bench, out)
    assert (out / FIGURE_FILES["map_vs_proportion"]).is_file()
    for name in (FIGURE_FILES["review_curve"], *TABLE_FILES):
        assert not (out / name).exists(), name
