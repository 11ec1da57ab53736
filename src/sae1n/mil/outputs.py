"""What ``train-mil`` writes: per-patch scores, a fold's predictions / splits /
metrics record, and the summary of all folds (sae1n's or the paper's format).
Every file is written atomically; the records carry provenance."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from sae1n.io import atomic_path, atomic_write_csv, atomic_write_json, atomic_write_text
from sae1n.io.provenance import Provenance, read_provenance, write_h5_provenance, write_sidecar

SUMMARY_COLUMNS = ["folds", "test_auc", "val_auc", "test_acc", "val_acc"]
MIL_KIND = "mil-fold"
MIL_SCHEMA = 1


def write_patch_scores(
    path: Path, coords, scores: np.ndarray, prov: Provenance | None, attrs: Mapping
) -> None:
    """``<slide>.h5``: coords (N, 2) int64, scores (N,) float32, the fold's
    provenance and ``attrs`` (model_type, score_kind, score_class, fold, exp)."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("coords", data=np.asarray(coords, dtype=np.int64))
        f.create_dataset("scores", data=scores.astype(np.float32))
        if prov is not None:
            write_h5_provenance(f, prov)
        f.attrs.update(dict(attrs))


def write_predictions(path: Path, preds: pd.DataFrame, prov: Provenance) -> None:
    """``predictions_{val,test}.csv`` (slide_id, label, pred, prob_<c>) + sidecar."""
    atomic_write_csv(path, preds)
    write_sidecar(path, prov)


def write_fold_record(
    fold_dir: Path,
    results_dir: Path,
    fold: int,
    sets: Mapping[str, list[str]],
    record: Mapping,
    prov: Provenance,
    paper: bool,
) -> None:
    """``splits.csv`` (and the paper's ``splits_<k>.csv``), then ``metrics.json``
    with its provenance, written last: it marks the fold done."""
    atomic_write_csv(
        fold_dir / "splits.csv",
        pd.DataFrame({k: pd.Series(v, dtype=object) for k, v in sets.items()}),
    )
    if paper:  # the paper's save_splits layout
        atomic_write_csv(
            results_dir / f"splits_{fold}.csv",
            pd.DataFrame({k: pd.Series(sets[k], dtype=object) for k in ("train", "val", "test")}),
        )
    atomic_write_json(fold_dir / "metrics.json", jsonable(dict(record)))
    write_sidecar(fold_dir / "metrics.json", prov)


def summary_provenance(results_dir: Path, folds: Sequence[int], compat: str) -> Provenance:
    """The summary's record: the fingerprint of every fold's record."""
    recs = {}
    for fold in folds:
        rec = read_provenance(results_dir / f"fold_{fold}" / "metrics.json")
        recs[str(fold)] = rec.fingerprint() if rec is not None else None
    return Provenance.make("mil-summary", MIL_SCHEMA, settings={"compat": compat}, inputs={"folds": recs})


def write_summary(
    results_dir: Path,
    rows: list[dict],
    folds: list[int],
    k: int,
    info: Mapping,
    config_yaml: str,
    compat: str = "default",
) -> pd.DataFrame:
    """sae1n's ``summary.csv`` (folds, then mean and std rows; extra metrics
    after the paper's columns), ``summary.json`` (``info`` + the table) and
    ``config.yaml``; a subset of folds also as ``summary_partial_<a>_<b>.csv``."""
    df = pd.DataFrame(rows)
    extra = [
        f"{split}_{m}"
        for m in ("bacc", "f1", "qwk")
        for split in ("test", "val")
        if f"{split}_{m}" in df.columns
    ]
    extra += [c for c in df.columns if c not in SUMMARY_COLUMNS and c not in extra]
    df = df[[*SUMMARY_COLUMNS, *extra]]
    stats = df.drop(columns="folds").apply(pd.to_numeric, errors="coerce")
    final = pd.concat(
        [df, pd.DataFrame([{"folds": "mean", **stats.mean()}, {"folds": "std", **stats.std()}])],
        ignore_index=True,
    )
    results_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(results_dir / "summary.csv", final)
    write_sidecar(results_dir / "summary.csv", summary_provenance(results_dir, folds, compat))
    if len(folds) != k:  # the paper's name for a subset of folds
        atomic_write_csv(results_dir / f"summary_partial_{folds[0]}_{folds[-1] + 1}.csv", final)
    summary = {
        **info,
        "folds": df.to_dict(orient="records"),
        "mean": stats.mean().to_dict(),
        "std": stats.std().to_dict(),
    }
    atomic_write_json(results_dir / "summary.json", jsonable(summary))
    atomic_write_text(results_dir / "config.yaml", config_yaml)
    return final


def paper_summary_frame(rows: list[dict]) -> pd.DataFrame:
    """The paper's summary table: one row per fold (test/val AUC, acc = 1 - error),
    then ``mean`` and ``std`` rows concatenated with their own index (0, 1)."""
    df = pd.DataFrame({c: [r.get(c) for r in rows] for c in SUMMARY_COLUMNS})
    stats = df.drop(columns="folds").astype(float)
    extra = pd.DataFrame([{"folds": "mean", **stats.mean()}, {"folds": "std", **stats.std()}])
    return pd.concat([df, extra])


def summary_name(folds: list[int], k: int) -> str:
    """``summary.csv``, or the paper's ``summary_partial_<a>_<b>.csv`` for a subset."""
    return "summary.csv" if len(folds) == k else f"summary_partial_{folds[0]}_{folds[-1] + 1}.csv"


def write_paper_summary(
    results_dir: Path, rows: list[dict], folds: list[int], k: int, config_yaml: str
) -> pd.DataFrame:
    """The paper's summary CSV (index column, mean / std rows) and ``config.yaml``."""
    final = paper_summary_frame(rows)
    results_dir.mkdir(parents=True, exist_ok=True)
    name = summary_name(folds, k)
    atomic_write_csv(results_dir / name, final, index=True)
    write_sidecar(results_dir / name, summary_provenance(results_dir, folds, "paper"))
    atomic_write_text(results_dir / "config.yaml", config_yaml)
    return final


def read_json(path: Path):
    """A JSON file's content, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def jsonable(obj):
    """NaN/inf -> None and numpy scalars -> Python, for strict JSON."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
