"""The embedded synthetic dataset: labels, determinism, drawn content, structure, speed, separability."""

from __future__ import annotations

import dataclasses
import pickle
import re
import time

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score

from hst.data.base import MultiLabelData
from hst.data.spec import load_dataset
from hst.data.synthetic import (
    SCENE_TEMPLATES,
    SCENES,
    SYNTHETIC_CLASSES,
    make_synthetic,
    render_layout,
    render_synthetic,
    sample_labels,
    synthetic_layout,
)


@pytest.fixture(scope="module")
def big() -> MultiLabelData:
    return make_synthetic(3000, seed=0)


def test_class_and_scene_tables() -> None:
    assert len(SYNTHETIC_CLASSES) >= 20
    assert len(set(SYNTHETIC_CLASSES)) == len(SYNTHETIC_CLASSES)
    assert all(re.fullmatch(r"[a-z]+", name) for name in SYNTHETIC_CLASSES)
    assert 5 <= len(SCENES) <= 7
    assert set(SCENE_TEMPLATES) == set(SCENES)
    used: set[str] = set()
    for probs in SCENE_TEMPLATES.values():
        assert set(probs) <= set(SYNTHETIC_CLASSES)
        assert all(0 < p < 1 for p in probs.values())
        used |= set(probs)
    assert used == set(SYNTHETIC_CLASSES)
    # Some classes are shared by several scenes, so scene is not a lookup table from one label.
    shared = [name for name in SYNTHETIC_CLASSES if sum(name in t for t in SCENE_TEMPLATES.values()) >= 3]
    assert len(shared) >= 4


def test_dataset_contents(big: MultiLabelData) -> None:
    data = big
    assert len(data) == 3000
    assert data.labels.dtype == np.int8
    assert data.class_names == list(SYNTHETIC_CLASSES)
    assert set(np.unique(data.labels)) == {-1, 1}
    positives = (data.labels == 1).sum(axis=1)
    assert positives.min() >= 1
    assert 3.0 <= positives.mean() <= 5.0
    assert (data.labels == 1).any(axis=0).all()
    assert data.image_ids[42] == "synthetic-000042"
    assert data.image_paths is None
    scenes = data.info["scenes"]
    assert len(scenes) == 3000 and set(scenes) == set(SCENES)
    assert data.info["scene_templates"] == SCENE_TEMPLATES
    # Positives only come from classes the image's scene template allows.
    for row in range(0, 3000, 7):
        allowed = SCENE_TEMPLATES[scenes[row]]
        assert all(data.class_names[j] in allowed for j in np.flatnonzero(data.labels[row] == 1))


def test_rendered_image_format() -> None:
    data = make_synthetic(5, seed=3, image_size=96)
    image = data.load_image(4)
    assert image.mode == "RGB" and image.size == (96, 96)
    assert render_synthetic(3, 4, 224).size == (224, 224)
    with pytest.raises(IndexError):
        data.render(5)
    with pytest.raises(ValueError):
        make_synthetic(0)
    # DataLoader workers may pickle the renderer.
    clone = pickle.loads(pickle.dumps(data.render))
    assert np.array_equal(np.asarray(clone(2)), np.asarray(data.render(2)))


def test_deterministic_per_seed_and_index() -> None:
    a = make_synthetic(40, seed=7)
    b = make_synthetic(120, seed=7)
    assert np.array_equal(a.labels, b.labels[:40])
    assert a.info["scenes"] == b.info["scenes"][:40]
    # Rendering order does not matter: image i depends only on (seed, i).
    forward = [np.asarray(a.render(i)) for i in range(40)]
    for i in reversed(range(40)):
        assert np.array_equal(np.asarray(b.render(i)), forward[i])
    other = make_synthetic(40, seed=8)
    assert not np.array_equal(other.labels, a.labels)
    assert sum(np.array_equal(np.asarray(other.render(i)), forward[i]) for i in range(40)) == 0
    assert not np.array_equal(forward[0], forward[1])


def test_labels_are_exactly_the_drawn_objects(big: MultiLabelData) -> None:
    data = big
    for i in range(300):
        layout = synthetic_layout(0, i)
        drawn = {obj.name for obj in layout.objects}
        labelled = {data.class_names[j] for j in np.flatnonzero(data.labels[i] == 1)}
        assert drawn == labelled == set(layout.classes)
        assert layout.scene == data.info["scenes"][i]
        scene, present = sample_labels(0, i)
        assert SCENES[scene] == layout.scene
        assert np.array_equal(present, data.labels[i] == 1)


