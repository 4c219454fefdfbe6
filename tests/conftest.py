"""Fixtures shared by the test modules."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module (use with ``pytest.mark.usefixtures``): tiny models
    running small (float64) products gain nothing from a second thread, and on a shared 2-core
    machine are many times slower with 2 threads (threads wait for a busy core)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
