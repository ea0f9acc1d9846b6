"""The one progress display of long loops over images (feature extraction, predict, complete)."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def progress_bar(
    total: int, enabled: bool, description: str, transient: bool = False, plain_lines: bool = True
) -> Iterator[Callable[[int], None]]:
    """Yields ``advance(n)``: a rich bar on stderr when it is a terminal (or always, with ``plain_lines=False``),
    otherwise a line every ~10% of ``total``; nothing when not ``enabled``.

    The bar goes to stderr so that tables and redirected stdout stay clean; ``transient`` removes it when done.
    """
    if not enabled:
        yield lambda n: None
        return
    if sys.stderr.isatty() or not plain_lines:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (TextColumn(description), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, transient=transient, console=Console(stderr=True)) as progress:
            task = progress.add_task(description, total=total)
            yield lambda n: progress.advance(task, n)
        return
    done = 0
    next_report = 0
    start = time.perf_counter()

    def advance(n: int) -> None:
        nonlocal done, next_report
        done += n
        if done >= next_report or done == total:
            elapsed = time.perf_counter() - start
            print(f"{description}: {done}/{total} images, {elapsed:.1f} s", file=sys.stderr, flush=True)
            next_report = done + max(1, total // 10)

    yield advance
