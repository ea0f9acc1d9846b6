"""``hst predict`` and ``hst export`` on a tiny trained checkpoint: shapes, semantics, files, parity."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from hst.apps import export as export_mod
from hst.apps.export import ParityError, export_module, sidecar_path
from hst.apps.inference import find_images, resolve_inputs, resolve_threshold
from hst.apps.predict import Predictions, predict, predict_module
from hst.cli import main
from hst.config import ConfigError, TrainConfig, resolve_config
from hst.data.base import DataError, MultiLabelData
from hst.data.readers import write_csv_manifest
from hst.data.synthetic import make_synthetic
from hst.data.transforms import build_transform
from hst.engine.module import PartialLabelModule, load_module
from hst.engine.train import train
from tiny_run import TINY as _TINY

# float sums depend on the thread count, and tiny tensors gain nothing from threads
pytestmark = pytest.mark.usefixtures("one_thread")

TINY = [*_TINY, "trainer.epochs=1"]
# Rendered larger than the training size so the resize of the evaluation transform is exercised.
RENDER_SIZE = 96
NAMES = ["scene_000.png", "scene_001.png", "scene_002.png", "scene_003.png", "sub/scene_004.png"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    config = resolve_config(
        TrainConfig, None, [*TINY, f"trainer.output_dir={out}", f"data.cache_dir={out / 'cache'}", "trainer.run_name=t"]
    )
    result = train(config)
    assert result.best_checkpoint is not None
    return result.best_checkpoint


@pytest.fixture(scope="module")
def module(checkpoint: Path) -> PartialLabelModule:
    return load_module(checkpoint)[0]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five synthetic scenes (one in a subfolder), a manifest of their labels, and files to be ignored."""
    root = tmp_path_factory.mktemp("images")
    data = make_synthetic(len(NAMES), seed=7, image_size=RENDER_SIZE)
    for index, name in enumerate(NAMES):
        (root / name).parent.mkdir(exist_ok=True)
        data.load_image(index).save(root / name)
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    data.load_image(0).save(root / ".hidden" / "skip.png")
    manifest = MultiLabelData(NAMES, data.labels, data.class_names, image_paths=[root / name for name in NAMES])
    write_csv_manifest(manifest, root / "labels.csv")
    return root


def reference_probabilities(module: PartialLabelModule, paths: list[Path]) -> np.ndarray:
    """sigmoid(logits) of the network on the evaluation transform, computed here independently of predict."""
    from PIL import Image

    backbone = module.network.backbone
    transform = build_transform(module.config.data.image_size, "none", backbone.mean, backbone.std)
    images = torch.stack([transform(Image.open(path).convert("RGB")) for path in paths])
    with torch.no_grad():
        return torch.sigmoid(module.network(images).logits).numpy()


def test_predict_folder_matches_the_network(module: PartialLabelModule, folder: Path) -> None:
    # Batch size 2 over 5 images leaves a ragged last batch.
    result = predict_module(module, folder, batch_size=2)
    assert result.images == NAMES  # recursive, sorted, hidden folders and non-images left out
    assert result.class_names == module.class_names
    assert result.probabilities.shape == (5, len(module.class_names))
    assert result.probabilities.dtype == np.float32
    expected = reference_probabilities(module, [folder / name for name in NAMES])
    np.testing.assert_allclose(result.probabilities, expected, atol=1e-6, rtol=0)
    # A single file gives its own name and the same row.
    single = predict_module(module, folder / NAMES[2])
    assert single.images == ["scene_002.png"]
    np.testing.assert_allclose(single.probabilities[0], expected[2], atol=1e-6, rtol=0)


def test_threshold_and_top_k_semantics(module: PartialLabelModule, folder: Path) -> None:
    result = predict_module(module, folder, top_k=3)
    selected = result.selected()
    assert (selected.sum(axis=1) == 3).all()
    for row, probs in zip(selected, result.probabilities, strict=True):
        assert probs[row].min() >= probs[~row].max()  # the three largest, regardless of any threshold
    result.top_k, result.threshold = None, 0.0
    assert result.selected().all()
    result.threshold = 1.0
    assert not result.selected().any()

    # Exact semantics on known numbers: ties keep class order, images with no label stay in JSON only.
    toy = Predictions(["a", "b"], ["x", "y", "z"], np.array([[0.9, 0.5, 0.2], [0.1, 0.4, 0.4]], np.float32))
    assert toy.selected().tolist() == [[True, True, False], [False, False, False]]
    toy.top_k = 1
    assert toy.ranked(1) == [("y", pytest.approx(0.4))]
    toy.top_k = 5  # more than the classes: all of them
    assert toy.selected().all()


