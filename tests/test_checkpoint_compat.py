"""A checkpoint written before the package layering move loads and predicts as it did then.

``tests/data/format2.ckpt.gz`` is a gzipped format-2 checkpoint (a random-init ``test_efficientnet`` backbone
with a SARL head and HST method, weights rounded to sixteenths so the file stays small, per-class tuned
thresholds) written with the code of the commit before the move; ``format2_predictions.json`` holds what that
code predicted for ``synthetic:6`` with ``threshold="tuned"``.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from hst.apps.predict import predict
from hst.engine.module import load_module

DATA = Path(__file__).parent / "data"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def old_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("compat") / "format2.ckpt"
    with gzip.open(DATA / "format2.ckpt.gz", "rb") as packed, path.open("wb") as out:
        shutil.copyfileobj(packed, out)
    return path


def test_old_checkpoint_loads(old_checkpoint: Path) -> None:
    module, config = load_module(old_checkpoint)
    assert module.checkpoint_info["hst_format"] == 2
    assert config.model.backbone == "test_efficientnet"
    assert module.method_keys_missing == []
    assert module.method_keys_ignored == []


def test_old_checkpoint_predicts_identically(old_checkpoint: Path) -> None:
    expected = json.loads((DATA / "format2_predictions.json").read_text())
    predictions = predict(old_checkpoint, "synthetic:6", threshold="tuned")
    assert predictions.images == expected["images"]
    assert predictions.class_names == expected["class_names"]
    assert predictions.thresholds is not None
    np.testing.assert_allclose(predictions.thresholds, expected["thresholds"], rtol=0, atol=1e-7)
    np.testing.assert_allclose(predictions.probabilities, expected["probabilities"], rtol=0, atol=1e-6)
