"""Shared test configuration.

Tests use one intra-op thread: they work on small tensors, where thread start-up and
oversubscription (CI machines have 2 cores, often shared) cost far more than they save.
"""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
