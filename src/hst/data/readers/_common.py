"""Small helpers shared by the dataset readers: file access, JSON loading, label matrices."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hst.data.base import DataError
from hst.labels import LABEL_DTYPE, NEGATIVE, POSITIVE


def at(path: Path, line: int | None = None, column: int | str | None = None) -> str:
    """Location prefix for error messages: ``path, line N, column X``."""
    text = str(path)
    if line is not None:
        text += f", line {line}"
    if column is not None:
        text += f", column {column}"
    return text


def require_file(path: Path, what: str) -> None:
    """Raise :class:`DataError` unless ``path`` is an existing regular file."""
    if not path.exists():
        raise DataError(f"{path}: {what} not found")
    if not path.is_file():
        raise DataError(f"{path}: {what} is not a file")


def read_bytes(path: Path, what: str) -> bytes:
    """The file's bytes, with missing or unreadable files reported as :class:`DataError`."""
    require_file(path, what)
    try:
        return path.read_bytes()
    except OSError as error:
        raise DataError(f"{path}: cannot read {what}: {error}") from error


def decode(data: bytes, path: Path, what: str) -> str:
    """UTF-8 text (a leading byte-order mark is dropped); bad bytes are reported with their line."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise DataError(f"{at(path, line)}: {what} is not valid UTF-8 text ({error.reason})") from error


def read_text(path: Path, what: str) -> str:
    """Read a UTF-8 text file; line endings are left untouched."""
    return decode(read_bytes(path, what), path, what)


def read_list(path: Path, what: str, first_word: bool = False) -> list[tuple[int, str]]:
    """(line number, image) of every non-blank line of an image list, in file order; an image listed twice is an error.

    An image is the stripped line, or with ``first_word`` its first word (the words after it are flags).
    """
    entries: list[tuple[int, str]] = []
    first: dict[str, int] = {}
    for line, raw in enumerate(read_text(path, what).split("\n"), start=1):
        entry = raw.strip()
        if not entry:
            continue
        if first_word:
            entry = entry.split()[0]
        if entry in first:
            raise DataError(f"{at(path, line)}: image {entry!r} is already listed on line {first[entry]}")
        first[entry] = line
        entries.append((line, entry))
    return entries


def parse_json(text: str, path: Path, line: int | None = None) -> object:
    """JSON text from ``path`` (its line ``line`` when given); errors name the line and column."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        where = at(path, error.lineno if line is None else line, error.colno)
        raise DataError(f"{where}: invalid JSON: {error.msg}") from error
    except RecursionError as error:
        raise DataError(f"{at(path, line)}: JSON nested too deeply to parse") from error


def load_json(path: Path, what: str) -> object:
    """Parse a whole JSON file; syntax errors name the line and column."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"{at(path, error.lineno, error.colno)}: invalid JSON in {what}: {error.msg}") from error
    except RecursionError as error:
        raise DataError(f"{path}: {what} is nested too deeply to parse") from error


def resolve_image(base: Path, cell: str) -> Path:
    """An image path as written in a manifest: absolute, or relative to the manifest's folder."""
    image = Path(cell)
    return image if image.is_absolute() else base / image


def positives_matrix(num_images: int, num_classes: int, rows: Sequence[int], cols: Sequence[int]) -> np.ndarray:
    """An N×C matrix that is +1 at (rows[k], cols[k]) and -1 (known negative) everywhere else."""
    labels = np.full((num_images, num_classes), NEGATIVE, dtype=LABEL_DTYPE)
    if len(rows):
        labels[np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)] = POSITIVE
    return labels


def check_class_names(names: Sequence[str], path: Path, what: str) -> list[str]:
    """Class names must be non-empty and unique; returns them as a list."""
    names = list(names)
    if not names:
        raise DataError(f"{path}: {what} lists no class names")
    first: dict[str, int] = {}
    for index, name in enumerate(names):
        if not name:
            raise DataError(f"{path}: {what}: class {index} has an empty name")
        if name in first:
            raise DataError(f"{path}: {what}: class name {name!r} appears twice (classes {first[name]} and {index})")
        first[name] = index
    return names
