"""``hst train`` and ``hst evaluate``: Lightning fit / validate / test with saved config and logs."""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from hst.config import config_to_dict, save_config
from hst.engine.cache import FeatureCache, extract_features
from hst.engine.config import TrainConfig
from hst.engine.data import PartialLabelDataModule, Splits, describe_splits, prepare_splits
from hst.engine.module import DEFAULT_THRESHOLD, PartialLabelModule
from hst.methods import apply_model_preset


@dataclass
class RunResult:
    run_dir: Path
    best_checkpoint: Path | None
    test_metrics: dict[str, Any]
    val_metrics: dict[str, Any]
    summary_lines: list[str]


def _quiet_lightning() -> None:
    # These messages are about Lightning's own defaults, not about the run; keep the output readable.
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*TreeSpec.*")
    warnings.filterwarnings("ignore", message=".*number of training batches.*")
    # Threshold tuning validates saved checkpoints with a bare trainer; the training callbacks are not needed.
    warnings.filterwarnings("ignore", message=".*callbacks used to create the checkpoint.*")
    # Frozen backbone stages are in eval mode on purpose (BatchNorm keeps ImageNet statistics).
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: "litlogger" not in record.getMessage() and "limit_train_batches=1.0" not in record.getMessage()
    )
    os.environ.setdefault("PL_DISABLE_FORK", "1")


def _run_dir(config: TrainConfig) -> Path:
    name = config.trainer.run_name or f"{config.method.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    base = Path(config.trainer.output_dir) / name
    # Never write into an earlier run's folder: its checkpoints and logs stay as they were.
    candidate, number = base, 1
    while candidate.exists() and any(candidate.iterdir()):
        number += 1
        candidate = base.with_name(f"{name}-{number}")
    return candidate


def _trainer(config: TrainConfig, run_dir: Path, callbacks: list[L.Callback], log: bool = True) -> L.Trainer:
    t = config.trainer
    loggers: list[Any] = []
    if log:
        loggers = [
            TensorBoardLogger(str(run_dir), name="tensorboard", version=""),
            CSVLogger(str(run_dir), name="csv", version=""),
        ]
    if t.progress_bar:
        from lightning.pytorch.callbacks import RichProgressBar

        callbacks = [*callbacks, RichProgressBar(leave=True)]
    return L.Trainer(
        max_epochs=t.epochs,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=t.precision,  # type: ignore[arg-type]
        deterministic=t.deterministic,
        logger=loggers or False,
        callbacks=callbacks,
        enable_progress_bar=t.progress_bar,
        enable_model_summary=False,
        log_every_n_steps=t.log_every_n_steps,
        limit_train_batches=t.limit_train_batches,
        default_root_dir=str(run_dir),
        num_sanity_val_steps=0,
    )


def _feature_caches(
    config: TrainConfig, splits: Splits, module: PartialLabelModule
) -> tuple[FeatureCache, FeatureCache] | None:
    """Extract (or reuse) backbone features when the backbone is frozen; None when images are needed."""
    mode = config.data.feature_cache
    if mode not in {"auto", "off"}:
        raise ValueError(f"data.feature_cache must be 'auto' or 'off', got {mode!r}")
    if mode == "off" or config.model.trainable != "none":
        return None
    assert splits.source is not None and splits.test_source is not None
    backbone = module.network.backbone
    kwargs = {
        "image_size": config.data.image_size,
        "cache_dir": Path(config.data.cache_dir),
        "batch_size": config.data.eval_batch_size,
        "num_workers": config.data.num_workers,
        "progress": config.trainer.progress_bar,
        "channels_last": config.model.channels_last,
    }
    source_cache = extract_features(backbone, splits.source, **kwargs)
    test_cache = source_cache
    if splits.test_source is not splits.source:
        test_cache = extract_features(backbone, splits.test_source, **kwargs)
    module.features_cached = True
    return source_cache, test_cache


