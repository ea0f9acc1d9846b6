"""Configuration: the schema of every setting (``schema``) and the loader that fills it (``loader``).

The bottom layer: it imports nothing else of ``hst`` at import time, and methods, models, the engine and
the commands all read their settings from here.
"""

from hst.config.loader import ConfigError, config_to_dict, resolve_config, save_config, valid_keys
from hst.config.schema import DataConfig, MethodConfig, ModelConfig, OptimConfig, TrainConfig, TrainerConfig

__all__ = [
    "ConfigError",
    "DataConfig",
    "MethodConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "TrainerConfig",
    "config_to_dict",
    "resolve_config",
    "save_config",
    "valid_keys",
]
