"""What the two measurements of ``speed.py`` share: devices, peak memory, isolated runs, medians, profiles."""

from __future__ import annotations

import math
import multiprocessing
import statistics
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

MIB = 2**20


def resolve_device(name: str) -> torch.device:
    """``auto`` → cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _proc_status_bytes(field_name: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` in bytes; None where the file does not exist (not Linux)."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) * 1024
    return None


def _reset_peak_rss() -> None:
    # writing 5 to clear_refs resets VmHWM (Linux ≥ 4.0); without it VmHWM still holds the setup peak, lower
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


class PeakMemory:
    """Peak memory above the level at ``start()``: CUDA allocator on GPU, resident set (``VmHWM``) on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.base = 0

    def start(self) -> None:
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            _reset_peak_rss()
            self.base = _proc_status_bytes("VmRSS") or 0

    def peak(self) -> float:
        """Bytes above the start level; NaN where it cannot be read."""
        if self.device.type == "cuda":
            sync(self.device)
            return float(torch.cuda.max_memory_allocated(self.device) - self.base)
        high = _proc_status_bytes("VmHWM")
        return math.nan if high is None else float(max(high - self.base, 0))


def run_isolated(isolate: bool, fn: Callable[..., Any], **kwargs: Any) -> Any:
    """``fn(**kwargs)``, in a fresh spawned process when ``isolate`` (so its peak memory is its own)."""
    if not isolate:
        return fn(**kwargs)
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, **kwargs).result()


def median_ms(seconds: Sequence[float]) -> float:
    return 1000.0 * statistics.median(seconds)


def activities(device: torch.device) -> list[torch.profiler.ProfilerActivity]:
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    return activities


def top_ops(prof: torch.profiler.profile, device: torch.device, row_limit: int = 12) -> str:
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort_by, row_limit=row_limit, max_name_column_width=48)