def train(config: TrainConfig) -> RunResult:
    """Fit on the training split, select the best epoch on validation, then test that checkpoint."""
    _quiet_lightning()
    config = apply_model_preset(config)
    if config.trainer.select_on not in {"val", "test"}:
        raise ValueError(f"trainer.select_on must be 'val' or 'test', got {config.trainer.select_on!r}")
    L.seed_everything(config.trainer.seed, workers=True, verbose=False)
    torch.set_float32_matmul_precision("high")
    run_dir = _run_dir(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / "config.yaml")

    splits = prepare_splits(config.data)
    summary = describe_splits(splits)
    module = PartialLabelModule(config, splits.train.class_names, splits.train.labels, len(splits.train))
    backbone = module.network.backbone
    caches = _feature_caches(config, splits, module)
    if caches is not None:
        summary.append(f"frozen backbone: training from cached features in {config.data.cache_dir}")
    datamodule = PartialLabelDataModule(
        splits, config.data, backbone.mean, backbone.std, seed=config.trainer.seed, caches=caches
    )
    if config.trainer.select_on == "test":
        # Published-protocol parity only: the reported test score then selects its own epoch.
        datamodule.val_dataloader = datamodule.test_dataloader  # type: ignore[method-assign]
        summary.append("WARNING: selecting the best epoch on the TEST set (trainer.select_on=test)")
    checkpoint = ModelCheckpoint(
        dirpath=str(run_dir / "checkpoints"),
        filename="best",
        monitor="val/mAP",
        mode="max",
        save_last=config.trainer.save_last,
        save_top_k=1,
        auto_insert_metric_name=False,
    )
    trainer = _trainer(config, run_dir, [checkpoint])
    trainer.fit(module, datamodule=datamodule)
    val_metrics = dict(module.last_metrics.get("val", {}))
    best = Path(checkpoint.best_model_path) if checkpoint.best_model_path else None
    trainer.test(module, datamodule=datamodule, ckpt_path=str(best) if best else None, verbose=False)
    test_metrics = dict(module.last_metrics.get("test", {}))
    if best is not None:
        summary.append(f"best epoch by val/mAP: {best.name} (score {float(checkpoint.best_model_score or 0):.2f})")
    written = [Path(p) for p in (checkpoint.last_model_path, checkpoint.best_model_path) if p]
    summary.extend(_tune_checkpoints(config, run_dir, module, datamodule, written, best))
    _write_json(run_dir / "metrics.json", {"test": test_metrics, "val_last_epoch": val_metrics})
    (run_dir / "summary.txt").write_text("\n".join(summary) + "\n")
    return RunResult(run_dir, best, test_metrics, val_metrics, summary)


@dataclass
class ThresholdTuning:
    """Per-class thresholds maximising F1 over the known validation labels of each class."""

    thresholds: np.ndarray
    """C float64; ``default`` for classes without a known positive."""
    f1: np.ndarray
    """C float64, F1 (in [0, 1]) at the chosen threshold; NaN where not tuned."""
    known: np.ndarray
    """C int, known entries per class."""
    positives: np.ndarray
    """C int, known positives per class."""

    @property
    def tuned(self) -> np.ndarray:
        return self.positives > 0


def tune_thresholds(
    probabilities: np.ndarray, labels: np.ndarray, default: float = DEFAULT_THRESHOLD
) -> ThresholdTuning:
    """Per class, the threshold τ (predict positive when p ≥ τ) with the best F1 on the known entries.

    Only cuts between distinct probabilities are candidates; τ is the midpoint between the lowest
    probability kept and the highest one left out (the lowest probability when all are kept). Among
    equal F1 the highest τ wins. Classes without a known positive keep ``default``.
    """
    probs = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels)
    if probs.shape != labels.shape or probs.ndim != 2:
        raise ValueError(f"probabilities {probs.shape} and labels {labels.shape} must be the same N×C shape")
    num_classes = probs.shape[1]
    thresholds = np.full(num_classes, float(default))
    f1 = np.full(num_classes, np.nan)
    known_counts = (labels != 0).sum(axis=0)
    positive_counts = (labels > 0).sum(axis=0)
    for c in range(num_classes):
        known = labels[:, c] != 0
        if positive_counts[c] == 0:
            continue
        order = np.argsort(-probs[known, c], kind="stable")
        scores = probs[known, c][order]
        positive = labels[known, c][order] > 0
        true_pos = np.cumsum(positive)
        predicted = np.arange(1, len(scores) + 1)
        values = 2 * true_pos / (predicted + positive_counts[c])
        # Only cut where the next probability is strictly lower: equal probabilities share one decision.
        cut = np.append(scores[:-1] > scores[1:], True)
        best = int(np.flatnonzero(cut)[np.argmax(values[cut])])
        below = scores[best + 1] if best + 1 < len(scores) else scores[best]
        thresholds[c] = (scores[best] + below) / 2
        f1[c] = values[best]
    return ThresholdTuning(thresholds, f1, known_counts, positive_counts)


