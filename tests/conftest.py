import os

import pyro
import pytest
import torch

# Keep the 2-core CI machine from oversubscribing threads.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _clean_pyro_state():
    """Each test starts with an empty param store, a fixed seed and validation on."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    pyro.enable_validation(True)
    yield
    pyro.clear_param_store()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA, which is not available here")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
