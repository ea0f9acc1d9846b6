"""Safe file output: atomic writes and one-writer-per-folder locks.

:func:`atomic_path` / :func:`atomic_write` write a file whole or not at all: the data goes to a unique
temporary file in the target's folder, is flushed and fsynced, then renamed over the target (and the folder
fsynced), so a kill, a full disk or a file-size limit leaves the previous file as it was. A failed write
raises :class:`WriteError` naming the target and the cause.

:func:`folder_lock` keeps a second ``hst`` process from writing into a run or benchmark folder that one is
already writing: it fails at once naming the holder's pid. The lock is an OS file lock (``filelock``), which
the operating system drops when its process dies, so the lock of a killed process is simply taken over.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from filelock import FileLock, Timeout

try:
    import resource
except ImportError:  # not on Windows: no RLIMIT_FSIZE there
    resource = None  # type: ignore[assignment]

LOCK_NAME = ".hst.lock"
"""The lock file inside a locked folder (kept on release: removing it would race with the next holder)."""
OWNER_NAME = ".hst.lock.owner"
"""JSON beside the lock naming the holding process (pid, host, command, start time)."""

_CAUSES = {
    errno.ENOSPC: "disk full",
    errno.EFBIG: "file size limit reached",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EIO: "input/output error",
}


def _read_umask() -> int:
    # Reading the umask means setting it; done once at import, before any writer threads exist.
    current = os.umask(0o022)
    os.umask(current)
    return current


_UMASK = _read_umask()


class WriteError(OSError):
    """A file could not be written; the previous file at that path, if any, is unchanged."""

    def __init__(self, target: Path, cause: str, code: int | None = None) -> None:
        super().__init__(code, cause)
        self.target = target
        self.cause = cause

    def __str__(self) -> str:
        return f"cannot write {self.target}: {self.cause}; the previous file (if any) is unchanged"


class FolderBusyError(RuntimeError):
    """Another live process holds the folder's lock."""


def _describe(error: BaseException, temp: Path | None) -> tuple[str, int | None]:
    """(cause in words, errno) of a failed write, recognising a full disk or size limit behind wrapped errors."""
    code = error.errno if isinstance(error, OSError) else None
    if code in _CAUSES:
        return f"{_CAUSES[code]} ({errno.errorcode[code]})", code
    # Writers such as torch.save report a failed write without its errno: look at the limits instead.
    size = temp.stat().st_size if temp is not None and temp.exists() else 0
    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0] if resource is not None else -1
    if resource is not None and soft != resource.RLIM_INFINITY and size >= soft:
        return f"file size limit reached (RLIMIT_FSIZE {soft} bytes; {type(error).__name__}: {error})", errno.EFBIG
    with contextlib.suppress(OSError):
        if temp is not None and shutil.disk_usage(temp.parent).free < 1 << 20:
            return f"disk full ({type(error).__name__}: {error})", errno.ENOSPC
    text = " ".join(str(error).split())
    return (f"{type(error).__name__}: {text}" if text else type(error).__name__), code


def fsync_folder(path: Path) -> None:
    """Make a rename inside ``path`` durable; a platform that cannot open folders is left as it is."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def atomic_path(target: Path | str, before_replace: Callable[[], None] | None = None) -> Iterator[Path]:
    """A unique temporary path beside ``target`` to write; on success it is fsynced and renamed over ``target``.

    ``before_replace`` runs after the data is safely on disk and just before the rename (e.g. to keep the
    previous file under another name). On any error the temporary file is removed, ``target`` is untouched
    and :class:`WriteError` is raised (other exceptions of the block, such as a validation error, pass through).
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        os.close(handle)
    except OSError as error:
        cause, code = _describe(error, None)
        raise WriteError(target, cause, code) from error
    temp = Path(name)
    # mkstemp creates 0600; a finished file gets the target's mode, or what the umask gives a new file.
    mode = target.stat().st_mode & 0o777 if target.exists() else 0o666 & ~_UMASK
    try:
        try:
            yield temp
            with open(temp, "rb+") as written:
                os.fsync(written.fileno())
            os.chmod(temp, mode)
            if before_replace is not None:
                before_replace()
            os.replace(temp, target)
        except WriteError:
            raise
        except Exception as error:
            cause, code = _describe(error, temp)
            # Errors that are not about the write (a validation error of the writer) pass through unchanged.
            if not isinstance(error, OSError) and code not in (errno.EFBIG, errno.ENOSPC):
                raise
            raise WriteError(target, cause, code) from error
        fsync_folder(target.parent)
    finally:
        with contextlib.suppress(OSError):
            temp.unlink()


@contextlib.contextmanager
def atomic_write(
    target: Path | str, mode: str = "w", encoding: str | None = "utf-8", newline: str | None = None
) -> Iterator[IO[Any]]:
    """An open file (text ``'w'`` or binary ``'wb'``) whose content replaces ``target`` only when complete."""
    if mode not in {"w", "wb"}:
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}")
    with atomic_path(target) as temp:
        if mode == "wb":
            stream: IO[Any] = open(temp, "wb")
        else:
            stream = open(temp, "w", encoding=encoding, newline=newline)
        with stream:
            yield stream
            stream.flush()


def fields_key(fields: Mapping[str, Any], length: int = 16) -> str:
    """Short sha256 of ``fields`` as sorted JSON (others as ``str``): a key that changes when any field does."""
    text = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def sidecar_path(main_file: Path | str, suffix: str) -> Path:
    """``reviewed.csv`` + ``model.json`` → ``reviewed.model.json``: a file that belongs to another, beside it."""
    main = Path(main_file)
    return main.with_name(f"{main.stem}.{suffix}")


def write_text_atomic(target: Path | str, text: str, newline: str | None = None) -> None:
    with atomic_write(target, "w", newline=newline) as stream:
        stream.write(text)


def write_bytes_atomic(target: Path | str, data: bytes) -> None:
    with atomic_write(target, "wb") as stream:
        stream.write(data)


def _owner(folder: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((folder / OWNER_NAME).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return {}


class FolderLock:
    """The lock of one folder; see :func:`folder_lock`."""

    def __init__(self, folder: Path | str, what: str = "folder") -> None:
        self.folder = Path(folder)
        self.what = what
        self._lock = FileLock(str(self.folder / LOCK_NAME))

    def acquire(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            owner = _owner(self.folder)
            pid = owner.get("pid", "unknown")
            detail = ", ".join(f"{key} {owner[key]}" for key in ("host", "started") if owner.get(key))
            command = f": {owner['command']}" if owner.get("command") else ""
            raise FolderBusyError(
                f"{self.folder} is in use: another hst process (pid {pid}{', ' + detail if detail else ''}) is "
                f"writing this {self.what}{command}. Wait for it to end or stop it; the lock of a process that has "
                "died is taken over automatically"
            ) from None
        owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:500],
        }
        try:
            write_text_atomic(self.folder / OWNER_NAME, json.dumps(owner) + "\n")
        except BaseException:
            self._lock.release()
            raise

    def release(self) -> None:
        if self._lock.is_locked:
            with contextlib.suppress(OSError):
                if _owner(self.folder).get("pid") == os.getpid():
                    (self.folder / OWNER_NAME).unlink()
            self._lock.release()

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def folder_lock(folder: Path | str, what: str = "folder") -> FolderLock:
    """A lock of ``folder`` for one writing process: ``with folder_lock(run_dir, "run"): ...``.

    A second process fails at once with :class:`FolderBusyError` naming the holder's pid and command. The OS
    releases the lock when its holder dies (even by SIGKILL), so a stale lock is taken over by the next process.
    """
    return FolderLock(folder, what)