def _save_checkpoint(payload: dict[str, Any], path: Path) -> None:
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(payload, temp)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def _tune_checkpoints(
    config: TrainConfig,
    run_dir: Path,
    module: PartialLabelModule,
    datamodule: PartialLabelDataModule,
    paths: list[Path],
    best: Path | None,
) -> list[str]:
    """Tune each written checkpoint's thresholds on the validation split and store them in the file.

    The best checkpoint's thresholds also go to ``run_dir/thresholds.json``. The validation pass runs on
    the trainer's accelerator, without loggers, on the validation split even under ``select_on=test``.
    """
    paths = sorted(set(paths), key=lambda p: p == best)  # the best one last, so the module ends with it
    if not paths:
        return []
    # The class attribute, not the instance's: under select_on=test the instance's loader is the test split.
    loader = PartialLabelDataModule.val_dataloader(datamodule)
    trainer = _trainer(config, run_dir, [], log=False)
    lines: list[str] = []
    done: dict[tuple[int, int], ThresholdTuning] = {}
    for path in paths:
        payload = read_checkpoint(path)
        # best.ckpt and last.ckpt of the same step hold the same weights: one validation pass serves both.
        step = (int(payload.get("epoch", -1)), int(payload.get("global_step", -1)))
        if step not in done:
            trainer.validate(module, dataloaders=loader, ckpt_path=str(path), verbose=False)
            logits, labels = module.last_scores["val"]
            done[step] = tune_thresholds(torch.sigmoid(torch.from_numpy(logits).double()).numpy(), labels)
        tuning = done[step]
        module.decision_thresholds = [float(t) for t in tuning.thresholds]
        module.thresholds_tuned = True
        if not trainer.is_global_zero:
            continue
        payload["hst_thresholds"] = list(module.decision_thresholds)
        payload["hst_thresholds_tuned"] = True
        _save_checkpoint(payload, path)
        if best is not None and path == best:
            _write_thresholds_json(run_dir / "thresholds.json", config, module.class_names, tuning, path, run_dir)
            lines.append(
                f"per-class thresholds tuned on validation F1 for {int(tuning.tuned.sum())}/{len(tuning.tuned)} "
                "classes (the rest keep 0.5): thresholds.json"
            )
    return lines


def _write_thresholds_json(
    path: Path,
    config: TrainConfig,
    class_names: list[str],
    tuning: ThresholdTuning,
    checkpoint: Path,
    run_dir: Path,
) -> None:
    classes = {
        name: {
            "threshold": float(tuning.thresholds[c]),
            "f1": None if np.isnan(tuning.f1[c]) else float(tuning.f1[c]),
            "known": int(tuning.known[c]),
            "known_positives": int(tuning.positives[c]),
            "tuned": bool(tuning.tuned[c]),
        }
        for c, name in enumerate(class_names)
    }
    _write_json(
        path,
        {
            "checkpoint": checkpoint.relative_to(run_dir).as_posix(),
            "split": "val",
            "val_labels": config.data.val_labels,
            "rule": "per class, the probability threshold with the best F1 over the known validation labels; "
            f"classes without a known validation positive keep {DEFAULT_THRESHOLD}",
            "classes": classes,
        },
    )


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(path)


REQUIRED_KEYS = ("hst_config", "hst_class_names", "state_dict")