def test_tuned_per_class_thresholds(module: PartialLabelModule, folder: Path, tmp_path: Path) -> None:
    assert module.thresholds_tuned and len(module.decision_thresholds) == len(module.class_names)
    assert any(t != 0.5 for t in module.decision_thresholds)  # otherwise this would not tell the rules apart
    tuned = predict_module(module, folder, threshold="tuned")
    cutoffs = np.asarray(module.decision_thresholds)
    np.testing.assert_array_equal(tuned.thresholds, cutoffs)
    np.testing.assert_array_equal(tuned.selected(), tuned.probabilities >= cutoffs[None, :])
    for i in range(len(tuned)):
        chosen = {label for label, _ in tuned.ranked(i)}
        assert chosen == {module.class_names[c] for c in np.flatnonzero(tuned.selected()[i])}
    assert tuned.rule == "p ≥ tuned per-class threshold" and tuned.rule in tuned.table_lines()[0]
    tuned.write(tmp_path / "tuned.csv")
    rows = list(csv.reader((tmp_path / "tuned.csv").open()))[1:]
    assert len(rows) == int(tuned.selected().sum())
    # "auto" is "tuned" here; a number, given as text or float, applies to every class.
    assert np.array_equal(predict_module(module, folder, threshold="auto").thresholds, cutoffs)
    as_text = predict_module(module, folder, threshold="0.3")
    assert as_text.thresholds is None and as_text.threshold == 0.3
    assert np.array_equal(as_text.selected(), as_text.probabilities >= 0.3)
    assert resolve_threshold(0.25, module) == (0.25, None)
    for bad in ("best", "1.5", -0.1):
        with pytest.raises(ConfigError, match="threshold"):
            resolve_threshold(bad, module)
    # A hand-built case: class thresholds 0.6 / 0.3 / 0.95.
    toy = Predictions(["a"], ["x", "y", "z"], np.array([[0.7, 0.35, 0.9]], np.float32))
    toy.thresholds = np.array([0.6, 0.3, 0.95])
    assert toy.selected().tolist() == [[True, True, False]]
    assert [label for label, _ in toy.ranked(0)] == ["x", "y"]


def test_csv_and_json_outputs(module: PartialLabelModule, folder: Path, tmp_path: Path) -> None:
    result = predict_module(module, folder, threshold=0.5)
    result.write(tmp_path / "long.csv")
    with (tmp_path / "long.csv").open() as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["image", "label", "probability"]
    expected_rows = [
        (NAMES[i], module.class_names[c], float(result.probabilities[i, c]))
        for i in range(5)
        for c in np.argsort(-result.probabilities[i], kind="stable")
        if result.probabilities[i, c] >= 0.5
    ]
    assert [(r[0], r[1]) for r in rows[1:]] == [(image, label) for image, label, _ in expected_rows]
    np.testing.assert_allclose([float(r[2]) for r in rows[1:]], [p for *_, p in expected_rows], atol=1e-5)

    result.top_k = 2
    result.write(tmp_path / "top.json", all_scores=True)
    records = json.loads((tmp_path / "top.json").read_text())
    assert [r["image"] for r in records] == NAMES
    for i, record in enumerate(records):
        labels = record["labels"]
        assert len(labels) == 2 and labels[0]["probability"] >= labels[1]["probability"]
        best = module.class_names[int(np.argmax(result.probabilities[i]))]
        assert labels[0]["label"] == best
        assert record["probabilities"][best] == pytest.approx(float(result.probabilities[i].max()), abs=1e-6)

    with pytest.raises(ValueError, match=r"\.csv or \.json"):
        result.write(tmp_path / "out.txt")


