"""Small-tensor tests: one intra-op thread (thread-pool contention costs 100x on a loaded 2-core machine)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
