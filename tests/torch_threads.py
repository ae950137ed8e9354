"""A module-wide autouse fixture: import it into a test module to run that module's models on one torch thread."""

import pytest


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """On a few busy cores more torch threads spin-wait on each other (10x slower on the 2-core dev machine)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
