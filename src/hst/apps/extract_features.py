"""``hst extract-features``: fill the frozen-backbone feature cache of a config once, before training from it."""

from __future__ import annotations

from hst.config import TrainConfig
from hst.feature_cache import extract_for_config


def extract_features(config: TrainConfig, progress: bool = True) -> list[str]:
    """Extract (or reuse) the cached features of ``config``'s splits; one line per cache."""
    lines = []
    for cache in extract_for_config(config, progress=progress):
        shape = "×".join(str(n) for n in cache.shape)
        lines.append(f"{cache.key}: {len(cache)} images, features {shape} (float16) in {config.data.cache_dir}")
    return lines


__all__ = ["extract_features"]
