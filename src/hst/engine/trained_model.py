"""A trained network and its method, without the training loop: what inference loads from a checkpoint.

:class:`hst.engine.module.PartialLabelModule` (the LightningModule that trains them) is this class plus the loop's
hooks, so the state dict and checkpoint entries are the same; ``hst predict`` and the other inference commands
load this one and never import Lightning (about 2 s on 2 cores, a tenth of predicting 512 photos).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from hst.checkpoint import CHECKPOINT_FORMAT, config_from_dict, plain, read_checkpoint
from hst.config import TrainConfig
from hst.methods import create
from hst.models.network import PartialLabelNetwork, build_network

DEFAULT_THRESHOLD = 0.5
ModelT = TypeVar("ModelT", bound="TrainedModel")


class TrainedModel(nn.Module):
    """A network and a method built from a config (the method turns the network's output into losses and pseudo
    labels, and holds learned parts such as the IST head), the class names and per-class decision thresholds.

    The ``hst_*`` checkpoint entries make a saved file self-contained; :meth:`from_checkpoint` rebuilds a model
    from one for inference.
    """

    def __init__(
        self,
        config: TrainConfig,
        class_names: list[str],
        train_labels: np.ndarray,
        num_train: int,
        embeddings: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.class_names = list(class_names)
        self.network: PartialLabelNetwork = build_network(config.model, self.class_names, train_labels, embeddings)
        self.method = create(config.method.name, config.method, len(class_names), self.network.feature_dim, num_train)
        if config.model.head == "linear" and self.method.needs_semantic:
            raise ValueError(f"method {config.method.name!r} needs per-class semantic features; use model.head=sarl")
        if config.model.prior_bias:
            self.network.init_class_bias(self.method.class_prior(np.asarray(train_labels)))
        self.decision_thresholds: list[float] = [DEFAULT_THRESHOLD] * len(self.class_names)
        """Per-class probability thresholds of the predicted labels (tuned on validation after training)."""
        self.thresholds_tuned = False
        self.method_keys_missing: list[str] = []
        """Method parameters a loaded checkpoint did not provide (they keep their initial values)."""
        self.method_keys_ignored: list[str] = []
        self.checkpoint_info: dict[str, Any] = {}
        self.pretrained_weights: str = config.model.weights
        """The backbone's starting weights (a loaded checkpoint's config says 'none': its weights are its own)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(images).logits

    def checkpoint_extras(self) -> dict[str, Any]:
        """The ``hst_*`` entries that make a checkpoint self-contained (plain types and tensors only)."""
        from hst import __version__
        from hst.config import config_to_dict

        model = self.config.model
        extras = {
            "hst_format": CHECKPOINT_FORMAT,
            "hst_version": __version__,
            "hst_config": config_to_dict(self.config),
            "hst_class_names": list(self.class_names),
            "hst_method": self.config.method.name,
            "hst_backbone": model.backbone,
            "hst_head": model.head,
            # The C×E matrix itself is the buffer network.sarl.embeddings of the state dict.
            "hst_embeddings_source": model.embeddings if model.head == "sarl" else None,
            "hst_thresholds": [float(t) for t in self.decision_thresholds],
            "hst_thresholds_tuned": bool(self.thresholds_tuned),
            "hst_method_state": self.method.extra_state(),
        }
        return plain(extras)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.method.load_extra_state(checkpoint.get("hst_method_state") or {})
        saved = checkpoint.get("hst_thresholds")
        if saved is not None and len(saved) == len(self.class_names):
            self.decision_thresholds = [float(t) for t in saved]
            self.thresholds_tuned = bool(checkpoint.get("hst_thresholds_tuned", False))

    @classmethod
    def from_checkpoint(cls: type[ModelT], checkpoint_path: Path | str) -> ModelT:
        """Rebuild the model of a checkpoint for inference (config and class names travel inside it).

        The network's weights must match its saved config exactly. Method parameters (IST head, learned
        thresholds) are loaded where names and shapes match; the others keep their initial values and are
        listed in ``module.method_keys_missing`` (``module.method_keys_ignored``: saved ones not used).
        """
        path = Path(checkpoint_path)
        payload = read_checkpoint(path)
        config = config_from_dict(payload["hst_config"])
        class_names = [str(name) for name in payload["hst_class_names"]]
        state: dict[str, torch.Tensor] = payload["state_dict"]
        # Weights, embeddings and graph come from the checkpoint; nothing pretrained is read.
        pretrained = config.model.weights
        config.model.weights = "none"
        embeddings = None
        if config.model.head == "sarl":
            if "network.sarl.embeddings" not in state:
                raise ValueError(f"{path}: SARL checkpoint without the label embeddings 'network.sarl.embeddings'")
            embeddings = np.zeros(tuple(state["network.sarl.embeddings"].shape), np.float32)
        # The adjacency is a saved buffer; a placeholder label matrix only sizes it before loading.
        placeholder = np.zeros((1, len(class_names)), dtype=np.int8)
        module = cls(config, class_names, placeholder, num_train=1, embeddings=embeddings)

        network_state = {key[len("network.") :]: value for key, value in state.items() if key.startswith("network.")}
        try:
            module.network.load_state_dict(network_state)
        except RuntimeError as error:
            raise ValueError(f"{path}: the network weights do not fit the checkpoint's own config: {error}") from error
        saved_method = {key[len("method.") :]: value for key, value in state.items() if key.startswith("method.")}
        own = module.method.state_dict()
        usable = {k: v for k, v in saved_method.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
        module.method.load_state_dict(usable, strict=False)
        module.method_keys_missing = sorted(k for k in own if k not in usable)
        module.method_keys_ignored = sorted(k for k in saved_method if k not in usable)
        module.on_load_checkpoint(payload)
        module.pretrained_weights = pretrained
        module.checkpoint_info = {
            key: payload.get(key) for key in ("hst_format", "hst_version", "hst_backbone", "hst_embeddings_source")
        }
        module.eval()
        return module


__all__ = ["DEFAULT_THRESHOLD", "TrainedModel"]
