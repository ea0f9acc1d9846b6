"""Every registered method: a finite, differentiable loss, and each method's label policy on known inputs."""

from __future__ import annotations

import io
import math
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hst.methods.hst as hst_module
import hst.methods.semantic_transfer as shared_module
import hst.methods.sst as sst_module
from hst.config import MethodConfig
from hst.losses import partial_bce
from hst.methods import METHODS, Method, StepContext, available, create
from hst.methods.base import FeatureBatch
from hst.methods.llr import large_loss_rejection_loss, rejection_rate
from hst.methods.sst import SST, FeatureBank, fixed_threshold_pseudo_labels, sst_threshold
from hst.models.cst import Prototypes
from hst.models.network import NetworkOutput

BATCH, CLASSES, DIM = 6, 5, 8


def _config(**changes: object) -> MethodConfig:
    base = {
        "pseudo_label_epoch": 1,
        "prototypes_per_class": 2,
        "kmeans_iters": 5,
        "intra_threshold": 0.5,
        "inter_threshold": 0.5,
        "sst_bank_size": 4,
        "llr_delta_rel": 0.1,
    }
    return MethodConfig(**(base | changes))  # type: ignore[arg-type]


def _labels(rows: int, seed: int) -> torch.Tensor:
    """Random int8 labels in {−1, 0, 1} with every row and every class holding a known positive."""
    gen = torch.Generator().manual_seed(seed)
    labels = (torch.randint(0, 3, (rows, CLASSES), generator=gen) - 1).to(torch.int8)
    labels[torch.arange(rows), torch.arange(rows) % CLASSES] = 1
    return labels


def _output(seed: int) -> NetworkOutput:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(BATCH, CLASSES, generator=gen).requires_grad_()
    semantic = torch.randn(BATCH, CLASSES, DIM, generator=gen).requires_grad_()
    return NetworkOutput(logits, semantic)


def _feature_source(split: str = "train") -> Iterator[FeatureBatch]:
    gen = torch.Generator().manual_seed(99 if split == "train" else 98)
    for start in (0, 6):
        labels = _labels(6, seed=start)
        full = torch.where(labels == 0, torch.ones_like(labels), labels)
        yield FeatureBatch(
            torch.arange(start, start + 6),
            torch.randn(6, CLASSES, generator=gen),
            torch.randn(6, CLASSES, DIM, generator=gen),
            labels,
            full,
            torch.randn(6, 2 * DIM, generator=gen),
        )


def _ctx(epoch: int, batch_index: int = 1, full_labels: torch.Tensor | None = None) -> StepContext:
    return StepContext(epoch, batch_index, 2, torch.arange(BATCH), full_labels)


def test_registry_holds_every_method() -> None:
    expected = {
        "hst",
        "hst_no_ist",
        "hst_no_cst",
        "hst_no_cst_neighbours",
        "hst_no_dtl",
        "hst_dtl",
        "hst_pseudo_negatives",
        "hst_no_classifier_evidence",
        "partial_bce",
        "linear_partial_bce",
        "assume_negative",
        "sst",
        "large_loss_rejection",
        "linear_assume_negative",
    }
    assert set(available()) == expected == set(METHODS)
    with pytest.raises(ValueError, match="unknown method"):
        create("nope", _config(), CLASSES, DIM, 12)


@pytest.mark.parametrize("name", sorted(METHODS))
@pytest.mark.parametrize("epoch", [0, 2])
def test_every_method_gives_a_finite_differentiable_loss(name: str, epoch: int) -> None:
    torch.manual_seed(0)
    method = create(name, _config(), CLASSES, DIM, 12)
    assert isinstance(method, Method)
    start_logs = method.on_train_epoch_start(epoch, _feature_source)
    assert all(math.isfinite(v) for v in start_logs.values())
    output, labels = _output(seed=epoch), _labels(BATCH, seed=7)
    full = torch.where(labels == 0, torch.ones_like(labels), labels)
    result = method.training_loss(output, labels, _ctx(epoch, full_labels=full))
    assert result.loss.ndim == 0 and torch.isfinite(result.loss)
    assert all(math.isfinite(v) for v in result.logs.values())
    result.loss.backward()
    assert output.logits.grad is not None and torch.isfinite(output.logits.grad).all()
    assert output.logits.grad.abs().sum() > 0
    if method.needs_semantic:
        assert output.semantic.grad is not None and torch.isfinite(output.semantic.grad).all()
        assert output.semantic.grad.abs().sum() > 0
    end_logs = method.on_train_epoch_end(epoch)
    assert all(math.isfinite(v) for v in end_logs.values())
    if epoch >= 1 and name in {"hst_dtl", "sst"}:
        assert "intra_pseudo_count" in result.logs and "inter_pseudo_count" in result.logs
    if epoch >= 1 and name == "hst":
        # Calibrated pseudo labels are fixed at the epoch start, with their quality against the full labels.
        assert "pseudo_all_pos_count" in start_logs and "pseudo_all_neg_possible" in start_logs


