"""The methods by name: :data:`METHODS`, :func:`create`, and the model settings a method name implies."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from hst.config import MethodConfig, TrainConfig
from hst.methods.base import AssumeNegative, Method, PartialBCE
from hst.methods.hst import HST
from hst.methods.llr import LargeLossRejection
from hst.methods.sst import SST

MethodFactory = Callable[[MethodConfig, int, int, int], Method]


def _variant(cls: type[Method], **changes: object) -> MethodFactory:
    def factory(config: MethodConfig, num_classes: int, feature_dim: int, num_train: int) -> Method:
        return cls(dataclasses.replace(config, **changes), num_classes, feature_dim, num_train)

    return factory


METHODS: dict[str, MethodFactory] = {
    "partial_bce": PartialBCE,
    "assume_negative": AssumeNegative,
    "hst": HST,
    "hst_no_ist": _variant(HST, use_ist=False),
    "hst_no_cst": _variant(HST, use_cst=False),
    # CST by prototypes only: no image-level neighbours, the classifier's evidence alone.
    "hst_no_cst_neighbours": _variant(HST, cst_neighbours=0),
    "hst_pseudo_negatives": _variant(HST, pseudo_negatives=True),
    "hst_no_classifier_evidence": _variant(HST, classifier_evidence=False),
    # The published method: thresholds learned by DTL from 1.0, positive pseudo labels only.
    "hst_dtl": _variant(HST, thresholds="learned"),
    # Fixed thresholds; 1.0 would yield no pseudo labels at all, so the ablation fixes them at SST's final value.
    "hst_no_dtl": _variant(HST, thresholds="fixed", intra_threshold=0.75, inter_threshold=0.75),
    "sst": SST,
    "large_loss_rejection": LargeLossRejection,
    "linear_assume_negative": AssumeNegative,
    "linear_partial_bce": PartialBCE,
}

MODEL_PRESETS: dict[str, dict[str, object]] = {
    # The frozen-feature reference: global pool + linear classifier, unknowns as negatives.
    "linear_assume_negative": {"head": "linear"},
    "linear_partial_bce": {"head": "linear"},
}
"""Model settings a method name implies; applied by the engine before the network is built."""


def apply_model_preset(config: TrainConfig) -> TrainConfig:
    """Return ``config`` with the model settings its method name implies (unchanged if none)."""
    preset = MODEL_PRESETS.get(config.method.name)
    if not preset:
        return config
    return dataclasses.replace(config, model=dataclasses.replace(config.model, **preset))


def available() -> list[str]:
    """The method names :func:`create` accepts, sorted."""
    return sorted(METHODS)


def create(name: str, config: MethodConfig, num_classes: int, feature_dim: int, num_train: int) -> Method:
    """Build method ``name`` (see :func:`available`)."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(available())}")
    method = METHODS[name](config, num_classes, feature_dim, num_train)
    return method


__all__ = ["METHODS", "MODEL_PRESETS", "MethodFactory", "apply_model_preset", "available", "create"]
