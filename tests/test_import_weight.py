"""What the inference commands import: start-up is a large part of a short run on a CPU (docs/performance.md)."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _imported_after(module: str, prefixes: tuple[str, ...]) -> list[str]:
    script = f"import sys, {module}\nprint(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in {prefixes!r})))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


@pytest.mark.parametrize("module", ["hst.apps.predict", "hst.apps.complete", "hst.apps.inference"])
def test_inference_commands_do_not_import_lightning(module: str) -> None:
    # Lightning (and the torchmetrics, scipy.signal it pulls in) costs about 2 s of a predict run's start-up.
    assert _imported_after(module, ("lightning", "pytorch_lightning", "torchmetrics")) == []


def test_the_extract_features_command_imports_torch_only_when_it_runs_it() -> None:
    assert _imported_after("hst.commands.extract_features", ("torch", "timm", "torchvision", "lightning")) == []
    assert _imported_after("hst.apps.extract_features", ("torch", "timm", "torchvision", "lightning")) == []
