"""CPU thread control for the SAE step: :func:`few_threads` runs the small
bookkeeping ops on one thread, :func:`all_threads` gives one big kernel inside
it the full count back."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

_all_threads: int | None = None


@contextmanager
def few_threads(enabled: bool = True) -> Iterator[None]:
    """Run small bookkeeping ops on one CPU thread; :func:`all_threads` blocks
    inside get the full count back. Handing a small op to a second OpenMP
    thread costs more than the op, and far more when other processes keep
    that thread waiting for a core."""
    global _all_threads
    n = torch.get_num_threads()
    if not enabled or n == 1:
        yield
        return
    outer, _all_threads = _all_threads, n
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
        _all_threads = outer


@contextmanager
def all_threads() -> Iterator[None]:
    """Inside :func:`few_threads`: use every thread for one big kernel."""
    n = _all_threads
    if n is None or torch.get_num_threads() == n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(1)

