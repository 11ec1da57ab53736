"""Shared by the SAE benchmarks: the split CSV of a generated feature cohort."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def write_bench_split(root: Path, split: dict[str, list[str]]) -> Path:
    """``<root>/splits/bench_0/splits_0.csv``: one ragged column per set (CLAM's layout)."""
    m = max(map(len, split.values()))
    csv = root / "splits" / "bench_0" / "splits_0.csv"
    csv.parent.mkdir(parents=True)
    pd.DataFrame({k: v + [None] * (m - len(v)) for k, v in split.items()}).to_csv(csv)
    return csv