def read_checkpoint(checkpoint_path: Path | str) -> dict[str, Any]:
    """The checkpoint's dict, read with ``torch.load(weights_only=True)`` (no arbitrary objects)."""
    path = Path(checkpoint_path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"{path}: cannot be read as a weights-only checkpoint: {error}") from error
    if not isinstance(payload, dict):
        raise ValueError(f"{path}: not an hst checkpoint (a {type(payload).__name__}, not a dict)")
    for key in REQUIRED_KEYS:
        if key not in payload:
            raise ValueError(f"{path}: not an hst checkpoint (missing {key!r})")
    return payload


def load_module(checkpoint_path: Path | str) -> tuple[PartialLabelModule, TrainConfig]:
    """Rebuild the model of a checkpoint for inference (config and class names travel inside it).

    The network's weights must match its saved config exactly. Method parameters (IST head, learned
    thresholds) are loaded where names and shapes match; the others keep their initial values and are
    listed in ``module.method_keys_missing`` (``module.method_keys_ignored``: saved ones not used).
    """
    path = Path(checkpoint_path)
    payload = read_checkpoint(path)
    config = _from_dict(payload["hst_config"])
    class_names = [str(name) for name in payload["hst_class_names"]]
    state: dict[str, torch.Tensor] = payload["state_dict"]
    # Weights, embeddings and graph come from the checkpoint; nothing pretrained is read.
    config.model.weights = "none"
    embeddings = None
    if config.model.head == "sarl":
        if "network.sarl.embeddings" not in state:
            raise ValueError(f"{path}: SARL checkpoint without the label embeddings 'network.sarl.embeddings'")
        embeddings = np.zeros(tuple(state["network.sarl.embeddings"].shape), np.float32)
    # The adjacency is a saved buffer; a placeholder label matrix only sizes it before loading.
    placeholder = np.zeros((1, len(class_names)), dtype=np.int8)
    module = PartialLabelModule(config, class_names, placeholder, num_train=1, embeddings=embeddings)

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
    module.checkpoint_info = {
        key: payload.get(key) for key in ("hst_format", "hst_version", "hst_backbone", "hst_embeddings_source")
    }
    module.eval()
    return module, config


def _known_only(schema: type, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` without keys the config schema no longer has (checkpoints of older versions)."""
    import dataclasses

    fields = {f.name: f for f in dataclasses.fields(schema)}
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            continue
        default = fields[key].default_factory
        nested = default() if default is not dataclasses.MISSING else None  # type: ignore[misc]
        if dataclasses.is_dataclass(nested) and isinstance(value, dict):
            value = _known_only(type(nested), value)
        out[key] = value
    return out


def _from_dict(values: dict[str, Any]) -> TrainConfig:
    from omegaconf import OmegaConf

    merged = OmegaConf.merge(OmegaConf.structured(TrainConfig), OmegaConf.create(_known_only(TrainConfig, values)))
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def evaluate_checkpoint(checkpoint_path: Path, data_spec: str, batch_size: int = 64) -> dict[str, Any]:
    """Score a dataset with a trained checkpoint and return the metrics dict."""
    from torch.utils.data import DataLoader

    from hst.data.spec import load_dataset
    from hst.engine.data import ImageLabelDataset, build_transform
    from hst.metrics import evaluate

    module, config = load_module(checkpoint_path)
    data = load_dataset(data_spec)
    if data.class_names != module.class_names:
        raise ValueError(f"{data_spec}: classes differ from the checkpoint's {len(module.class_names)} classes")
    backbone = module.network.backbone
    transform = build_transform(config.data.image_size, "none", backbone.mean, backbone.std)
    loader = DataLoader(ImageLabelDataset(data, data.labels, data.labels, transform), batch_size=batch_size)
    scores = []
    with torch.no_grad():
        for _, images, _, _ in loader:
            scores.append(module(images))
    result = evaluate(torch.cat(scores).numpy(), data.labels, data.class_names)
    return result.to_dict()


__all__ = [
    "RunResult",
    "ThresholdTuning",
    "config_to_dict",
    "evaluate_checkpoint",
    "load_module",
    "read_checkpoint",
    "train",
    "tune_thresholds",
]
