"""Network tests run on one torch thread: the tensors are tiny, and on a 2-core machine shared with other jobs
two OpenMP threads spin-wait for each other (the same tests took 15x longer)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
