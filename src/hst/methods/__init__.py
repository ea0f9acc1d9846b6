"""Methods behind one interface, created by name: ``hst.methods.create("hst", config, ...)``.

``base``: the :class:`Method` template and the simplest methods; ``registry``: names → factories and the model
presets they imply; ``semantic_transfer``: the steps HST and SST share; ``thresholds``: calibrated pseudo-label
thresholds. One module per further method (``hst``, ``sst``, ``llr``).
"""

from hst.methods.base import LossOutput, Method, StepContext
from hst.methods.registry import METHODS, MODEL_PRESETS, apply_model_preset, available, create

__all__ = [
    "METHODS",
    "MODEL_PRESETS",
    "LossOutput",
    "Method",
    "StepContext",
    "apply_model_preset",
    "available",
    "create",
]