def test_every_object_is_visible() -> None:
    side = 128
    for i in range(40):
        layout = synthetic_layout(1, i)
        full = np.asarray(render_layout(layout, side)).astype(np.int16)
        for k, obj in enumerate(layout.objects):
            rest = layout.objects[:k] + layout.objects[k + 1 :]
            without = np.asarray(render_layout(dataclasses.replace(layout, objects=rest), side)).astype(np.int16)
            changed = int((np.abs(full - without).sum(axis=-1) > 0).sum())
            # A visible object changes a good part of its nominal square, not a few stray pixels.
            assert changed >= 0.25 * (obj.size * side) ** 2, (i, obj.name, changed)


def test_cooccurrence_is_structured(big: MultiLabelData) -> None:
    positive = (big.labels == 1).astype(np.float64)
    marginal = positive.mean(axis=0)
    counts = positive.T @ positive
    conditional = counts / np.maximum(counts.diagonal()[:, None], 1)  # P(j | i) in row i
    index = {name: k for k, name in enumerate(SYNTHETIC_CLASSES)}
    for given, then in (("knife", "fork"), ("bus", "car"), ("laptop", "book"), ("toothbrush", "towel")):
        i, j = index[given], index[then]
        assert conditional[i, j] > 2.5 * marginal[j], (given, then)
    # Classes from disjoint scenes never co-occur.
    assert counts[index["laptop"], index["boat"]] == 0
    assert counts[index["fork"], index["bus"]] == 0
    lift = conditional / np.maximum(marginal[None, :], 1e-9)
    off_diagonal = ~np.eye(len(SYNTHETIC_CLASSES), dtype=bool)
    assert (lift[off_diagonal] > 2.0).sum() >= 30


def test_render_speed() -> None:
    render_synthetic(0, 0)
    start = time.perf_counter()
    for i in range(200):
        render_synthetic(0, i, 128)
    assert time.perf_counter() - start < 2.0


def _colour_histograms(images: np.ndarray) -> np.ndarray:
    bins = (images // 64).astype(np.int64)
    codes = (bins[..., 0] * 16 + bins[..., 1] * 4 + bins[..., 2]).reshape(len(images), -1)
    return np.stack([np.bincount(row, minlength=64) for row in codes]) / codes.shape[1]


def test_images_carry_label_signal() -> None:
    data = make_synthetic(750, seed=11, image_size=64)
    features = _colour_histograms(np.stack([np.asarray(data.render(i)) for i in range(len(data))]))
    targets = (data.labels == 1).astype(np.int64)
    train, test = slice(0, 500), slice(500, None)
    scores = []
    for c in range(targets.shape[1]):
        model = LogisticRegression(max_iter=300).fit(features[train], targets[train, c])
        scores.append(average_precision_score(targets[test, c], model.decision_function(features[test])))
    chance = targets[test].mean()
    assert float(np.mean(scores)) > chance + 0.25


def test_objects_of_a_class_look_alike() -> None:
    # Nearest-class-mean on tiny crops: same-class instances resemble each other across images.
    side = 64
    crops: list[np.ndarray] = []
    names: list[int] = []
    for i in range(400):
        layout = synthetic_layout(2, i)
        image = render_layout(layout, side)
        for obj in layout.objects:
            r = obj.size * side
            box = (int(obj.x * side - r), int(obj.y * side - r), int(obj.x * side + r), int(obj.y * side + r))
            crops.append(np.asarray(image.crop(box).resize((8, 8))).astype(np.float64).ravel() / 255)
            names.append(SYNTHETIC_CLASSES.index(obj.name))
    x, y = np.stack(crops), np.array(names)
    split = int(0.7 * len(y))
    means = np.stack([x[:split][y[:split] == c].mean(axis=0) for c in range(len(SYNTHETIC_CLASSES))])
    predicted = np.argmin(((x[split:, None, :] - means[None]) ** 2).sum(axis=-1), axis=1)
    assert (predicted == y[split:]).mean() > 0.4  # chance is about 1/24


def test_data_spec_reaches_the_generator() -> None:
    data = load_dataset("synthetic:30?seed=2&size=64")
    assert len(data) == 30 and data.source == "synthetic:30?seed=2&size=64"
    assert data.load_image(0).size == (64, 64)
    assert np.array_equal(data.labels, make_synthetic(30, seed=2).labels)
