"""Scaling out: data parallelism on the CPU (2 gloo processes against 1 process with the same global batch),
mixed precision and channels-last memory format."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from hst.config import TrainConfig, resolve_config
from hst.data.splits import prepare_splits
from hst.engine.datamodule import PartialLabelDataModule
from hst.engine.module import PartialLabelModule, load_module
from hst.engine.train import train
from hst.engine.trainer import build_trainer, precision_setting
from hst.metrics import evaluate

TINY = [
    # 74 images: 15 validation (odd, so the distributed sampler pads one process's share), 15 test and
    # 44 training images (even: both processes see every training image exactly once per epoch). One
    # step per epoch (44 images, or 22 per process), so both runs see the same images at every step.
    "data.train=synthetic:74",
    "data.val_fraction=0.2",
    "data.test_fraction=0.2",
    "data.val_labels=full",
    "data.image_size=64",
    "data.augment=none",
    # The gather is checked to 1e-4 on pixels: a front cache would round the last stage's input to float16 (1e-3).
    "data.feature_cache=off",
    "model.feature_dim=64",
    "model.hidden_dim=32",
    "trainer.epochs=4",
    "optim.lr=1e-3",
    "trainer.accelerator=cpu",
    "trainer.progress_bar=false",
    "method.pseudo_label_epoch=1",
    "method.prototype_every=1",
    "method.prototypes_per_class=3",
    "method.intra_threshold=0.5",
    "method.inter_threshold=0.5",
]

DRIVER = """
import json, sys
from pathlib import Path
import lightning as L
import torch
from hst.config import resolve_config
from hst.config import TrainConfig
from hst.engine.train import train

out = Path(sys.argv[2])


class SaveState(L.Callback):
    # Runs after the epoch's validation: each rank's prototypes and validation logits.
    def on_train_epoch_end(self, trainer, module):
        rank, epoch = trainer.global_rank, trainer.current_epoch
        prototypes = module.method.prototypes
        if prototypes is not None:
            name = f"prototypes-rank{rank}-epoch{epoch}.pt"
            torch.save({"centers": prototypes.centers, "valid": prototypes.valid}, out / name)
        logits, labels = module.last_scores["val"]
        torch.save({"logits": torch.from_numpy(logits), "labels": torch.from_numpy(labels)}, out / f"val-rank{rank}.pt")


