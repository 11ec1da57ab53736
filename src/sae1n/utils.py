"""Small helpers used across stages: seeding, device choice, progress bars."""

from __future__ import annotations

import os
import random
import sys

import numpy as np


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and (if imported) torch for reproducible runs."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def resolve_device(device: str | None = "auto") -> str:
    """Map ``auto``/``None`` to ``cuda`` when available, else ``cpu``."""
    if device in (None, "", "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def progress(iterable=None, *, desc: str = "", total: int | None = None, leave: bool = False, **kw):
    """A tqdm progress bar that stays quiet when stderr is not a terminal
    unless ``SAE1N_PROGRESS=1`` forces it on (``0`` forces it off)."""
    from tqdm.auto import tqdm

    forced = os.environ.get("SAE1N_PROGRESS")
    disable = (not sys.stderr.isatty()) if forced is None else forced == "0"
    return tqdm(iterable, desc=desc, total=total, leave=leave, disable=disable, dynamic_ncols=True, **kw)
