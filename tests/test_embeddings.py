"""Class-name embeddings from the offline GloVe package, GloVe text files and .npy matrices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import real_data
from hst.data.base import DataError
from hst.models import embeddings
from hst.models.embeddings import EmbeddingError, class_name_words, load_label_embeddings

VOC_CLASSES = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]  # fmt: skip


def _coco_classes() -> list[str]:
    config = yaml.safe_load(real_data("coco128", "classes.yaml").read_text())
    return [config["names"][index] for index in sorted(config["names"])]


def _word(word: str) -> np.ndarray:
    return load_label_embeddings([word])[0]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_coco_and_voc_names_resolve() -> None:
    coco = _coco_classes()
    assert len(coco) == 80 and "hair drier" in coco
    coco_vectors = load_label_embeddings(coco)
    assert coco_vectors.shape == (80, 50) and coco_vectors.dtype == np.float32
    assert np.isfinite(coco_vectors).all()
    assert len({row.tobytes() for row in coco_vectors}) == 80
    voc_vectors = load_label_embeddings(VOC_CLASSES)
    assert voc_vectors.shape == (20, 50)
    # classes shared by both datasets get the same vector
    np.testing.assert_array_equal(voc_vectors[VOC_CLASSES.index("dog")], coco_vectors[coco.index("dog")])


def test_glued_and_multi_word_names_average_their_words() -> None:
    dining, table = _word("dining"), _word("table")
    np.testing.assert_allclose(_word("diningtable"), (dining + table) / 2, rtol=0, atol=1e-6)
    np.testing.assert_allclose(_word("dining table"), (dining + table) / 2, rtol=0, atol=1e-6)
    np.testing.assert_allclose(_word("tvmonitor"), (_word("tv") + _word("monitor")) / 2, rtol=0, atol=1e-6)
    hot, dog = _word("hot"), _word("dog")
    for spelling in ("hot dog", "Hot_Dog", "hot-dog"):
        np.testing.assert_allclose(_word(spelling), (hot + dog) / 2, rtol=0, atol=1e-6)
    triple = load_label_embeddings(["baseball glove bag"])[0]
    expected = (_word("baseball") + _word("glove") + _word("bag")) / 3
    np.testing.assert_allclose(triple, expected, rtol=0, atol=1e-6)
    assert not np.allclose(_word("hot dog"), dog)


def test_generic_split_of_an_unknown_glued_word() -> None:
    np.testing.assert_allclose(_word("hairdrier"), (_word("hair") + _word("drier")) / 2, atol=1e-6)
    assert class_name_words(" Traffic  light ") == ["traffic", "light"]


def test_out_of_vocabulary_names_are_all_listed() -> None:
    with pytest.raises(EmbeddingError) as caught:
        load_label_embeddings(["cat", "qxzvw dog", "zzqqxv", "teddy bear"])
    message = str(caught.value)
    assert "glove-6b-50d" in message and "2 class names" in message
    assert "'qxzvw dog' (unknown: qxzvw)" in message and "'zzqqxv' (unknown: zzqqxv)" in message
    assert "teddy" not in message
    with pytest.raises(EmbeddingError, match="without any word"):
        load_label_embeddings(["cat", " - "])


def test_semantic_sanity() -> None:
    cat, dog, car = _word("cat"), _word("dog"), _word("car")
    assert _cosine(cat, dog) > _cosine(cat, car) + 0.1
    assert _cosine(_word("bus"), _word("truck")) > _cosine(_word("bus"), _word("banana"))


def test_package_vocabulary_is_cached() -> None:
    load_label_embeddings(["cat"])
    hits = embeddings._package_vocabulary.cache_info().hits
    load_label_embeddings(["dog"])
    assert embeddings._package_vocabulary.cache_info().hits == hits + 1
    assert embeddings._package_vocabulary.cache_info().misses <= 1


def test_glove_text_file(tmp_path: Path) -> None:
    path = tmp_path / "vectors.txt"
    path.write_text(
        "the 0.5 0.5 0.5\nTable 9 9 9\ndining 1 2 3\ntable 3 2 1\nPlant 0 4 0\npotted 2 0 0\nbroken line\n",
        encoding="utf-8",
    )
    vectors = load_label_embeddings(["dining table", "diningtable", "pottedplant", "The"], source=path)
    assert vectors.dtype == np.float32
    np.testing.assert_array_equal(vectors[0], [2, 2, 2])  # lowercase 'table' wins over 'Table'
    np.testing.assert_array_equal(vectors[1], [2, 2, 2])
    np.testing.assert_array_equal(vectors[2], [1, 2, 0])  # 'plant' only exists cased
    np.testing.assert_array_equal(vectors[3], [0.5, 0.5, 0.5])
    with pytest.raises(EmbeddingError, match=r"'sofa' \(unknown: sofa\)"):
        load_label_embeddings(["sofa", "dining"], source=path)
    with pytest.raises(DataError, match=r"vectors\.txt, line 7"):
        load_label_embeddings(["broken"], source=path)


def test_glove_text_file_is_read_only_as_far_as_needed(tmp_path: Path) -> None:
    path = tmp_path / "vectors.txt"
    # 'tab' (a split candidate of 'table') is malformed but never needed, since 'table' comes first
    path.write_text("table 1 2\r\ntab oops\n", encoding="utf-8")
    np.testing.assert_array_equal(load_label_embeddings(["Table"], source=path), [[1, 2]])
    with pytest.raises(DataError, match="line 2"):
        load_label_embeddings(["tab"], source=path)


def test_npy_matrix_source(tmp_path: Path) -> None:
    path = tmp_path / "labels.npy"
    matrix = np.arange(12, dtype=np.float64).reshape(3, 4)
    np.save(path, matrix)
    loaded = load_label_embeddings(["a", "b", "c"], source=str(path))
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, matrix)
    with pytest.raises(DataError, match=r"labels\.npy.*2 × E.*\(3, 4\)"):
        load_label_embeddings(["a", "b"], source=path)
    with pytest.raises(EmbeddingError, match="glove-6b-50d"):
        load_label_embeddings(["a"], source=tmp_path / "labels.csv")
