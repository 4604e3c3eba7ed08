"""Shared test fixtures: float64 by default for exact comparisons, seeded RNG."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


def pytest_configure(config):
    torch.set_num_threads(max(1, torch.get_num_threads()))