train(resolve_config(TrainConfig, None, json.loads(sys.argv[1])), callbacks=[SaveState()])
"""


def _epoch_sums(run_dir: Path, column: str) -> list[float]:
    rows = csv.DictReader((run_dir / "csv" / "metrics.csv").open())
    return [float(row[column]) for row in rows if row.get(column)]


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path: Path) -> None:
    # The 2-process run goes first, in its own interpreter: Lightning starts rank 1 by running the same script.
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    overrides = [*TINY, "data.batch_size=22", "trainer.devices=2", f"trainer.output_dir={tmp_path / 'ddp'}"]
    done = subprocess.run(
        [sys.executable, str(driver), json.dumps(overrides), str(dumps)],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    single = train(
        resolve_config(TrainConfig, None, [*TINY, "data.batch_size=44", f"trainer.output_dir={tmp_path / 'one'}"])
    )

    # Rank 1 wrote into rank 0's run folder and nowhere else; rank 0 wrote the run's files.
    runs = list((tmp_path / "ddp").iterdir())
    assert len(runs) == 1
    run_dir = runs[0]
    for name in ("config.yaml", "metrics.json", "summary.txt", "thresholds.json", "checkpoints/best.ckpt"):
        assert (run_dir / name).is_file(), name
    assert "data parallel: 2 processes × batch 22 = 44 images per step" in (run_dir / "summary.txt").read_text()
    metrics = json.loads((run_dir / "metrics.json").read_text())

    # Every process clustered the same gathered features: identical prototypes on both ranks.
    for epoch in (1, 2, 3):
        rank0 = torch.load(dumps / f"prototypes-rank0-epoch{epoch}.pt", weights_only=True)
        rank1 = torch.load(dumps / f"prototypes-rank1-epoch{epoch}.pt", weights_only=True)
        assert torch.equal(rank0["centers"], rank1["centers"]) and torch.equal(rank0["valid"], rank1["valid"])
        assert rank0["valid"].any()

    # Validation is scored over the whole split: both ranks hold all 15 rows (gathered, the sampler's padding
    # dropped, in dataset order), computed with rank 0's BatchNorm statistics, the ones the checkpoint keeps.
    # Scoring the final checkpoint in one process gives the same logits and the logged mAP.
    module, config = load_module(run_dir / "checkpoints" / "last.ckpt")
    splits = prepare_splits(config.data)
    backbone = module.network.backbone
    loader = PartialLabelDataModule(splits, config.data, backbone.mean, backbone.std).val_dataloader()
    with torch.no_grad():
        logits = torch.cat([module(images) for _, images, _, _ in loader])
    rank0 = torch.load(dumps / "val-rank0.pt", weights_only=True)
    rank1 = torch.load(dumps / "val-rank1.pt", weights_only=True)
    assert rank0["logits"].shape == logits.shape == (15, 24)
    assert torch.equal(rank0["logits"], rank1["logits"])
    assert torch.equal(rank0["labels"], torch.from_numpy(splits.val.labels))
    torch.testing.assert_close(rank0["logits"], logits, atol=1e-4, rtol=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # classes without a known validation positive are left out of mAP
        one_process = evaluate(logits.numpy(), splits.val.labels, splits.val.class_names).mAP
    assert metrics["val_last_epoch"]["mAP"] == pytest.approx(one_process, abs=1e-6)

    # Pseudo labels are decided on the scores of both processes' rows: the withheld positives among the
    # unknown entries depend on the data only, so they match the single-process run exactly.
    column = "method/pseudo_all_pos_possible"
    assert _epoch_sums(run_dir, column) == _epoch_sums(single.run_dir, column)
    assert _epoch_sums(run_dir, column)[0] > 0

    # Same images per step: validation ends close to the single-process run. Not bit for bit: BatchNorm
    # statistics and the batch-level losses (co-occurrence, instance contrast) are per process. Changing
    # the seed alone moves this validation mAP by about 8 points; the two runs differ by about 1.3.
    assert metrics["val_last_epoch"]["mAP"] == pytest.approx(single.val_metrics["mAP"], abs=3.0)


# ---------------------------------------------------------------- precision and memory format


def _cpu_config(tmp_path: Path, *extra: str) -> TrainConfig:
    return resolve_config(TrainConfig, None, [*TINY, "data.batch_size=16", f"trainer.output_dir={tmp_path}", *extra])


def test_mixed_precision_falls_back_to_32_true_on_the_cpu(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = _cpu_config(tmp_path, "trainer.precision=bf16-mixed", "trainer.epochs=1")
    precision, note = precision_setting(config)
    assert precision == "32-true" and note is not None and "bf16-mixed" in note and "32-true" in note
    assert build_trainer(config, tmp_path, [], log=False).precision == "32-true"
    assert precision_setting(_cpu_config(tmp_path, "trainer.precision=16-mixed"))[0] == "32-true"
    assert precision_setting(_cpu_config(tmp_path)) == ("32-true", None)
    # Asking for a GPU keeps the request (Lightning itself reports a missing GPU).
    on_gpu = _cpu_config(tmp_path, "trainer.precision=bf16-mixed", "trainer.accelerator=gpu")
    assert precision_setting(on_gpu) == ("bf16-mixed", None)

    with caplog.at_level(logging.WARNING, logger="hst.engine.train"):
        result = train(config)
    assert note in caplog.text and note in result.summary_lines
    assert math.isfinite(result.test_metrics["mAP"])  # the fallback run trains and tests (its quality: test_engine)
    # The config keeps what was asked for, so the same run on a GPU machine uses bf16.
    assert "precision: bf16-mixed" in (result.run_dir / "config.yaml").read_text()


def test_channels_last_changes_the_memory_format_not_the_result(tmp_path: Path) -> None:
    outputs = []
    for flag in ("true", "false"):
        config = _cpu_config(tmp_path, f"model.channels_last={flag}")
        splits = prepare_splits(config.data)
        torch.manual_seed(0)
        module = PartialLabelModule(config, splits.train.class_names, splits.train.labels, len(splits.train))
        module.eval()
        conv = next(p for p in module.network.backbone.parameters() if p.ndim == 4 and p.shape[-1] > 1)
        assert conv.is_contiguous(memory_format=torch.channels_last) == (flag == "true")
        with torch.no_grad():
            outputs.append(module(torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))))
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-4, rtol=1e-4)