def test_csv_spec_and_wide_scores_feed_hst_metrics(
    module: PartialLabelModule, folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from_spec = predict_module(module, f"csv:{folder / 'labels.csv'}", batch_size=4)
    from_folder = predict_module(module, folder, batch_size=4)
    assert from_spec.images == NAMES  # the manifest's image cells
    np.testing.assert_allclose(from_spec.probabilities, from_folder.probabilities, atol=1e-6, rtol=0)
    scores = tmp_path / "scores.csv"
    from_spec.write(scores, all_scores=True)
    header = scores.read_text().splitlines()[0].split(",")
    assert header == ["image", *module.class_names]
    code = main(
        ["metrics", "--scores", str(scores), "--labels", str(folder / "labels.csv"), "--scores-are-probabilities"]
    )
    assert code == 0 and "mAP" in capsys.readouterr().out


def test_inputs_resolution_and_errors(folder: Path, tmp_path: Path) -> None:
    names = ["a", "b"]
    assert [p.name for p in find_images(folder)] == [Path(n).name for n in NAMES]
    assert resolve_inputs(folder / NAMES[0], names).image_ids == ["scene_000.png"]
    with pytest.raises(FileNotFoundError, match=re.escape("nowhere.png")):
        resolve_inputs(tmp_path / "nowhere.png", names)
    with pytest.raises(DataError, match="data spec"):
        resolve_inputs(folder / "labels.csv", names)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no images found"):
        resolve_inputs(empty, names)


def test_unreadable_images_error_or_skip(
    module: PartialLabelModule, folder: Path, tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in NAMES[:3]:
        (broken / name).write_bytes((folder / name).read_bytes())
    (broken / "scene_001b.png").write_bytes(b"this is not a PNG")
    with pytest.raises(DataError, match=re.escape("scene_001b.png")):
        predict_module(module, broken)
    result = predict_module(module, broken, on_error="skip", batch_size=2)
    assert result.images == NAMES[:3]
    assert [image for image, _ in result.skipped] == ["scene_001b.png"]

    # A manifest row whose file is missing names that file.
    manifest = broken / "labels.csv"
    manifest.write_text("image,x\nscene_000.png,1\ngone.png,0\n")
    with pytest.raises(DataError, match=re.escape("gone.png")):
        predict_module(module, f"csv:{manifest}")
    assert predict_module(module, f"csv:{manifest}", on_error="skip").images == ["scene_000.png"]

    assert main(["predict", str(checkpoint), str(broken)]) == 2
    assert "scene_001b.png" in capsys.readouterr().err
    assert main(["predict", str(checkpoint), str(broken), "--on-error", "skip"]) == 0
    captured = capsys.readouterr()
    assert "skipped 1 unreadable" in captured.err and "3 images" in captured.out


def test_cli_predict_writes_files(
    checkpoint: Path, folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "p.json"
    assert main(["predict", str(checkpoint), str(folder), "--top-k", "2", "--out", str(out), "--batch-size", "3"]) == 0
    printed = capsys.readouterr().out
    assert "predicted labels (top 2)" in printed and "sub/scene_004.png" in printed and f"wrote {out}" in printed
    records = json.loads(out.read_text())
    api = predict(checkpoint, folder, top_k=2)
    assert [[label["label"] for label in r["labels"]] for r in records] == [
        [label for label, _ in api.ranked(i)] for i in range(len(api))
    ]
    assert main(["predict", str(checkpoint), str(folder), "--out", str(tmp_path / "p.txt")]) == 2


def test_cli_export_onnx_runs_in_onnxruntime(
    module: PartialLabelModule, checkpoint: Path, folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    out = tmp_path / "model.onnx"
    assert main(["export", str(checkpoint), "--format", "onnx", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "parity: max |onnxruntime − torch|" in printed and ": ok" in printed
    sidecar = json.loads(sidecar_path(out).read_text())
    assert sidecar["class_names"] == module.class_names
    assert sidecar["image_size"] == 64 and sidecar["output"]["name"] == "probabilities"
    assert sidecar["parity_max_abs_diff"] <= 1e-4
    # Preprocess real images only from what the sidecar documents, then compare with hst predict.
    transform = build_transform(sidecar["image_size"], "none", tuple(sidecar["mean"]), tuple(sidecar["std"]))
    from PIL import Image

    images = torch.stack([transform(Image.open(folder / n).convert("RGB")) for n in NAMES]).numpy()
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": images})[0]
    assert got.shape == (5, len(module.class_names))
    expected = predict_module(module, folder).probabilities
    assert np.abs(got - expected).max() <= 1e-4


@pytest.mark.filterwarnings("ignore:.*torch.jit.load.*:FutureWarning")
def test_torchscript_export_and_parity_failure(
    module: PartialLabelModule, folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "model.pt"
    result = export_module(module, out, "torchscript")
    assert result.max_abs_diff <= 1e-4 and out.is_file() and sidecar_path(out).is_file()
    sidecar = json.loads(sidecar_path(out).read_text())
    assert list(sidecar["thresholds"]) == module.class_names and sidecar["thresholds_tuned"] is True
    assert list(sidecar["thresholds"].values()) == module.decision_thresholds
    loaded = torch.jit.load(str(out))
    images = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = torch.sigmoid(module.network(images).logits)
        np.testing.assert_allclose(loaded(images).numpy(), expected.numpy(), atol=1e-5, rtol=0)

    # A runtime that disagrees beyond the tolerance fails the export and leaves no files behind.
    real = export_mod._run_torchscript
    monkeypatch.setattr(export_mod, "_run_torchscript", lambda path, batch: real(path, batch) + 1e-3)
    bad = tmp_path / "bad.pt"
    with pytest.raises(ParityError, match="differ from PyTorch"):
        export_module(module, bad, "torchscript")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "model.pt.json"]
