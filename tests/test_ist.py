"""IST head, pair order, co-occurrence matrix and IST scores against the published formulation."""

from __future__ import annotations

import itertools

import pytest
import torch

import reference_hst as ref
from hst.losses import threshold_pseudo_labels
from hst.models.ist import (
    ISTHead,
    cooccurrence_matrix,
    intra_scores,
    num_classes_from_pairs,
    pair_index,
    row_blocks,
)
from hst.models.ist_kernel import block_pairs, folded_width


@pytest.mark.parametrize("num", [2, 5, 20])
def test_pair_index_follows_published_order(num: int) -> None:
    first, second = pair_index(num)
    exp_first, exp_second = ref.published_pairs(num)
    assert first.tolist() == exp_first and second.tolist() == exp_second
    assert num_classes_from_pairs(len(exp_first)) == num


def test_num_classes_from_pairs_rejects_bad_counts() -> None:
    with pytest.raises(ValueError, match="C\\(C-1\\)/2"):
        num_classes_from_pairs(4)


@pytest.mark.parametrize(
    ("num", "batch", "dims", "budget"),
    [
        (5, 3, (16, 8, 16), 2**26),
        (20, 4, (32, 16, 24), 700),  # tiny budget: many row blocks
        (80, 2, (64, 32, 64), 2**17),
    ],
)
def test_ist_head_matches_published_formulation(num: int, batch: int, dims: tuple, budget: int) -> None:
    torch.manual_seed(num)
    feature_dim, hidden_dim, output_dim = dims
    head = ISTHead(num, feature_dim, hidden_dim, output_dim, chunk_elements=budget)
    with torch.no_grad():  # larger biases so that many ReLUs sit on both sides
        head.fc2.bias.uniform_(-0.5, 0.5)
    semantic = torch.randn(batch, num, feature_dim, requires_grad=True)
    out = head(semantic)
    assert out.shape == (batch, num * (num - 1) // 2)
    expected = ref.ist_head(head, semantic.double())
    ref.assert_close_rel(out, expected)
    inputs = [*head.parameters(), semantic]
    ref.assert_grads_close(ref.grads(out, inputs), ref.grads(expected, inputs))
    if num == 20:
        assert len(row_blocks(num, batch * output_dim, budget)) > 5


@pytest.mark.parametrize(("num", "per_pair", "budget"), [(2, 1, 1), (7, 3, 10), (30, 5, 200), (30, 5, 1)])
def test_block_pairs_place_every_pair_once(num: int, per_pair: int, budget: int) -> None:
    """Each block reads and writes exactly its own pairs of the pair order (one-row blocks and tails of several)."""
    first, second = pair_index(num)
    seen = torch.zeros(len(first), dtype=torch.long)
    blocks = block_pairs(num, per_pair, budget, "cpu")
    for blk in blocks:
        rows = torch.arange(blk.r0, blk.r1)[:, None].expand(-1, blk.cols)
        cols = torch.arange(blk.r0 + 1, num)[None, :].expand(blk.rows, -1)
        valid = cols > rows
        ids = torch.arange(len(first), dtype=torch.float64)[:, None]
        got = blk.gather(ids)[..., 0]
        assert torch.equal(first[got[valid].long()], rows[valid]) and torch.equal(
            second[got[valid].long()], cols[valid]
        )
        assert torch.equal(got[~valid], torch.zeros(int((~valid).sum()), dtype=torch.float64))  # padding reads 0
        marks = torch.zeros(len(first), 1, dtype=torch.long)
        blk.scatter(marks, torch.ones(blk.rows, blk.cols, 1, dtype=torch.long))
        seen += marks[:, 0]
    assert torch.equal(seen, torch.ones_like(seen))
    assert budget > 1 or all(blk.rows == 1 for blk in blocks)
    assert folded_width(1024) == 1040 and folded_width(15) == 16


@pytest.mark.parametrize("trainable", ["front", "fold", "input"])
def test_ist_head_gradients_when_only_some_inputs_train(trainable: str) -> None:
    """The kernel skips the gradients nobody asked for and still gets the others right."""
    torch.manual_seed(11)
    head = ISTHead(9, 12, 6, 10, chunk_elements=150)
    with torch.no_grad():
        head.fc2.bias.uniform_(-0.5, 0.5)
    keep = {"front": ("fc1", "fc2"), "fold": ("fc3", "pair_classifier"), "input": ()}[trainable]
    for name, param in head.named_parameters():
        param.requires_grad_(name.split(".")[0] in keep)
    semantic = torch.randn(3, 9, 12, requires_grad=trainable == "input")
    out = head(semantic)
    expected = ref.ist_head(head, semantic.double())
    ref.assert_close_rel(out, expected)
    inputs = [p for p in head.parameters() if p.requires_grad] + ([semantic] if semantic.requires_grad else [])
    ref.assert_grads_close(ref.grads(out, inputs), ref.grads(expected, inputs))


@pytest.mark.slow
def test_compiled_kernel_matches_published_formulation() -> None:
    """The torch.compile kernel (one-off compilation, tens of seconds on CPU) gives the same values and grads."""
    torch.manual_seed(3)
    num, batch = 12, 3
    head = ISTHead(num, 16, 8, 16, chunk_elements=300, kernel="compiled")
    with torch.no_grad():
        head.fc2.bias.uniform_(-0.5, 0.5)
    semantic = torch.randn(batch, num, 16, requires_grad=True)
    out = head(semantic)
    # blocks of several shapes reach the dynamic kernel: one-row blocks (gradient written in place) and a tail
    rows = {blk.rows for blk in block_pairs(num, batch * 16, 300, "cpu")}
    assert 1 in rows and max(rows) > 1
    expected = ref.ist_head(head, semantic.double())
    ref.assert_close_rel(out, expected)
    inputs = [*head.parameters(), semantic]
    ref.assert_grads_close(ref.grads(out, inputs), ref.grads(expected, inputs))
    # only the fold trains: the kernel's other gradients go nowhere, the fold's are still right
    for param in [*head.fc1.parameters(), *head.fc2.parameters()]:
        param.requires_grad_(False)
    frozen = semantic.detach()
    out, expected = head(frozen), ref.ist_head(head, frozen.double())
    inputs = [p for p in head.parameters() if p.requires_grad]
    ref.assert_grads_close(ref.grads(out, inputs), ref.grads(expected, inputs))


def test_ist_head_rejects_unknown_kernel() -> None:
    with pytest.raises(ValueError, match="eager"):
        ISTHead(4, 8, 4, 8, kernel="fast")


def test_ist_state_dict_has_published_shapes() -> None:
    head = ISTHead(6, feature_dim=32, hidden_dim=16, output_dim=24)
    shapes = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    assert shapes == {
        "fc1.weight": (16, 32),
        "fc1.bias": (16,),
        "fc2.weight": (24, 32),
        "fc2.bias": (24,),
        "fc3.weight": (24, 24),
        "fc3.bias": (24,),
        "pair_classifier.weight": (15, 24),
        "pair_classifier.bias": (15,),
    }
    with pytest.raises(ValueError, match="B×6×D"):
        head(torch.randn(2, 5, 32))


@pytest.mark.parametrize(("num", "per_pair", "budget"), [(7, 3, 10), (200, 4096, 2**24), (30, 5, 1)])
def test_row_blocks_cover_rows_within_budget(num: int, per_pair: int, budget: int) -> None:
    blocks = row_blocks(num, per_pair, budget)
    assert blocks[0][0] == 0 and blocks[-1][1] == num - 1
    assert all(a[1] == b[0] for a, b in itertools.pairwise(blocks))
    for r0, r1 in blocks:
        assert r1 > r0
        assert (r1 - r0) * (num - r0 - 1) * per_pair <= budget or r1 - r0 == 1


def test_ist_head_chunked_at_200_classes() -> None:
    torch.manual_seed(7)
    num, batch = 200, 4
    head = ISTHead(num, chunk_elements=2**24)  # D = 1024, hidden 512, output 1024
    assert len(row_blocks(num, batch * 1024, head.chunk_elements)) > 4
    semantic = torch.randn(batch, num, 1024)
    with torch.no_grad():
        out = head(semantic)
        assert out.shape == (batch, 19900) and torch.isfinite(out).all()
        # spot-check pairs spread over the triangle against the published formulation
        first, second = pair_index(num)
        picks = torch.tensor([0, 1, 198, 199, 5000, 12345, 19898, 19899])
        g = head.fc1(semantic)
        hidden = torch.relu(head.fc2(torch.cat([g[:, first[picks]], g[:, second[picks]]], 2)))
        expected = (head.fc3(hidden) * head.pair_classifier.weight[picks]).sum(2) + head.pair_classifier.bias[picks]
    torch.testing.assert_close(out[:, picks], expected, rtol=1e-4, atol=1e-5)


def test_cooccurrence_matrix_matches_published_loop() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 15, dtype=torch.float64)
    matrix = cooccurrence_matrix(logits)
    torch.testing.assert_close(matrix, ref.cooccurrence_matrix(logits, 6))
    torch.testing.assert_close(matrix, matrix.transpose(1, 2))
    assert torch.equal(matrix.diagonal(dim1=1, dim2=2), torch.ones(3, 6, dtype=torch.float64))


def test_intra_scores_match_reference_and_handle_images_without_positives() -> None:
    torch.manual_seed(1)
    num = 6
    logits = torch.randn(4, 15, requires_grad=True)
    labels = torch.tensor(
        [[1, 0, -1, 1, 0, 0], [0, 0, 0, 0, 0, 0], [-1, -1, 0, -1, 0, 0], [0, 1, 0, 0, -1, 0]], dtype=torch.int8
    )
    scores = intra_scores(logits, labels)
    expected = ref.intra_scores(logits.double(), labels, num)
    ref.assert_close_rel(scores, expected)
    ref.assert_grads_close(ref.grads(scores, [logits]), ref.grads(expected, [logits]))
    assert torch.equal(scores[1], torch.zeros(num)) and torch.equal(scores[2], torch.zeros(num))
    assert scores[3, 1] == 1.0  # single known positive: its self term
    hard, _ = threshold_pseudo_labels(labels, scores, 0.2)
    assert torch.equal(hard[1:3], labels[1:3])  # no known positive: no IST pseudo label
