import os

import pytest
import torch

# no test may reach the internet
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """One torch thread for the test (modules opt in with ``pytestmark``): float sums in a fixed
    order, whatever the machine's load."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def random_tokens(n: int, context: int = 77, seed: int = 0) -> torch.Tensor:
    """Rows shaped like tokenizer output: SOS, random ids, EOT (the highest id), zero padding."""
    g = torch.Generator().manual_seed(seed)
    t = torch.zeros(n, context, dtype=torch.long)
    for i in range(n):
        length = int(torch.randint(1, context - 1, (1,), generator=g)) if i else context - 2
        t[i, 0] = 49406
        t[i, 1 : length + 1] = torch.randint(1, 49406, (length,), generator=g)
        t[i, length + 1] = 49407
    return t
