"""Shared fixtures. Real reference data lives in ../shared/data (CI has it, a
fresh clone does not): tests that need it use ``shared_data`` and skip."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SAE1N_SHARED_DATA", REPO.parent / "shared" / "data"))


# the paper's recorded runs; SAE1N_PAPER_REFERENCE: another folder of the same layout (held-out runs)
PAPER_REFERENCE = Path(os.environ.get("SAE1N_PAPER_REFERENCE", SHARED_DATA / "paper_reference"))


def paper_reference_fixture(stage: str):
    """A module fixture ``ref``: ``PAPER_REFERENCE/<stage>``, or skip when absent."""

    @pytest.fixture(scope="module")
    def ref(shared_data) -> Path:
        root = PAPER_REFERENCE / stage
        if not root.is_dir():
            pytest.skip(f"{root} not found")
        return root

    return ref


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ../shared/data, or skip when this checkout has none."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real reference data not found at {SHARED_DATA} (set SAE1N_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _quiet_progress(monkeypatch):
    monkeypatch.setenv("SAE1N_PROGRESS", "0")
