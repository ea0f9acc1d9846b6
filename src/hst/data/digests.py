"""Image file digests: what identifies a dataset's image files by content, remembered between runs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from hst.data.base import MultiLabelData
from hst.io import write_text_atomic

DIGEST_MEMO = "image-digests.json"
"""In the cache folder: each image file's content sha256 with the size and mtime it had when hashed."""


def _content_sha256(path: Path) -> tuple[int, str]:
    content = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            content.update(chunk)
            size += len(chunk)
    return size, content.hexdigest()


def _load_memo(memo_path: Path) -> dict[str, list[Any]]:
    try:
        memo = json.loads(memo_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # a missing or damaged memo only costs re-hashing
    return memo if isinstance(memo, dict) else {}


def image_files_digest(data: MultiLabelData, memo_path: Path | None = None) -> str | None:
    """sha256 over each image file's size and content sha256, in image order (``None`` for rendered datasets).

    Content, not mtimes: a copied or re-mounted dataset keeps its cache, an edited image gets a new one. With
    ``memo_path`` (a JSON file) a file whose size and mtime are those it had when hashed is not read again, as
    make trusts mtimes; a new mtime costs a re-hash, never a re-extraction.
    """
    if data.image_paths is None:
        return None
    memo = _load_memo(memo_path) if memo_path is not None else {}
    changed = False
    digest = hashlib.sha256()
    for path in data.image_paths:
        try:
            stat = path.stat()
            name = str(path.resolve())
            known = memo.get(name)
            if isinstance(known, list) and known[:2] == [stat.st_size, stat.st_mtime_ns]:
                size, sha = stat.st_size, str(known[2])
            else:
                size, sha = _content_sha256(path)
                memo[name] = [stat.st_size, stat.st_mtime_ns, sha]
                changed = True
            entry = f"{size}\t{sha}\n"
        except OSError:
            entry = f"{path.name}\tmissing\n"
        digest.update(entry.encode("utf-8"))
    if changed and memo_path is not None:
        try:
            memo_path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(memo_path, json.dumps(memo))
        except OSError:
            pass  # a read-only cache folder: the key is right either way, only the next run hashes again
    return digest.hexdigest()
