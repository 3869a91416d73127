import pytest
import torch

# Tests that need a GPU carry @requires_cuda; they run wherever torch sees one. Each also gets
# the `cuda` marker, so `pytest -m cuda` runs exactly those (tools/gpu_check.sh does).
CUDA_SKIP_REASON = "needs a CUDA device"
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_SKIP_REASON)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a few seconds on a 2-core CPU")
    config.addinivalue_line("markers", "cuda: needs a CUDA device (every test with @requires_cuda)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if any(m.name == "skipif" and m.kwargs.get("reason") == CUDA_SKIP_REASON for m in item.iter_markers()):
            item.add_marker(pytest.mark.cuda)
