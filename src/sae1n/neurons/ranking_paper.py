"""``analyze-sae --compat paper``: what the paper's ``analyze_sae.py`` computes.

Float32 max-pooling and a float32 per-unit ``scipy.stats.ttest_ind`` (p-values
below ~1e-39 underflow to 0, and such ties are broken by t descending, the
sign of t ignored), the files in ``Path.glob`` order (unsorted), NaN t/p for
constant units, sorted last.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from sae1n.errors import InputFileError, Sae1nError
from sae1n.io.provenance import Provenance, check_output, input_identity, is_current
from sae1n.neurons.ranking_csv import (
    PAPER_COLUMNS,
    RANKING_KIND,
    RANKING_SCHEMA,
    ranking_csv_path,
    read_ranking,
    write_ranking,
)

log = logging.getLogger(__name__)


def paper_t_test(tumor: np.ndarray, normal: np.ndarray) -> pd.DataFrame:
    """The paper's ranking table of float32 pooled activations (S1, D) / (S0, D):
    per unit ``ttest_ind(equal_var=False, nan_policy='omit')`` in float32,
    float32 means, sorted by p ascending then t descending (stable; NaN last)."""
    tumor = np.asarray(tumor, dtype=np.float32)
    normal = np.asarray(normal, dtype=np.float32)
    d = tumor.shape[1]
    t = np.empty(d, dtype=np.float32)
    p = np.empty(d, dtype=np.float32)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        for u in range(d):
            res = stats.ttest_ind(tumor[:, u], normal[:, u], equal_var=False, nan_policy="omit")
            t[u], p[u] = res.statistic, res.pvalue
    df = pd.DataFrame(
        {
            "unit_id": np.arange(d, dtype=np.int64),
            "t_statistic": t,
            "p_value": p,
            "tumor_mean_activation": np.array([tumor[:, u].mean() for u in range(d)], dtype=np.float32),
            "normal_mean_activation": np.array([normal[:, u].mean() for u in range(d)], dtype=np.float32),
        }
    )
    return df.sort_values(["p_value", "t_statistic"], ascending=[True, False]).reset_index(drop=True)


def paper_code_files(feature_dir: str | os.PathLike) -> list[Path]:
    """``Path(feature_dir).glob('*.pt')`` in the filesystem's (unsorted) order, as the paper."""
    folder = Path(feature_dir)
    if (folder / "pt_files").is_dir():
        folder = folder / "pt_files"
    return list(folder.glob("*.pt"))


def pool_paper(
    files: list[Path], train: set[str], labels: Mapping[str, str]
) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """Max-pool (float32, ``torch.max(codes, 0)``) the train files in the given order:
    returns (tumour ids, normal ids, tumour stack, normal stack)."""
    import torch

    t_ids, n_ids, t_rows, n_rows = [], [], [], []
    for f in files:
        sid = f.stem
        if sid not in train:
            continue
        label = labels.get(sid)
        if label not in ("tumor", "normal"):
            log.warning("%s: label %r is neither tumor nor normal; skipped (as the paper)", f, label)
            continue
        try:
            codes = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for bad files
            raise InputFileError(f, f"cannot be read as a tensor ({type(exc).__name__})", "re-run save-sae-features") from exc
        if not isinstance(codes, torch.Tensor) or codes.ndim != 2 or codes.shape[0] == 0:
            raise InputFileError(f, "is not an (N, F) code tensor with N > 0", "re-run save-sae-features")
        pooled = torch.max(codes.to(torch.float32), dim=0).values.numpy()
        (t_ids if label == "tumor" else n_ids).append(sid)
        (t_rows if label == "tumor" else n_rows).append(pooled)
    if len(t_rows) < 2 or len(n_rows) < 2:
        raise Sae1nError(
            f"the t-test needs at least 2 tumour and 2 normal train slides with codes, got {len(t_rows)} and {len(n_rows)}"
        )
    return t_ids, n_ids, np.stack(t_rows), np.stack(n_rows)


def analyze_sae_paper(
    exp_id: str,
    split_csv_path: str | os.PathLike,
    feature_dir: str | os.PathLike,
    dataset_csv: str | os.PathLike,
    output_dir: str | os.PathLike,
    num_features: int | None = None,
    *,
    file_order: list[str] | None = None,
    overwrite: bool = False,
) -> pd.DataFrame:
    """``analyze-sae --compat paper``: the paper's ranking, written to
    ``<output_dir>/<exp_id>/analysis/sae_analysis_t_test.csv`` (5 columns, float32).

    ``file_order`` (slide ids) replaces the filesystem's glob order, which
    decides the float32 summation order of the means and the t-test."""
    files = paper_code_files(feature_dir)
    if not files:
        raise InputFileError(feature_dir, "no .pt code files", "pass the pt_files folder of save-sae-features")
    if file_order is not None:
        by_id = {f.stem: f for f in files}
        files = [by_id[s] for s in file_order if s in by_id]
    try:
        split = pd.read_csv(split_csv_path, dtype=str)
        meta = pd.read_csv(dataset_csv, dtype={"slide_id": str})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise InputFileError(split_csv_path, f"cannot read the split / dataset CSV ({exc})", "check the paths") from exc
    if "train" not in split.columns:
        raise InputFileError(split_csv_path, "has no 'train' column", "pass a splits_<k>.csv")
    for col in ("slide_id", "label"):
        if col not in meta.columns:
            raise InputFileError(dataset_csv, f"has no {col!r} column", "pass the metadata CSV")
    train = {Path(str(v)).stem for v in split["train"].dropna()}
    labels = dict(zip(meta["slide_id"].astype(str), meta["label"].astype(str).str.lower()))
    out = ranking_csv_path(output_dir, exp_id)
    prov = Provenance.make(
        RANKING_KIND,
        RANKING_SCHEMA,
        settings={"compat": "paper", "pooling": "max", "num_features": num_features, "file_order": [f.stem for f in files]},
        inputs={
            "split": Path(split_csv_path),
            "dataset_csv": Path(dataset_csv),
            "codes": {f.stem: input_identity(f) for f in sorted(files)},
        },
    )
    if is_current(out, prov):
        log.info("%s is current; not recomputed", out)
        return read_ranking(out)
    t_ids, n_ids, tumor, normal = pool_paper(files, train, labels)
    if num_features is not None and tumor.shape[1] != int(num_features):
        raise InputFileError(feature_dir, f"codes have {tumor.shape[1]} units, --num_features is {num_features}", "pass the SAE's dictionary size")
    df = paper_t_test(tumor, normal)
    check_output(out, prov, overwrite=overwrite)
    write_ranking(out, df, prov)
    return df


def read_paper_csv_floats(path: str | os.PathLike) -> pd.DataFrame:
    """A paper-format ranking CSV with its float columns as float32."""
    df = read_ranking(path)
    return df.astype({c: np.float32 for c in PAPER_COLUMNS[1:] if c in df.columns})
