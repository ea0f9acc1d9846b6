"""Shared fixtures."""

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread for the module: results then match a one-thread subprocess bit for bit, and on a busy
    2-core machine spinning OpenMP threads cost far more than they bring for tiny tensors."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
