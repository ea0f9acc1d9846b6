"""Benchmark cells in worker processes, one process per cell, so that a worker that dies takes only its cell.

A worker killed mid-cell (SIGKILL, the kernel's OOM killer, a crash in native code) sends nothing back: the
parent notices its exit, records the cell as failed and goes on with the others. Rows reach ``results.csv``
only through the parent, whole, so a dead worker never leaves a partial row there.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

KILL_CELL_ENV = "HST_FAULT_KILL_CELL"
"""Fault injection for tests: the worker training the cell whose run name (``<method>-p<proportion>-s<seed>``)
equals this value SIGKILLs itself at its first training step."""


@dataclass
class CellFailure:
    """A cell whose worker ended without a row."""

    key: Any
    reason: str


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (killed from outside: out of memory, or by a user or scheduler)" if -code == signal.SIGKILL else ""
        return f"worker process killed by {name}{hint}"
    return f"worker process exited with code {code} without a result"


def _child(
    connection: Connection, job: Callable[[Any], dict[str, str]], payload: Any, threads: int, run_name: str
) -> None:
    import torch

    torch.set_num_threads(threads)
    if run_name and os.environ.get(KILL_CELL_ENV) == run_name:
        from hst.engine.train import KILL_AT_STEP_ENV

        os.environ[KILL_AT_STEP_ENV] = "1"
    try:
        result = job(payload)
    except BaseException as error:  # reported to the parent, which records the cell as failed
        text = "".join(traceback.format_exception_only(type(error), error)).strip()
        connection.send(("error", f"{text}\n{traceback.format_exc(limit=-8)}"))
    else:
        connection.send(("ok", result))
    finally:
        connection.close()


def run_cells(
    jobs: Sequence[tuple[Any, Any, str]],
    job: Callable[[Any], dict[str, str]],
    workers: int,
    threads: int,
    on_done: Callable[[Any, dict[str, str]], None],
    on_failed: Callable[[CellFailure], None],
) -> list[CellFailure]:
    """Run ``job(payload)`` for each ``(key, payload, run_name)`` in up to ``workers`` spawned processes at once.

    ``on_done(key, row)`` gets each finished cell's row and ``on_failed`` each failure, both in this process and
    in the order cells end. A failure (an exception in the cell, or a worker that dies) never stops the others.
    """
    context = multiprocessing.get_context("spawn")
    pending = list(jobs)
    running: dict[int, tuple[Any, Any, Connection]] = {}  # sentinel -> (key, process, receiving end)
    failures: list[CellFailure] = []
    try:
        while pending or running:
            while pending and len(running) < workers:
                key, payload, run_name = pending.pop(0)
                receive, send = context.Pipe(duplex=False)
                process = context.Process(
                    target=_child, args=(send, job, payload, threads, run_name), name=f"hst-cell-{run_name}"
                )
                process.start()
                send.close()  # only the child writes: its end closing is how a dead worker shows up
                running[process.sentinel] = (key, process, receive)
            ready = wait([*running.keys(), *(entry[2] for entry in running.values())])
            finished = {
                sentinel for sentinel, (_, _, receive) in running.items() if sentinel in ready or receive in ready
            }
            for sentinel in finished:
                key, process, receive = running.pop(sentinel)
                message: tuple[str, Any] | None = None
                try:
                    if receive.poll():
                        message = receive.recv()
                except (EOFError, OSError):
                    message = None  # the worker died before or while sending
                finally:
                    receive.close()
                process.join()
                if message is not None and message[0] == "ok":
                    on_done(key, message[1])
                    continue
                reason = message[1] if message is not None else _describe_exit(process.exitcode)
                failure = CellFailure(key, reason)
                failures.append(failure)
                on_failed(failure)
    finally:
        for _, process, receive in running.values():  # the parent itself is stopping (Ctrl-C): stop the workers
            process.terminate()
            process.join(5)
            receive.close()
    return failures
