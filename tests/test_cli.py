"""The `hst` command line: help on every verb, data stats, make-partial, metrics."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import real_data
from hst.cli import build_parser, main
from hst.data.readers import read_csv_manifest
from hst.data.spec import load_dataset


def test_console_script_help_runs() -> None:
    # The installed entry point, not just the module, must work.
    out = subprocess.run([sys.executable, "-m", "hst.cli", "--help"], capture_output=True, text=True, check=True)
    assert "make-partial" in out.stdout and "synthetic" in out.stdout


@pytest.mark.parametrize(
    "verb",
    [
        ["data"],
        ["data", "stats"],
        ["make-partial"],
        ["metrics"],
        ["train"],
        ["evaluate"],
        ["benchmark"],
        ["extract-features"],
        ["predict"],
        ["complete"],
        ["review"],
        ["export"],
        ["report"],
    ],
)
def test_every_verb_has_help(verb: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*verb, "--help"])
    assert exit_info.value.code == 0
    assert "usage: hst" in capsys.readouterr().out


def test_data_stats_on_coco128(capsys: pytest.CaptureFixture[str]) -> None:
    spec = f"yolo:{real_data('coco128')}:train2017"
    assert main(["data", "stats", spec]) == 0
    out = capsys.readouterr().out
    assert "images: 128" in out and "classes: 80" in out
    # Mean positives per image recounted independently from the label files.
    per_image = []
    for image in sorted((real_data("coco128") / "images" / "train2017").glob("*.jpg")):
        label_file = real_data("coco128") / "labels" / "train2017" / f"{image.stem}.txt"
        lines = label_file.read_text().split("\n") if label_file.exists() else []
        per_image.append(len({line.split()[0] for line in lines if line.strip()}))
    assert f"positives per image: mean {np.mean(per_image):.3f}" in out
    assert "person + " in out  # person co-occurs most in COCO


def test_data_stats_accepts_override_form(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "stats", "data=synthetic:50", "top=3"]) == 0
    out = capsys.readouterr().out
    assert "images: 50" in out
    assert len([line for line in out.splitlines() if line.startswith("  ") and " + " in line]) <= 3


def test_make_partial_files_follow_the_recipe_and_nest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = f"yolo:{real_data('coco128')}:train2017"
    full = load_dataset(spec)
    previous = None
    for proportion in [round(p, 1) for p in np.arange(0.1, 1.0, 0.1)]:
        out = tmp_path / f"partial_{proportion}.csv"
        assert main(["make-partial", spec, "--proportion", str(proportion), "--seed", "0", "--out", str(out)]) == 0
        written = read_csv_manifest(out)
        np.random.seed(0)
        expected = (np.random.random(full.labels.shape) < proportion) * full.labels
        assert np.array_equal(written.labels, expected.astype(np.int8)), proportion
        assert written.class_names == full.class_names
        assert [Path(p).resolve() for p in written.image_paths] == [Path(p).resolve() for p in full.image_paths]
        known = written.labels != 0
        if previous is not None:
            assert np.all(known[previous])
        previous = known
    printed = capsys.readouterr().out
    assert "known fraction" in printed and "classes with no known positive" in printed


def test_make_partial_requires_out(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["make-partial", "synthetic:20"]) == 2
    assert "--out" in capsys.readouterr().err


def _write(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    path.write_text("\n".join(",".join(str(v) for v in row) for row in [header, *rows]) + "\n")
    return path


def test_metrics_cli_json_and_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    names = ["a", "b", "c"]
    labels = np.where(rng.random((40, 3)) < 0.4, 1, -1)
    labels[0, 0] = 0  # unknown entries are allowed in test labels
    scores = labels * 0.5 + rng.normal(size=labels.shape)
    ids = [f"img{i}.jpg" for i in range(40)]
    label_file = _write(tmp_path / "labels.csv", ["image", *names], [[i, *r] for i, r in zip(ids, labels, strict=True)])
    # Score columns in another order: they are matched by name.
    score_file = _write(
        tmp_path / "scores.csv",
        ["image", "c", "a", "b"],
        [[i, r[2], r[0], r[1]] for i, r in zip(ids, scores, strict=True)],
    )
    assert main(["metrics", "--scores", str(score_file), "--labels", str(label_file), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) >= {"mAP", "OF1", "CF1", "CP", "CR", "OP", "OR", "per_class_AP"}
    from hst.metrics import evaluate

    direct = evaluate(scores, labels.astype(np.int8), names)
    assert result["mAP"] == pytest.approx(direct.mAP, abs=1e-9)
    assert all(result[k] == pytest.approx(getattr(direct, k), abs=1e-9) for k in ["OF1", "CF1", "CP", "CR", "OP", "OR"])
    assert main(["metrics", "--scores", str(score_file), "--labels", str(label_file)]) == 0
    assert "per-class AP" in capsys.readouterr().out


def test_metrics_cli_bad_score_file_names_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    label_file = _write(tmp_path / "labels.csv", ["image", "a"], [["x.jpg", 1], ["y.jpg", -1]])
    score_file = _write(tmp_path / "scores.csv", ["image", "a"], [["x.jpg", 0.3], ["y.jpg", "high"]])
    assert main(["metrics", "--scores", str(score_file), "--labels", str(label_file)]) == 2
    err = capsys.readouterr().err
    assert "scores.csv:3" in err and "high" in err
