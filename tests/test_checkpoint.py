"""Checkpoints: self-contained, weights-only loadable, tuned thresholds, tolerant loading, resumable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import hst
from hst.apps.inference import resolve_threshold
from hst.checkpoint import read_checkpoint
from hst.config import ConfigError, TrainConfig, config_to_dict, resolve_config
from hst.data.datasets import ImageLabelDataset
from hst.data.splits import prepare_splits
from hst.data.transforms import build_transform
from hst.engine.datamodule import PartialLabelDataModule
from hst.engine.decision_thresholds import tune_thresholds
from hst.engine.module import PartialLabelModule, load_module
from hst.engine.train import train
from hst.engine.trainer import build_trainer
from tiny_run import TINY as _TINY

# float sums depend on the thread count, and tiny tensors gain nothing from threads
pytestmark = pytest.mark.usefixtures("one_thread")

TINY = [*_TINY, "trainer.epochs=2"]
HST_KEYS = (
    "hst_format",
    "hst_version",
    "hst_config",
    "hst_class_names",
    "hst_method",
    "hst_backbone",
    "hst_head",
    "hst_embeddings_source",
    "hst_thresholds",
    "hst_thresholds_tuned",
    "hst_method_state",
)


def tiny(out: Path, *extra: str) -> TrainConfig:
    overrides = [*TINY, f"trainer.output_dir={out}", f"data.cache_dir={out / 'cache'}", *extra]
    return resolve_config(TrainConfig, None, overrides)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TrainConfig]:
    out = tmp_path_factory.mktemp("hst")
    config = tiny(out, "trainer.run_name=hst")
    result = train(config)
    return result.run_dir, config


def test_every_checkpoint_loads_weights_only_and_is_self_contained(run: tuple[Path, TrainConfig]) -> None:
    run_dir, config = run
    files = sorted((run_dir / "checkpoints").glob("*.ckpt"))
    assert [f.name for f in files] == ["best.ckpt", "last.ckpt"]
    for path in files:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        assert all(key in payload for key in HST_KEYS), path
        assert payload["hst_version"] == hst.__version__ and payload["hst_format"] == 2
        assert payload["hst_config"] == config_to_dict(config)
        assert payload["hst_class_names"][0] == "person" and len(payload["hst_class_names"]) == 24
        assert payload["hst_backbone"] == config.model.backbone and payload["hst_method"] == "hst"
        assert payload["hst_embeddings_source"] == "glove-6b-50d"
        assert tuple(payload["state_dict"]["network.sarl.embeddings"].shape) == (24, 50)
        assert payload["hst_thresholds_tuned"] is True and len(payload["hst_thresholds"]) == 24
        assert all(isinstance(t, float) and 0 <= t <= 1 for t in payload["hst_thresholds"])
        prototypes = payload["hst_method_state"]["prototypes"]
        if path.name == "last.ckpt":  # computed from the first pseudo-label epoch on; best may be earlier
            assert isinstance(prototypes["centers"], torch.Tensor)
            assert isinstance(payload["hst_method_state"]["pseudo_targets"], torch.Tensor)


def test_thresholds_are_the_f1_optimum_on_validation(run: tuple[Path, TrainConfig]) -> None:
    run_dir, config = run
    best = run_dir / "checkpoints" / "best.ckpt"
    saved = read_checkpoint(best)["hst_thresholds"]
    table = json.loads((run_dir / "thresholds.json").read_text())
    assert table["checkpoint"] == "checkpoints/best.ckpt" and table["split"] == "val"
    assert [entry["threshold"] for entry in table["classes"].values()] == saved

    # Recompute validation probabilities independently of the engine and tune again.
    module, _ = load_module(best)
    splits = prepare_splits(config.data)
    backbone = module.network.backbone
    transform = build_transform(config.data.image_size, "none", backbone.mean, backbone.std)
    dataset = ImageLabelDataset(splits.val, splits.val.labels, splits.val.labels, transform)
    images = torch.stack([dataset[i][1] for i in range(len(dataset))])
    with torch.no_grad():
        probs = torch.sigmoid(module(images).double()).numpy()
    minimum = config.trainer.threshold_min_positives
    tuning = tune_thresholds(probs, splits.val.labels, min_positives=minimum)
    np.testing.assert_allclose(saved, tuning.thresholds, atol=1e-5)
    untuned = [name for name, entry in table["classes"].items() if not entry["tuned"]]
    enough = (splits.val.labels > 0).sum(axis=0) >= minimum
    assert untuned == [n for n, h in zip(module.class_names, enough, strict=True) if not h]
    assert all(table["classes"][name]["threshold"] == 0.5 for name in untuned)
    assert module.thresholds_tuned and module.decision_thresholds == saved


def test_tuning_picks_the_f1_optimal_threshold_by_hand() -> None:
    unknown_high = 0.95  # an unknown entry: ignored, although it would change F1 were it counted negative
    probs = np.array(
        [
            [0.9, 0.9, 0.8, 0.3],
            [0.8, 0.1, 0.8, 0.2],
            [0.7, 0.2, 0.4, 0.1],
            [0.6, 0.3, 0.1, 0.9],
            [0.3, 0.4, 0.1, 0.9],
            [unknown_high, 0.5, 0.1, 0.9],
        ]
    )
    labels = np.array(
        [
            [1, -1, 1, 1],
            [-1, -1, -1, 1],
            [1, 0, -1, 0],
            [1, -1, 0, 0],
            [-1, -1, 0, 0],
            [0, -1, 0, 0],
        ],
        dtype=np.int8,
    )
    tuning = tune_thresholds(probs, labels)
    # Class 0, known sorted 0.9+ 0.8- 0.7+ 0.6+ 0.3-: F1 per cut 2/4, 2/5, 4/6, 6/7, 6/8 → cut below 0.6.
    assert tuning.thresholds[0] == pytest.approx(0.45) and tuning.f1[0] == pytest.approx(6 / 7)
    # Class 1 has no known positive: default, untuned.
    assert tuning.thresholds[1] == 0.5 and np.isnan(tuning.f1[1]) and not tuning.tuned[1]
    # Class 2: the tie at 0.8 (one positive, one negative) cannot be split; F1 2/3 keeping both.
    assert tuning.thresholds[2] == pytest.approx(0.6) and tuning.f1[2] == pytest.approx(2 / 3)
    # Class 3: only positives known: keep them all, threshold at the lowest probability.
    assert tuning.thresholds[3] == pytest.approx(0.2) and tuning.f1[3] == 1.0
    assert tuning.positives.tolist() == [3, 0, 1, 2] and tuning.known.tolist() == [5, 5, 3, 2]
    # Too few known positives to fit a threshold: classes 2 (one) and 3 (two) keep the default.
    guarded = tune_thresholds(probs, labels, min_positives=3)
    assert guarded.tuned.tolist() == [True, False, False, False]
    assert guarded.thresholds[0] == pytest.approx(0.45) and guarded.thresholds[2:].tolist() == [0.5, 0.5]

    # On random data no threshold on a fine grid beats the tuned one.
    rng = np.random.default_rng(0)
    probs = rng.random((200, 5))
    labels = np.where(rng.random((200, 5)) < probs * 0.8, 1, -1) * (rng.random((200, 5)) < 0.7)
    tuning = tune_thresholds(probs, labels)
    for c in range(5):
        known = labels[:, c] != 0
        p, y = probs[known, c], labels[known, c] > 0

        def f1(t: float, p: np.ndarray = p, y: np.ndarray = y) -> float:
            chosen = p >= t
            return 2 * (chosen & y).sum() / (chosen.sum() + y.sum())

        assert f1(tuning.thresholds[c]) == pytest.approx(tuning.f1[c])
        assert max(f1(t) for t in np.linspace(0, 1, 1001)) <= tuning.f1[c] + 1e-12


def test_linear_head_checkpoint_loads(tmp_path: Path) -> None:
    extra = ["model.trainable=none", "model.head=linear", "method.name=assume_negative", "trainer.epochs=1"]
    # select_on=test swaps the validation loader for the test one; thresholds must still come from validation.
    config = tiny(tmp_path, *extra, "trainer.run_name=linear", "trainer.select_on=test")
    result = train(config)
    table = json.loads((result.run_dir / "thresholds.json").read_text())
    val_labels = prepare_splits(config.data).val.labels
    assert [entry["known"] for entry in table["classes"].values()] == (val_labels != 0).sum(axis=0).tolist()
    for path in sorted((result.run_dir / "checkpoints").glob("*.ckpt")):
        payload = torch.load(path, map_location="cpu", weights_only=True)
        assert payload["hst_head"] == "linear" and payload["hst_embeddings_source"] is None
        module, config = load_module(path)
        assert config.model.head == "linear"
        network = {f"network.{k}": v for k, v in module.network.state_dict().items()}
        assert network.keys() == {k for k in payload["state_dict"] if k.startswith("network.")}
        assert all(torch.equal(v, payload["state_dict"][k]) for k, v in network.items())
        assert module.decision_thresholds == payload["hst_thresholds"]
        images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            assert module(images).shape == (2, 24)


def test_loading_tolerates_other_method_parameters(run: tuple[Path, TrainConfig], tmp_path: Path) -> None:
    run_dir, _ = run
    best = run_dir / "checkpoints" / "best.ckpt"
    original, _ = load_module(best)
    payload = read_checkpoint(best)
    state = payload["state_dict"]
    # An older IST head with other dims, a parameter that no longer exists, one that is new now.
    state["method.ist_head.fc1.weight"] = torch.zeros(7, 64)
    state["method.old_parameter"] = torch.zeros(3)
    del state["method.inter_threshold"]
    old = tmp_path / "old.ckpt"
    torch.save(payload, old)
    module, _ = load_module(old)
    assert {"ist_head.fc1.weight", "inter_threshold"} <= set(module.method_keys_missing)
    assert set(module.method_keys_ignored) == {"ist_head.fc1.weight", "old_parameter"}
    assert torch.equal(module.method.intra_threshold, original.method.intra_threshold)
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(module(images), original(images))

    # A network that does not fit its config is an error naming the file.
    state["network.sarl.classifier.weight"] = torch.zeros(3, 3)
    broken = tmp_path / "broken.ckpt"
    torch.save(payload, broken)
    with pytest.raises(ValueError, match=r"broken\.ckpt"):
        load_module(broken)


def test_older_checkpoint_format_loads_with_default_thresholds(run: tuple[Path, TrainConfig], tmp_path: Path) -> None:
    run_dir, _ = run
    payload = read_checkpoint(run_dir / "checkpoints" / "best.ckpt")
    for key in HST_KEYS:
        if key not in ("hst_config", "hst_class_names", "hst_method_state"):
            del payload[key]
    payload["hst_config"]["model"]["a_removed_option"] = 3  # config keys of another version are ignored
    old = tmp_path / "format1.ckpt"
    torch.save(payload, old)
    module, _ = load_module(old)
    assert module.decision_thresholds == [0.5] * 24 and not module.thresholds_tuned
    with pytest.raises(ConfigError, match="no tuned thresholds"):
        resolve_threshold("tuned", module)
    assert resolve_threshold("auto", module) == (0.5, None)
    # Something other than a checkpoint dict is refused with the file name.
    torch.save([1, 2], tmp_path / "list.ckpt")
    with pytest.raises(ValueError, match=r"list\.ckpt"):
        load_module(tmp_path / "list.ckpt")


@pytest.mark.filterwarnings("ignore:.*callbacks used to create the checkpoint.*")
@pytest.mark.filterwarnings("ignore:.*module\\(s\\) in eval mode.*")
@pytest.mark.filterwarnings("ignore:.*LeafSpec.*")
def test_lightning_resumes_from_last_checkpoint(run: tuple[Path, TrainConfig], tmp_path: Path) -> None:
    run_dir, config = run
    last = run_dir / "checkpoints" / "last.ckpt"
    saved = read_checkpoint(last)
    config = tiny(tmp_path, "trainer.epochs=3")
    splits = prepare_splits(config.data)
    module = PartialLabelModule(config, splits.train.class_names, splits.train.labels, len(splits.train))
    backbone = module.network.backbone
    datamodule = PartialLabelDataModule(splits, config.data, backbone.mean, backbone.std)
    trainer = build_trainer(config, tmp_path, [], log=False)
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(last))
    assert saved["epoch"] == 1 and trainer.current_epoch == 3  # one more epoch on top of the two saved
    assert module.decision_thresholds == saved["hst_thresholds"]
