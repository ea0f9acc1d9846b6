"""The backbone cut in two where ``model.trainable`` starts: a frozen front and a trainable rest.

With ``trainable=last_stage`` the front's output never changes during training, so it can be computed once and
cached (:mod:`hst.midlevel_cache`); training then runs only the rest. The cut is found from the order of the
network's modules (top-level children, the container of the first trainable module expanded), and is accepted
only when running the parts one after the other reproduces ``forward_features`` on a probe input: a network whose
forward does something else (skips, reshapes, extra ops) gets no split and trains the usual way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

_NOT_FEATURES = ("global_pool", "classifier", "fc", "head", "head_drop", "pre_logits", "fc_norm")
"""Children that run after ``forward_features`` (pooling, classifier): never part of the feature map."""


@dataclass(frozen=True)
class BackboneSplit:
    """Module names of the frozen front and the trainable rest, in the order ``forward_features`` runs them."""

    front: tuple[str, ...]
    rest: tuple[str, ...]

    @property
    def cut(self) -> str:
        """Name of the first trainable module (part of cache keys: another cut caches another layer)."""
        return self.rest[0]


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(prefix == "" or name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def _contains_trainable(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(prefix.startswith(name + ".") for prefix in prefixes)


def module_order(model: nn.Module, trainable_prefixes: tuple[str, ...]) -> list[str]:
    """Feature modules in running order, with a Sequential that holds the cut expanded into its children."""
    names: list[str] = []

    def visit(parent: str, module: nn.Module) -> None:
        for child_name, child in module.named_children():
            full = f"{parent}.{child_name}" if parent else child_name
            if not parent and child_name in _NOT_FEATURES:
                continue
            if isinstance(child, nn.Sequential) and _contains_trainable(full, trainable_prefixes):
                visit(full, child)
            else:
                names.append(full)

    visit("", model)
    return names


def find_split(model: nn.Module, trainable_prefixes: tuple[str, ...]) -> BackboneSplit | None:
    """The split of ``model`` at its first trainable module, or ``None`` when there is no exact one.

    ``None`` when nothing is trainable or nothing is frozen, when the trainable modules are not one tail of the
    running order, or when the parts in sequence do not reproduce ``forward_features``.
    """
    if not trainable_prefixes or "" in trainable_prefixes or not hasattr(model, "forward_features"):
        return None
    order = module_order(model, trainable_prefixes)
    trainable = [_under(name, trainable_prefixes) for name in order]
    if not any(trainable) or all(trainable):
        return None
    first = trainable.index(True)
    if not all(trainable[first:]):
        return None  # a frozen module after a trainable one cannot be cached in front
    split = BackboneSplit(tuple(order[:first]), tuple(order[first:]))
    return split if _reproduces_forward(model, split) else None


def run_modules(model: nn.Module, names: tuple[str, ...], inputs: torch.Tensor) -> torch.Tensor:
    for name in names:
        inputs = model.get_submodule(name)(inputs)
    return inputs


def _reproduces_forward(model: nn.Module, split: BackboneSplit) -> bool:
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        generator = torch.Generator().manual_seed(0)
        probe = torch.randn(2, 3, 64, 64, generator=generator)
        with torch.no_grad():
            expected = model.forward_features(probe)
            got = run_modules(model, split.rest, run_modules(model, split.front, probe))
    except (RuntimeError, TypeError, ValueError):
        return False
    finally:
        for module, mode in modes.items():  # per module: frozen BatchNorm layers stay in eval mode
            module.training = mode
    if got.shape != expected.shape:
        return False
    scale = float(expected.abs().max().clamp(min=1e-6))
    return float((got - expected).abs().max()) <= 1e-5 * scale
