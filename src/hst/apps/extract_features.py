"""``hst extract-features``: fill the feature cache of a config once, before training from it.

A frozen backbone (``model.trainable=none``) caches its final feature maps: from the exported graph without
torch when ``data.cache_dir`` holds one for these weights (:mod:`hst.models.graph_features`), else through torch
(which exports it for the next time). A backbone whose last stage trains caches the output of its frozen front
(:mod:`hst.midlevel_cache`). torch is imported only on the paths that need it.
"""

from __future__ import annotations

from hst.config import TrainConfig
from hst.models.graph_features import WrittenFeatures, extract_with_graph


def extract_features(config: TrainConfig, progress: bool = True) -> list[str]:
    """Extract (or reuse) the cached features of ``config``'s splits; one line per cache."""
    lines = []
    if config.model.trainable != "none":
        from hst.midlevel_cache import extract_fronts_for_config

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
    written = extract_with_graph(config, progress=progress)
    if written is None:
        from hst.feature_cache import extract_for_config

        written = [WrittenFeatures(cache.key, cache.shape) for cache in extract_for_config(config, progress=progress)]
    for cache in written:
        shape = "×".join(str(n) for n in cache.shape)
        lines.append(f"{cache.key}: {cache.shape[0]} images, features {shape} (float16) in {config.data.cache_dir}")
    return lines


__all__ = ["extract_features"]
