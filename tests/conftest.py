"""Shared fixtures, and where the tests find the real photos (``real_data``)."""

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

DATA_ENV = "HST_DATA_DIR"
# Beside the project, as in the development setup; a clone elsewhere names its copy in HST_DATA_DIR.
DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def data_root() -> Path:
    """The folder holding ``coco128/`` and ``voc2007-train/``: ``$HST_DATA_DIR``, else ``../shared/data``."""
    given = os.environ.get(DATA_ENV)
    return Path(given).expanduser() if given else DEFAULT_DATA


def real_data(*parts: str) -> Path:
    """``data_root()/parts…``; a test that needs it fails with one message saying what is missing and how to get it."""
    root = data_root()
    path = root.joinpath(*parts)
    if not path.exists():
        origin = f"${DATA_ENV}={os.environ[DATA_ENV]}" if os.environ.get(DATA_ENV) else f"the default {DEFAULT_DATA}"
        pytest.fail(
            f"real-photo test data missing: {path} does not exist (data folder: {origin}). Put coco128/ and "
            f"voc2007-train/ in one folder and set {DATA_ENV} to it; docs/data.md says where to get them.",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread for the module: results then match a one-thread subprocess bit for bit, and on a busy
    2-core machine spinning OpenMP threads cost far more than they bring for tiny tensors."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def review_manifests(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Synthetic images as PNG files: (full labels, partial labels), for the review page's tests."""
    from tiny_run import write_image_manifests

    return write_image_manifests(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="session")
def review_checkpoint(tmp_path_factory: pytest.TempPathFactory, review_manifests: tuple[Path, Path]) -> Path:
    """A tiny model trained on ``review_manifests``, shared by the review tests (training it is their slowest part)."""
    from tiny_run import tiny_checkpoint

    labels, partial = review_manifests
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the modules that use it: the same checkpoint whichever asks first
    try:
        # The published thresholds give per-image IST and CST evidence to show; the calibrated rule scores a whole
        # dataset at once (hst complete --precision) and shows none on the page.
        return tiny_checkpoint(
            tmp_path_factory.mktemp("run"),
            [f"data.train=csv:{labels}", f"data.partial_labels={partial}", "method.name=hst_dtl"],
        )
    finally:
        torch.set_num_threads(before)


# The review tests (test_review_session.py, test_review_page.py) name the review data and model these two names;
# a module with its own ``manifests`` or ``checkpoint`` fixture (as test_complete.py has) overrides them.
@pytest.fixture(scope="module")
def manifests(review_manifests: tuple[Path, Path]) -> tuple[Path, Path]:
    return review_manifests


@pytest.fixture(scope="module")
def checkpoint(review_checkpoint: Path) -> Path:
    return review_checkpoint


@pytest.fixture
def server_factory(review_checkpoint: Path, review_manifests: tuple[Path, Path]) -> Iterator[Callable[..., object]]:
    """Starts ``hst review`` servers (``_helpers_review.Server``) on the review data and model; kills the ones left
    running when the test ends."""
    from _helpers_review import Server

    started: list[Server] = []

    def start(out: Path, *options: str, launch: tuple[str, ...] = ("-m", "hst.cli")) -> Server:
        started.append(Server(review_checkpoint, review_manifests[1], out, *options, launch=launch))
        return started[-1]

    yield start
    for server in started:
        if server.process.poll() is None:
            server.kill()
