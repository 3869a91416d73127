import pytest
import torch

# Tests that need a GPU carry @requires_cuda; they run wherever torch sees one.
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a few seconds on a 2-core CPU")
