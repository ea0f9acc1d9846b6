"""Jobs for the worker-pool test, in a module of their own: spawned workers import it, and it imports nothing
heavy, so each worker starts in a moment."""

from __future__ import annotations

import os
import signal


def job(name: str) -> dict[str, str]:
    """Finishes, dies by SIGKILL (``kill``) or raises (``raise``), as its name says."""
    if name == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if name == "raise":
        raise ValueError(f"cell {name} failed")
    return {"job": name}
