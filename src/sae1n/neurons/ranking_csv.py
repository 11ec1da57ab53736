"""The ranking CSV: its file names and columns, where :func:`analyze_sae` writes
it, the reader/writer, and :func:`select_units` (the MIL stage's reader, in
paper mode with the paper's unstable re-sort by p alone).

The paper's CSV columns come first (``unit_id, t_statistic, p_value,
tumor_mean_activation, normal_mean_activation``), sorted by p ascending then
t descending; rank 1 is the first row.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from sae1n.errors import ConfigError, InputFileError
from sae1n.io import atomic_write_csv
from sae1n.io.provenance import Provenance, write_sidecar

PAPER_COLUMNS = [
    "unit_id",
    "t_statistic",
    "p_value",
    "tumor_mean_activation",
    "normal_mean_activation",
]
T_TEST_CSV = "sae_analysis_t_test.csv"
RANK_CORRELATION_CSV = "sae_analysis_rank_correlation.csv"
SUMMARY_JSON = "sae_analysis_summary.json"
RANKING_KIND = "neuron-ranking"
RANKING_SCHEMA = 1
COMPAT = ("default", "paper")


def ranking_csv_path(output_dir: str | os.PathLike, exp_id: str, multiclass: bool = False) -> Path:
    """Where :func:`analyze_sae` writes its ranking."""
    return (
        Path(output_dir)
        / exp_id
        / "analysis"
        / (RANK_CORRELATION_CSV if multiclass else T_TEST_CSV)
    )


def write_ranking(path: str | os.PathLike, frame: pd.DataFrame, prov: Provenance | None = None) -> Path:
    """Write a ranking CSV atomically (rank 1 first), with its provenance sidecar."""
    path = Path(path)
    atomic_write_csv(path, frame, index=False)
    if prov is not None:
        write_sidecar(path, prov)
    return path


def read_ranking(path: str | os.PathLike, *, fix: str = "run `sae1n analyze-sae` first, or pass --unit") -> pd.DataFrame:
    """Read a ranking CSV (ours or the paper's; rank 1 first) and check it has ``unit_id``."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "neuron ranking not found", fix)
    try:
        df = pd.read_csv(path)
    except Exception as exc:
        raise InputFileError(
            path, f"cannot be read as CSV ({exc})", "re-run `sae1n analyze-sae`"
        ) from exc
    if "unit_id" not in df.columns:
        raise InputFileError(
            path,
            f"has no 'unit_id' column (columns: {', '.join(map(str, df.columns))})",
            "use the sae_analysis_t_test.csv written by `sae1n analyze-sae`",
        )
    if df.empty:
        raise InputFileError(path, "has no unit_id rows", "re-run `sae1n analyze-sae`")
    return df


def select_units(
    ranking: str | os.PathLike | pd.DataFrame,
    num_units: int,
    metric: str | None = "p_value",
    *,
    compat: str = "default",
    fix: str = "run `sae1n analyze-sae` first, or set features.use_sae_selected_units=false",
) -> np.ndarray:
    """The ``num_units`` top-ranked neurons of a ranking (CSV path or frame).

    The CSV is already ranked (p ascending, then t descending). Default mode:
    ``metric`` re-sorts *stably* (p/q ascending, anything else descending;
    ``None``/``rank`` keeps the file order), so ties keep the file order.
    ``compat="paper"``: the paper's ``df.sort_values(metric)`` with pandas'
    default (unstable) quicksort, ascending, as ``mil/main.py`` does.
    """
    if compat not in COMPAT:
        raise ConfigError(f"compat must be one of {', '.join(COMPAT)}, got {compat!r}")
    source = ranking if not isinstance(ranking, pd.DataFrame) else "ranking"
    df = ranking if isinstance(ranking, pd.DataFrame) else read_ranking(ranking, fix=fix)
    if metric not in (None, "", "rank"):
        if metric not in df.columns:
            raise ConfigError(
                f"features.sae_unit_selection_metric={metric!r} is not a column of {source} (columns: {', '.join(map(str, df.columns))})"
            )
        if compat == "paper":
            df = df.sort_values(metric)
        else:
            ascending = metric.startswith(("p_", "q_")) or metric in (
                "p_value",
                "q_value",
                "pvalue",
                "qvalue",
                "fdr",
            )
            df = df.sort_values(metric, ascending=ascending, kind="mergesort", na_position="last")
    if int(num_units) < 1:
        raise ConfigError(f"features.num_top_sae_units must be >= 1 (got {num_units})")
    units = df["unit_id"].head(int(num_units)).to_numpy()
    if len(units) == 0 or not np.all(np.isfinite(units.astype(float))):
        raise InputFileError(source, "has no usable unit ids", "re-run `sae1n analyze-sae`")
    return units.astype(np.int64)


