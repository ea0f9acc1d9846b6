"""``hst extract-features``: fill the feature cache of a config once, before training from it.

A frozen backbone (``model.trainable=none``) caches its final feature maps; a backbone whose last stage trains
caches the output of its frozen front (:mod:`hst.midlevel_cache`).
"""

from __future__ import annotations

from hst.config import TrainConfig
from hst.feature_cache import extract_for_config
from hst.midlevel_cache import extract_fronts_for_config


def extract_features(config: TrainConfig, progress: bool = True) -> list[str]:
    """Extract (or reuse) the cached features of ``config``'s splits; one line per cache."""
    lines = []
    if config.model.trainable != "none":
        fronts = extract_fronts_for_config(config, progress=progress)
        if fronts is None:
            return [
                f"nothing to cache: model.trainable={config.model.trainable} with data.augment={config.data.augment} "
                "trains from the images"
            ]
        for front in fronts:
            shape = "×".join(str(n) for n in front.shape)
            lines.append(
                f"{front.key}: {len(front)} images, frozen-front maps {shape} (images × orientations × maps, "
                f"float16) in {config.data.cache_dir}"
            )
        return lines
    for cache in extract_for_config(config, progress=progress):
        shape = "×".join(str(n) for n in cache.shape)
        lines.append(f"{cache.key}: {len(cache)} images, features {shape} (float16) in {config.data.cache_dir}")
    return lines


__all__ = ["extract_features"]