# ---- pseudo-label policies ------------------------------------------------------------------------


class _FixedPairs(nn.Module):
    """Stands in for the IST head: the same pair logits for every image."""

    def __init__(self, probabilities: list[float]) -> None:
        super().__init__()
        p = torch.tensor(probabilities)
        self.pair_logits = torch.log(p) - torch.log1p(-p)

    def forward(self, semantic: torch.Tensor) -> torch.Tensor:
        return self.pair_logits.expand(semantic.shape[0], -1) + 0 * semantic.sum()


# Pairs (0,1) (0,2) (0,3) (1,2) (1,3) (2,3); 0.5 is exact (logit 0) and sits on the threshold.
PAIR_PROBABILITIES = [0.9, 0.5, 0.95, 0.8, 0.01, 0.99]
IST_LABELS = torch.tensor([[1, 0, 0, -1], [0, 0, 0, 0], [1, 1, 0, 0]], dtype=torch.int8)


def _recorder(monkeypatch: pytest.MonkeyPatch, *modules: object) -> list[torch.Tensor]:
    """Record the label argument of every partial_bce call the given modules make."""
    calls: list[torch.Tensor] = []

    def recording(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        calls.append(labels.clone())
        return partial_bce(logits, labels)

    for module in modules:
        monkeypatch.setattr(module, "partial_bce", recording)
    return calls


@pytest.mark.parametrize(
    ("name", "expected_row0"),
    # HST keeps a score equal to θ unlabelled (q = s − θ must be > 0); SST labels s ≥ θ.
    [("hst", [1, 1, 0, -1]), ("sst", [1, 1, 1, -1])],
)
def test_ist_pseudo_labels_only_fill_unknown_entries_above_threshold(
    monkeypatch: pytest.MonkeyPatch, name: str, expected_row0: list[int]
) -> None:
    config = _config(
        use_cst=False, sst_threshold_start=0.5, sst_threshold_min=0.0, learn_thresholds=False, thresholds="fixed"
    )
    method = create(name, config, 4, DIM, 3)
    method.ist_head = _FixedPairs(PAIR_PROBABILITIES)
    # HST and SST share the known-label and co-occurrence step (semantic_transfer), so all three are recorded.
    calls = _recorder(monkeypatch, hst_module, sst_module, shared_module)
    output = NetworkOutput(torch.zeros(3, 4, requires_grad=True), torch.zeros(3, 4, DIM))
    method.training_loss(output, IST_LABELS, StepContext(1, 0, 1, torch.arange(3)))
    assert len(calls) == 2 and torch.equal(calls[0], IST_LABELS)
    # Row 1 has no known positive; in row 2 class 2 scores (0.5+0.8)/2 and class 3 (0.95+0.01)/2.
    expected = torch.tensor([expected_row0, [0, 0, 0, 0], [1, 1, 1, 0]], dtype=torch.int8)
    assert torch.equal(calls[1], expected)


# Three classes, two-dimensional features; known positives: (0, 0) and (2, 2).
CST_LABELS = torch.tensor([[1, 0, 0], [0, -1, 0], [0, 0, 1]], dtype=torch.int8)
CST_SEMANTIC = torch.tensor(
    [
        [[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]],
        [[2.0, 0.0], [0.0, 1.0], [0.0, 1.0]],
        [[1.0, 1.0], [1.0, 0.0], [3.0, 4.0]],
    ]
)


def test_hst_cst_pseudo_labels_from_prototypes(monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config(use_ist=False, inter_threshold=0.6, thresholds="fixed", pseudo_label_epoch=0)
    method = create("hst", config, 3, 2, 3)
    # Class 0: two prototypes along x; class 1: one along y (second slot invalid); class 2: none.
    centers = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    valid = torch.tensor([[True, True], [True, False], [False, False]])
    method.prototypes = Prototypes(centers, valid)
    calls = _recorder(monkeypatch, hst_module)
    output = NetworkOutput(torch.zeros(3, 3, requires_grad=True), CST_SEMANTIC.clone().requires_grad_())
    method.training_loss(output, CST_LABELS, StepContext(0, 0, 1, torch.arange(3)))
    expected = torch.tensor([[1, 1, 0], [1, -1, 0], [1, 0, 1]], dtype=torch.int8)
    assert torch.equal(calls[-1], expected)


def test_sst_cst_pseudo_labels_from_the_memory_bank(monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config(
        use_ist=False, sst_bank_size=2, sst_threshold_start=0.6, sst_threshold_min=0.0, pseudo_label_epoch=0
    )
    method = create("sst", config, 3, 2, 3)
    assert isinstance(method, SST) and method.bank is not None
    method.bank.push(torch.tensor([0, 1]), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    calls = _recorder(monkeypatch, sst_module)
    output = NetworkOutput(torch.zeros(3, 3, requires_grad=True), CST_SEMANTIC.clone().requires_grad_())
    result = method.training_loss(output, CST_LABELS, StepContext(0, 0, 1, torch.arange(3)))
    # The batch's known positives enter the bank first: class 0 holds x twice, class 2 holds (3, 4) once.
    assert method.bank.count.tolist() == [2, 1, 1]
    # (1, 0) at class 2 and (0, 1) at class 1 match their only bank entry but average with a zero slot
    # (published behaviour): 0.6/2 and 1/2 stay below 0.6.
    expected = torch.tensor([[1, 0, 0], [1, -1, 0], [1, 0, 1]], dtype=torch.int8)
    assert torch.equal(calls[-1], expected)
    assert result.logs["inter_pseudo_count"] == 2.0 and result.logs["sst_threshold"] == pytest.approx(0.6)


def test_fixed_threshold_rule_keeps_known_labels() -> None:
    labels = torch.tensor([[1, -1, 0, 0, 0]], dtype=torch.int8)
    scores = torch.tensor([[0.0, 0.99, 0.75, 0.7499, 1.0]])
    pseudo = fixed_threshold_pseudo_labels(labels, scores, 0.75)
    assert pseudo.tolist() == [[1, -1, 1, 0, 1]] and pseudo.dtype == torch.int8


def test_sst_threshold_schedule() -> None:
    config = MethodConfig(pseudo_label_epoch=5)
    assert [sst_threshold(config, e) for e in range(5)] == [None] * 5
    values = [sst_threshold(config, e) for e in range(5, 17)]
    expected = [0.95, 0.925, 0.9, 0.875, 0.85, 0.825, 0.8, 0.775, 0.75, 0.75, 0.75, 0.75]
    assert values == pytest.approx(expected)
    method = create("sst", config, CLASSES, DIM, 12)
    assert method.on_train_epoch_start(6, _feature_source)["sst_threshold"] == pytest.approx(0.925)
    assert "sst_threshold" not in method.on_train_epoch_start(4, _feature_source)


def test_feature_bank_is_fifo_and_counts_filled_slots() -> None:
    bank = FeatureBank(num_classes=2, size=3, dim=1)
    assert bank.count.tolist() == [0, 0] and bank.features.abs().sum() == 0
    bank.push(torch.tensor([0, 1, 0]), torch.tensor([[1.0], [10.0], [2.0]]))
    assert bank.count.tolist() == [2, 1]
    assert bank.newest_first()[:, :, 0].tolist() == [[2.0, 1.0, 0.0], [10.0, 0.0, 0.0]]
    bank.push(torch.tensor([0, 0, 0]), torch.tensor([[3.0], [4.0], [5.0]]))
    assert bank.count.tolist() == [3, 1]
    assert bank.newest_first()[0, :, 0].tolist() == [5.0, 4.0, 3.0]
    # One push longer than the bank keeps its last `size` features of that class.
    bank.push(torch.full((7,), 1), torch.arange(11.0, 18.0).unsqueeze(1))
    assert bank.newest_first()[:, :, 0].tolist() == [[5.0, 4.0, 3.0], [17.0, 16.0, 15.0]]
    assert bank.count.tolist() == [3, 3]


def test_sst_extra_state_round_trip() -> None:
    config = _config(sst_bank_size=3)
    first = create("sst", config, CLASSES, DIM, 12)
    output, labels = _output(seed=3), _labels(BATCH, seed=4)
    first.training_loss(output, labels, _ctx(0))
    buffer = io.BytesIO()
    torch.save(first.extra_state(), buffer)
    buffer.seek(0)
    second = create("sst", config, CLASSES, DIM, 12)
    second.load_extra_state(torch.load(buffer))
    assert isinstance(first, SST) and isinstance(second, SST)
    assert first.bank is not None and second.bank is not None
    assert second.bank.count.sum() > 0
    for key in ("features", "position", "count"):
        assert torch.equal(getattr(first.bank, key), getattr(second.bank, key))
    # The restored write positions continue the FIFO exactly where the saved run would.
    more = torch.randn(4, DIM)
    classes = torch.tensor([0, 0, 1, 2])
    first.bank.push(classes, more)
    second.bank.push(classes, more)
    assert torch.equal(first.bank.newest_first(), second.bank.newest_first())


# ---- LL-R and the baselines -----------------------------------------------------------------------


def test_llr_rejects_the_largest_unknown_losses_only() -> None:
    labels = torch.tensor([[1, 0, 0, -1], [0, 0, -1, 0]], dtype=torch.int8)
    # Known entries carry the largest losses of all (positive at −9, negative at +9) and must stay.
    logits = torch.tensor([[-9.0, 3.0, 0.5, 9.0], [2.0, -1.0, 8.0, 1.0]], requires_grad=True)
    losses = F.binary_cross_entropy_with_logits(logits, (labels > 0).float(), reduction="none")
    method = create("large_loss_rejection", _config(llr_delta_rel=0.125), 4, DIM, 2)

    result = method.training_loss(
        NetworkOutput(logits, torch.zeros(2, 4, 1)), labels, StepContext(2, 0, 1, torch.arange(2))
    )
    # rate 0.25 of 8 entries: the two largest unknown-as-negative losses, at logits 3.0 and 2.0.
    rejected = torch.zeros(2, 4, dtype=torch.bool)
    rejected[0, 1] = rejected[1, 0] = True
    assert result.logs["llr_rejection_rate"] == 0.25 and result.logs["llr_rejected_count"] == 2.0
    assert torch.allclose(result.loss, losses[~rejected].sum() / 8)
    result.loss.backward()
    assert logits.grad is not None and logits.grad[rejected].abs().sum() == 0
    assert (logits.grad[~rejected] != 0).all()

    _, mask = large_loss_rejection_loss(logits, labels, 0.25)
    assert torch.equal(mask, rejected)
    # Epoch 0 rejects nothing: plain assume-negative.
    loss0, mask0 = large_loss_rejection_loss(logits, labels, rejection_rate(0.125, 0))
    assert not mask0.any() and torch.allclose(loss0, losses.mean())
    # A rate beyond the unknown share rejects every unknown entry and still no known one.
    loss1, mask1 = large_loss_rejection_loss(logits, labels, rejection_rate(0.125, 100))
    assert torch.equal(mask1, labels == 0)
    assert torch.allclose(loss1, losses[labels != 0].sum() / 8)


def test_llr_count_ignores_float_noise_in_the_rate() -> None:
    # 0.005·14·100 is 7.000000000000001 in floating point; the count must still be 7.
    logits = torch.linspace(-3, 3, 100).view(10, 10)
    _, mask = large_loss_rejection_loss(logits, torch.zeros(10, 10), rejection_rate(0.005, 14))
    assert int(mask.sum()) == 7
    assert torch.equal(mask.flatten().nonzero().flatten(), torch.arange(93, 100))


def test_assume_negative_is_bce_with_unknown_as_negative() -> None:
    output, labels = _output(seed=5), _labels(BATCH, seed=6)
    assert (labels == 0).any()
    method = create("assume_negative", _config(), CLASSES, DIM, 12)
    loss = method.training_loss(output, labels, _ctx(0)).loss
    expected = F.binary_cross_entropy_with_logits(output.logits, (labels > 0).float())
    assert torch.allclose(loss, expected)


def test_partial_bce_ignores_unknown_entries() -> None:
    output, labels = _output(seed=8), _labels(BATCH, seed=9)
    known = labels != 0
    assert (~known).any()
    method = create("partial_bce", _config(), CLASSES, DIM, 12)
    loss = method.training_loss(output, labels, _ctx(0)).loss
    expected = F.binary_cross_entropy_with_logits(output.logits[known], (labels[known] > 0).float())
    assert torch.allclose(loss, expected)
    changed = output.logits.detach().clone()
    changed[~known] = 50.0
    again = method.training_loss(NetworkOutput(changed, output.semantic), labels, _ctx(0)).loss
    assert torch.allclose(again, loss)


def test_linear_baseline_preset_switches_the_head() -> None:
    from hst.config import TrainConfig, resolve_config
    from hst.methods import apply_model_preset

    config = resolve_config(TrainConfig, None, ["method.name=linear_assume_negative"])
    assert apply_model_preset(config).model.head == "linear"
    plain = resolve_config(TrainConfig, None, ["method.name=hst"])
    assert apply_model_preset(plain) == plain
