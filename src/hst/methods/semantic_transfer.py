"""The steps HST and SST share: BCE on the known labels with the ramped IST co-occurrence loss, and the
pseudo-label counts they log."""

from __future__ import annotations

import torch

from hst.config import MethodConfig
from hst.losses import intra_cooccurrence_loss, partial_bce
from hst.models.ist import ISTHead


def cooccurrence_term(
    config: MethodConfig, ist_head: ISTHead | None, semantic: torch.Tensor, labels: torch.Tensor, ramp: float
) -> tuple[torch.Tensor | None, dict[str, float], torch.Tensor | None]:
    """The ramped IST co-occurrence loss: (loss or None without an IST head, logs, pair logits or None)."""
    if ist_head is None:
        return None, {}, None
    pair_logits = ist_head(semantic)
    cooc = intra_cooccurrence_loss(pair_logits, labels, ignore_unknown_pairs=config.ignore_unknown_pairs)
    return ramp * config.intra_cooccurrence_weight * cooc, {"cooccurrence": float(cooc.detach())}, pair_logits


def known_and_cooccurrence_loss(
    config: MethodConfig,
    ist_head: ISTHead | None,
    logits: torch.Tensor,
    semantic: torch.Tensor,
    labels: torch.Tensor,
    ramp: float,
) -> tuple[torch.Tensor, dict[str, float], torch.Tensor | None]:
    """The part HST (published thresholds) and SST share: BCE on known labels plus the ramped IST
    co-occurrence loss. Returns (loss, logs, pair logits or None without an IST head)."""
    base = partial_bce(logits, labels)
    term, logs, pair_logits = cooccurrence_term(config, ist_head, semantic, labels, ramp)
    logs = {"bce": float(base.detach()), **logs}
    return (base if term is None else base + term), logs, pair_logits


def pseudo_label_logs(
    prefix: str, labels: torch.Tensor, pseudo: torch.Tensor, full_labels: torch.Tensor | None
) -> dict[str, float]:
    """Count new pseudo positives and, where ground truth is at hand, how many are right (precision =
    correct / count) and how many withheld positives there were to find (recall = correct / possible)."""
    unknown = labels == 0
    new = unknown & (pseudo > 0)
    logs = {f"{prefix}_pseudo_count": float(new.sum())}
    if full_labels is not None:
        logs[f"{prefix}_pseudo_correct"] = float((new & (full_labels > 0)).sum())
        logs[f"{prefix}_pseudo_possible"] = float((unknown & (full_labels > 0)).sum())
    return logs
