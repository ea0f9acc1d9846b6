"""Diagnostic training options: settings whose test mAP is a bound or an optimistic figure, not a result.

``method.pseudo_label_oracle`` (anything but ``none``) reads the hidden training labels, and
``trainer.select_on=test`` picks the reported epoch on the test split. ``hst benchmark`` refuses both unless
``--allow-diagnostics`` is given, and then marks every row trained with one (the ``diagnostic`` column of
``results.csv``, a ``[diagnostic: …]`` suffix on the method in the tables).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from hst.config import ConfigError, TrainConfig

if TYPE_CHECKING:
    from hst.apps.benchmark import CellPlan

ALLOW_FLAG = "--allow-diagnostics"

_WHY = {
    "method.pseudo_label_oracle": "it builds pseudo labels from the hidden training labels",
    "trainer.select_on": "it selects the reported epoch on the test split",
}


def diagnostic_options(config: TrainConfig) -> list[tuple[str, str]]:
    """The (full key, value) of each diagnostic option ``config`` sets; empty for an honest run."""
    found: list[tuple[str, str]] = []
    if config.method.pseudo_label_oracle != "none":
        found.append(("method.pseudo_label_oracle", str(config.method.pseudo_label_oracle)))
    if config.trainer.select_on == "test":
        found.append(("trainer.select_on", "test"))
    return found


def cell_diagnostic(configs: Sequence[TrainConfig]) -> str:
    """The ``diagnostic`` column of a cell's row: every diagnostic option any of its tuning points trained with.

    All points count, not only the chosen one: under ``select_on=test`` a point's validation score, which the
    choice compares, is a test score.
    """
    names: list[str] = []
    for config in configs:
        for key, value in diagnostic_options(config):
            name = f"{key.rsplit('.', 1)[-1]}={value}"
            if name not in names:
                names.append(name)
    return " ".join(names)


def refuse_diagnostics(plans: Iterable[CellPlan], allowed: bool) -> None:
    """Raise :class:`ConfigError` naming the first diagnostic option of any cell, unless ``allowed``."""
    if allowed:
        return
    for plan in plans:
        for point, config in zip(plan.points, plan.configs, strict=True):
            for key, value in diagnostic_options(config):
                tuned = any(item.split("=", 1)[0].strip() == key for item in point)
                origin = f"the --tune point {' '.join(point)!r}" if tuned else "--config or a key=value override"
                raise ConfigError(
                    f"{key}={value} (from {origin}, cell {plan.method} p={plan.proportion:g} seed={plan.seed}) "
                    f"is a diagnostic option: {_WHY[key]}, so its test mAP is not a benchmark result. Pass "
                    f"{ALLOW_FLAG} to train it anyway; its rows are then marked as diagnostic in results.csv "
                    "and results.md"
                )
