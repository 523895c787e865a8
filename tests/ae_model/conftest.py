"""Fixtures the model library's tests share."""

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread for the test, and the process's count back after it: small kernels
    run faster on one thread than fighting for two busy cores, and kernels round by thread
    count, so tests that compare runs must run them alike."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
