"""benchmarks/speed.py at tiny sizes: it runs end to end and its two IST formulations agree."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hst.models.ist import ISTHead

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import reference_hst as ref  # noqa: E402
import speed  # noqa: E402

CPU = torch.device("cpu")
TINY = speed.IstDims(feature_dim=32, hidden_dim=16, output_dim=32)


def test_published_formulation_matches_reference_and_ist_head() -> None:
    torch.manual_seed(0)
    head = ISTHead(5, 32, 16, 32)
    with torch.no_grad():  # ReLUs on both sides
        head.fc2.bias.uniform_(-0.5, 0.5)
    semantic = torch.randn(3, 5, 32, requires_grad=True)
    published = speed.published_ist(head, semantic)
    expected = ref.ist_head(head, semantic.double())
    ref.assert_close_rel(published, expected)
    ref.assert_close_rel(head(semantic), expected)
    inputs = [*head.parameters(), semantic]
    ref.assert_grads_close(ref.grads(published, inputs), ref.grads(expected, inputs))


def test_ist_benchmark_rows_agree_and_are_timed() -> None:
    rows = speed.ist_benchmark([5], 4, TINY, 1, CPU, False, max_published_elements=None, fallback_batches=(1, 2))
    assert len(rows) == 1
    row = rows[0]
    assert (row.num_classes, row.batch, row.note) == (5, 4, "")
    assert row.published_ms > 0 and row.ours_ms > 0
    assert row.speedup == pytest.approx(row.published_ms / row.ours_ms)
    assert row.output_diff < 1e-5 and row.grad_diff < 1e-5
    # both float32 formulations are checked against the published one in float64
    assert 0 <= row.grad_error_ours < 1e-5 and 0 <= row.grad_error_published < 1e-5
    table = speed.format_ist_table(rows, TINY, 1, CPU)
    assert re.search(r"^\s+5\s+4\s", table, re.MULTILINE)


def test_ist_benchmark_extrapolates_oversized_published_runs() -> None:
    rows = speed.ist_benchmark([5], 4, TINY, 1, CPU, False, max_published_elements=1, fallback_batches=(1, 2))
    assert [(r.num_classes, r.batch) for r in rows] == [(5, 2), (5, 4)]
    assert "measured at B=2" in rows[0].note
    assert "EXTRAPOLATED" in rows[1].note and "B=1" in rows[1].note
    # the extrapolated row compares ours at B=4 with the published rows it has (same seeded inputs)
    assert rows[1].output_diff < 1e-5 and rows[1].grad_diff < 1e-5
    assert speed.linear_at(32, 4, 10.0, 8, 20.0) == pytest.approx(80.0)


def test_measurement_in_a_fresh_process_sees_the_pair_activations() -> None:
    num, batch, dims = 30, 8, speed.IstDims(64, 32, 512)
    activation = batch * num * (num - 1) // 2 * dims.output_dim * 4
    kwargs = {"num_classes": num, "batch": batch, "full_batch": batch, "dims": dims, "repeats": 1, "device": "cpu"}
    published = speed.run_isolated(True, speed.measure_ist, impl="published", **kwargs)
    ours = speed.measure_ist(impl="ours", **kwargs)
    if np.isnan(published.peak_bytes):
        pytest.skip("no /proc/self/status on this system")
    # several B×P×output activations are alive at once in the published backward
    assert published.peak_bytes > 2 * activation
    assert speed.relative_difference(ours.output, published.output) < 1e-5
    assert speed.relative_difference(ours.grad_semantic, published.grad_semantic) < 1e-5


def test_peak_memory_counts_a_new_allocation() -> None:
    memory = speed.PeakMemory(CPU)
    memory.start()
    block = torch.ones(16 * 2**20)  # 64 MiB, touched
    peak = memory.peak()
    del block
    if np.isnan(peak):
        pytest.skip("no /proc/self/status on this system")
    assert peak >= 60 * 2**20


def test_summary_lines_name_the_class_counts() -> None:
    plan = speed.make_plan(speed.parse_args(["--device", "cpu"]), CPU)
    assert plan.ist_classes == [20, 80, 200] and plan.step_classes == [80, 200]
    assert plan.backbones[0] == ("tf_efficientnet_lite0", "offline") and plan.image_size == 448
    ist = [
        speed.IstRow(80, 32, 900.0, 30.0, 1.0, 1.0, 0.0, 0.0),
        speed.IstRow(200, 8, 50.0, 1.0, 1.0, 1.0, 0.0, 0.0, note="both measured at B=8"),
        speed.IstRow(200, 32, 500.0, 4.0, 1.0, 1.0, 0.0, 0.0),
    ]
    steps = []
    for num, hst_ms in [(80, 110.0), (200, 125.0)]:
        row = speed.StepRow("tf_efficientnet_lite0", 448, 8, num)
        row.phases_ms = {"hst": {"total": hst_ms}, "partial_bce": {"total": 100.0}}
        steps.append(row)
    assert speed.summary_lines(ist, steps, plan) == [
        "ist_speedup_c80 30.00",
        "step_ratio_c80 1.100",
        "step_ratio_c200 1.250",
    ]


def test_quick_run_ends_with_the_three_summary_lines(capsys: pytest.CaptureFixture[str]) -> None:
    assert speed.main(["--quick", "--device", "cpu", "--no-isolate", "--profile", "--ist-kernel", "eager"]) == 0
    out = capsys.readouterr().out
    last = out.rstrip("\n").splitlines()[-3:]
    assert re.fullmatch(r"ist_speedup_c5 \d+\.\d+", last[0])
    assert re.fullmatch(r"step_ratio_c5 \d+\.\d+", last[1])
    assert re.fullmatch(r"step_ratio_c6 \d+\.\d+", last[2])
    assert "(a) IST head forward+backward" in out and "(b) one training step" in out
    assert re.search(r"^tf_efficientnet_lite0\s+64\s+2\s+5 hst ", out, re.MULTILINE)
    assert re.search(r"^tf_efficientnet_lite0\s+64\s+2\s+6 partial_bce ", out, re.MULTILINE)
    assert "profile of one hst step" in out and "Self CPU" in out
    assert re.search(r"IST head alone C=5 B=2: [\d.]+ ms, of which fold [\d.]+ ms", out)
