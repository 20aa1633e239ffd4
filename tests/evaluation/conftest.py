import sys
from pathlib import Path

import pytest
import torch

# tests/tiny.py: tiny models and corpora shared by every test folder.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread; on a shared machine, several threads of a tiny
    backward pass spend their time waiting for each other (measured: 13 s vs 0.2 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
