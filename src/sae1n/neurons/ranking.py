"""Weakly supervised neuron ranking: pool each SAE neuron per slide, then
test tumour vs normal slides (Welch's t-test, as the paper) or correlate with
a grade (Spearman), all neurons at once.

Neurons that never vary get t = 0 and p = 1 (scipy gives NaN), so they sort
last instead of poisoning the order. The statistics live in
:mod:`sae1n.neurons.column_stats`, the ranking CSV (names, reader, writer,
:func:`select_units`) in :mod:`sae1n.neurons.ranking_csv`, and
``compat="paper"`` (:func:`analyze_sae_paper`, the paper's float32 ranking) in
:mod:`sae1n.neurons.ranking_paper`; their names stay importable from here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse

from sae1n.errors import ConfigError, InputFileError, Sae1nError
from sae1n.io import FeatureBag, atomic_write_csv, atomic_write_json
from sae1n.io.provenance import Provenance, check_output, input_identity, is_current, write_sidecar
from sae1n.neurons.column_stats import bh_q_values, column_auroc, spearman_columns, welch_t_test
from sae1n.neurons.inputs import (
    binarize_labels,
    code_files,
    missing_list,
    numeric_labels,
    read_codes,
    read_slide_labels,
    read_split_slides,
)
from sae1n.neurons.pooling import check_pooling, pool_activations
from sae1n.neurons.ranking_csv import (
    COMPAT,
    PAPER_COLUMNS,
    RANK_CORRELATION_CSV,
    RANKING_KIND,
    RANKING_SCHEMA,
    SUMMARY_JSON,
    T_TEST_CSV,
    ranking_csv_path,
    read_ranking,
    select_units,
    write_ranking,
)
from sae1n.neurons.ranking_paper import (
    analyze_sae_paper,
    paper_code_files,
    paper_t_test,
    pool_paper,
    read_paper_csv_floats,
)
from sae1n.utils import progress

# the ranking's public names, including those of the modules it is split into
__all__ = [
    "COMPAT", "PAPER_COLUMNS", "RANK_CORRELATION_CSV", "RANKING_KIND", "RANKING_SCHEMA",
    "SUMMARY_JSON", "T_TEST_CSV", "analyze_sae", "analyze_sae_paper", "bh_q_values", "column_auroc",
    "paper_code_files", "paper_t_test", "pool_paper", "pool_slides", "rank_by_grade",
    "rank_by_t_test", "rank_neurons", "ranking_csv_path", "read_paper_csv_floats", "read_ranking",
    "select_units", "spearman_columns", "welch_t_test", "write_ranking",
]

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- pooling many slides


def pool_slides(
    codes,
    slides: list[str] | None = None,
    *,
    pooling: str = "max",
    topk: int = 10,
    quantile: float = 0.9,
    file_type: str | None = None,
    num_features: int | None = None,
    allow_missing: bool = False,
) -> tuple[list[str], np.ndarray]:
    """Pool every slide's codes: returns (slide ids, (S, D) float64 matrix).

    ``codes`` is a folder of SAE code files (sparse, h5 or pt) or a mapping
    slide id -> dense array, scipy sparse matrix, :class:`FeatureBag` or file path.
    ``slides`` picks and orders the slides (default: all, sorted).
    """
    check_pooling(pooling, topk, quantile)
    source = None
    if isinstance(codes, str | os.PathLike):
        source = Path(codes)
        codes = code_files(source, file_type)
    if not isinstance(codes, Mapping):
        raise TypeError("codes must be a folder or a mapping slide_id -> codes")
    wanted = sorted(codes) if slides is None else list(slides)
    missing = [s for s in wanted if s not in codes]
    if missing:
        if not allow_missing:
            raise InputFileError(
                source or "codes",
                f"no SAE codes for {len(missing)} slide(s): {missing_list(missing)}",
                "run `sae1n save-sae-features` for them, point --feature_dir to the right folder, or pass --allow_missing to skip them",
            )
        log.warning(
            "skipping %d slide(s) without SAE codes: %s", len(missing), missing_list(missing)
        )
        wanted = [s for s in wanted if s in codes]
    pooled = np.empty((len(wanted), num_features or 0), dtype=np.float64) if num_features else None
    dim = num_features
    rows = []
    for i, sid in enumerate(progress(wanted, desc=f"pooling ({pooling})", total=len(wanted))):
        mat, where = _load(codes[sid], dim)
        if mat.shape[0] == 0:
            raise InputFileError(
                where,
                "has no patches (0 rows)",
                "drop this slide from the split, or re-run feature extraction",
            )
        if dim is None:
            dim = int(mat.shape[1])
        elif mat.shape[1] != dim:
            hint = (
                "--num_features must equal the SAE dictionary size"
                if num_features
                else "use codes from one SAE only"
            )
            raise InputFileError(where, f"has {mat.shape[1]} neurons, expected {dim}", hint)
        vec = pool_activations(mat, pooling, topk=topk, quantile=quantile)
        if pooled is not None:
            pooled[i] = vec
        else:
            rows.append(vec)
    if pooled is None:
        pooled = np.stack(rows) if rows else np.empty((0, dim or 0))
    return wanted, pooled


def _load(item, dim):
    if isinstance(item, str | os.PathLike):
        mat, _, _ = read_codes(item)
        return mat, Path(item)
    if isinstance(item, FeatureBag):
        return (item.sparse if item.sparse is not None else item.features), item.path
    if sparse.issparse(item):
        return sparse.csr_matrix(item), "codes"
    arr = item.detach().cpu().numpy() if hasattr(item, "detach") else np.asarray(item)
    if arr.ndim != 2:
        raise Sae1nError(f"codes must be 2-D (patches, neurons), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise Sae1nError("codes contain NaN/Inf values")
    return arr, "codes"


# ----------------------------------------------------------------------------- ranking


def rank_neurons(
    codes,
    labels,
    pooling: str = "max",
    *,
    multiclass: bool = False,
    topk: int = 10,
    quantile: float = 0.9,
    file_type: str | None = None,
    num_features: int | None = None,
    allow_missing: bool = False,
    label_source: str | os.PathLike = "labels",
) -> pd.DataFrame:
    """Rank SAE neurons by slide labels.

    ``codes``: a folder of SAE codes or a mapping slide id -> codes (see
    :func:`pool_slides`). ``labels``: mapping (or Series) slide id -> label for
    the slides to use: ``tumor``/``normal`` (or 1/0) for the Welch t-test, or
    numeric grades with ``multiclass=True`` for Spearman's rank correlation.
    Returns the ranking, rank 1 first.
    """
    labels = dict(labels.items()) if hasattr(labels, "items") else dict(labels)
    if not labels:
        raise Sae1nError("no labelled slides to rank neurons with")
    slides, pooled = pool_slides(
        codes,
        list(labels),
        pooling=pooling,
        topk=topk,
        quantile=quantile,
        file_type=file_type,
        num_features=num_features,
        allow_missing=allow_missing,
    )
    labels = {s: labels[s] for s in slides}
    if multiclass:
        grades = numeric_labels(labels, label_source)
        return rank_by_grade(
            pooled, [grades[s] for s in slides], pooling=pooling, source=label_source
        )
    binary = binarize_labels(labels, label_source)
    return rank_by_t_test(pooled, [binary[s] for s in slides], pooling=pooling, source=label_source)


def rank_by_t_test(
    pooled: np.ndarray, labels, *, pooling: str = "max", source="labels"
) -> pd.DataFrame:
    """Welch t-test ranking of pooled activations (S, D) with tumour/normal labels (S,)."""
    y = np.array(list(binarize_labels(dict(enumerate(labels)), source).values()), dtype=bool)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 < 2 or n0 < 2:
        raise Sae1nError(
            f"the t-test needs at least 2 tumour and 2 normal slides, got {n1} tumour and {n0} normal; "
            "check the split's train column and the dataset CSV labels"
        )
    t, p = welch_t_test(pooled[y], pooled[~y])
    df = pd.DataFrame(
        {
            "unit_id": np.arange(pooled.shape[1], dtype=np.int64),
            "t_statistic": t,
            "p_value": p,
            "tumor_mean_activation": pooled[y].mean(axis=0),
            "normal_mean_activation": pooled[~y].mean(axis=0),
            "q_value": bh_q_values(p),
            "slide_auroc": column_auroc(pooled, y),
            "direction": np.where(t > 0, "tumor", np.where(t < 0, "normal", "none")),
            "pooling": pooling,
            "tumor_std_activation": pooled[y].std(axis=0, ddof=1),
            "normal_std_activation": pooled[~y].std(axis=0, ddof=1),
        }
    )
    order = np.lexsort(
        (df["unit_id"].to_numpy(), -df["t_statistic"].to_numpy(), df["p_value"].to_numpy())
    )
    return _finish(df, order)


def rank_by_grade(
    pooled: np.ndarray, grades, *, pooling: str = "max", source="labels"
) -> pd.DataFrame:
    """Spearman ranking of pooled activations (S, D) against numeric grades (S,):
    sorted by p ascending then rho descending."""
    g = np.array(list(numeric_labels(dict(enumerate(grades)), source).values()))
    if g.size < 3 or np.unique(g).size < 2:
        raise Sae1nError(
            f"rank correlation needs at least 3 slides and 2 distinct grades, got {g.size} slides and grades {sorted(set(g.tolist()))}"
        )
    rho, p = spearman_columns(pooled, g)
    cols = {
        "unit_id": np.arange(pooled.shape[1], dtype=np.int64),
        "spearman_rho": rho,
        "p_value": p,
        "q_value": bh_q_values(p),
        "direction": np.where(rho > 0, "higher_grade", np.where(rho < 0, "lower_grade", "none")),
        "pooling": pooling,
    }
    positive = g > g.min()
    cols["slide_auroc"] = column_auroc(pooled, positive)
    for grade in np.unique(g):
        name = f"{grade:g}"
        cols[f"mean_activation_grade_{name}"] = pooled[g == grade].mean(axis=0)
    df = pd.DataFrame(cols)
    order = np.lexsort(
        (df["unit_id"].to_numpy(), -df["spearman_rho"].to_numpy(), df["p_value"].to_numpy())
    )
    return _finish(df, order)


def _finish(df: pd.DataFrame, order: np.ndarray) -> pd.DataFrame:
    df = df.iloc[order].reset_index(drop=True)
    df["rank"] = np.arange(1, len(df) + 1)
    return df


# ----------------------------------------------------------------------------- the stage


def analyze_sae(
    exp_id: str,
    split_csv_path: str | os.PathLike,
    feature_dir: str | os.PathLike,
    dataset_csv: str | os.PathLike,
    output_dir: str | os.PathLike,
    num_features: int | None = None,
    pooling: str = "max",
    multiclass: bool = False,
    *,
    topk: int = 10,
    quantile: float = 0.9,
    split_column: str = "train",
    label_column: str = "label",
    grade_column: str = "isup_grade",
    file_type: str | None = None,
    allow_missing: bool = False,
    compat: str = "default",
    overwrite: bool = False,
) -> pd.DataFrame:
    """Rank the SAE neurons of ``exp_id`` on the split's train slides.

    ``compat="paper"``: :func:`analyze_sae_paper` (the paper's float32 ranking).
    The primary CSV carries a provenance sidecar: a current one is read back
    instead of recomputed; one made otherwise raises ``StaleOutputError``
    unless ``overwrite``.

    Writes ``<output_dir>/<exp_id>/analysis/sae_analysis_t_test.csv`` (Welch
    t-test, tumour vs normal) and, with ``multiclass``, also
    ``sae_analysis_rank_correlation.csv`` (Spearman with ``grade_column``),
    plus ``sae_analysis_summary.json``. Returns the primary ranking (the
    rank-correlation one with ``multiclass``).
    """
    if compat not in COMPAT:
        raise ConfigError(f"--compat must be one of {', '.join(COMPAT)}, got {compat!r}")
    if compat == "paper":
        if multiclass or pooling != "max":
            raise ConfigError("--compat paper ranks tumour vs normal with max pooling; drop --multiclass / --pooling")
        return analyze_sae_paper(
            exp_id, split_csv_path, feature_dir, dataset_csv, output_dir, num_features, overwrite=overwrite
        )
    check_pooling(pooling, topk, quantile)
    prov = Provenance.make(
        RANKING_KIND,
        RANKING_SCHEMA,
        settings={
            "compat": "default",
            "pooling": pooling,
            "topk": topk if pooling == "topk_mean" else None,
            "quantile": quantile if pooling == "quantile" else None,
            "multiclass": bool(multiclass),
            "split_column": split_column,
            "label_column": label_column,
            "grade_column": grade_column if multiclass else None,
            "num_features": num_features,
            "file_type": file_type,
            "allow_missing": bool(allow_missing),
        },
        inputs={
            "split": Path(split_csv_path),
            "dataset_csv": Path(dataset_csv),
            "codes": {
                sid: input_identity(f, hash_limit=0)
                for sid, f in sorted(_code_files_or_empty(feature_dir, file_type).items())
            },
        },
    )
    primary_path = ranking_csv_path(output_dir, exp_id, multiclass)
    if is_current(primary_path, prov):
        log.info("%s is current; not recomputed", primary_path)
        return read_ranking(primary_path)
    train = read_split_slides(split_csv_path, split_column)
    if not train:
        raise InputFileError(
            split_csv_path,
            f"the {split_column!r} column is empty",
            "pass the split CSV of the fold to analyse",
        )
    lookup = read_slide_labels(dataset_csv, grade_column if multiclass else label_column)
    unknown = [s for s in train if s not in lookup]
    if unknown:
        if not allow_missing:
            raise InputFileError(
                dataset_csv,
                f"has no row for {len(unknown)} train slide(s): {missing_list(unknown)}",
                "use the metadata CSV the splits were made from, or pass --allow_missing to skip them",
            )
        log.warning("skipping %d train slide(s) missing from %s", len(unknown), dataset_csv)
        train = [s for s in train if s in lookup]
    slides, pooled = pool_slides(
        feature_dir,
        train,
        pooling=pooling,
        topk=topk,
        quantile=quantile,
        file_type=file_type,
        num_features=num_features,
        allow_missing=allow_missing,
    )
    out_dir = Path(output_dir) / exp_id / "analysis"
    # inputs are valid: refuse (before writing anything) to replace a ranking made otherwise
    check_output(primary_path, prov, overwrite=overwrite)
    summary = {
        "exp_id": exp_id,
        "split_csv_path": str(split_csv_path),
        "split_column": split_column,
        "feature_dir": str(feature_dir),
        "dataset_csv": str(dataset_csv),
        "pooling": pooling,
        "topk": topk if pooling == "topk_mean" else None,
        "quantile": quantile if pooling == "quantile" else None,
        "num_features": int(pooled.shape[1]),
        "n_slides": len(slides),
        "multiclass": bool(multiclass),
    }
    if multiclass:
        grades = numeric_labels({s: lookup[s] for s in slides}, dataset_csv)
        primary = rank_by_grade(
            pooled, [grades[s] for s in slides], pooling=pooling, source=dataset_csv
        )
        atomic_write_csv(out_dir / RANK_CORRELATION_CSV, primary)
        write_sidecar(out_dir / RANK_CORRELATION_CSV, prov)
        summary.update(
            grade_column=grade_column,
            grade_counts=_counts(grades.values()),
            primary_csv=RANK_CORRELATION_CSV,
        )
        binary = _binary_for_graded(dataset_csv, label_column, slides, grades)
        y = np.array([binary[s] for s in slides])
        if min(y.sum(), (1 - y).sum()) >= 2:  # the paper's tumour-vs-normal CSV too
            atomic_write_csv(
                out_dir / T_TEST_CSV, rank_by_t_test(pooled, y, pooling=pooling, source=dataset_csv)
            )
            summary.update(n_tumor=int(y.sum()), n_normal=int((1 - y).sum()))
    else:
        binary = binarize_labels({s: lookup[s] for s in slides}, dataset_csv)
        y = [binary[s] for s in slides]
        primary = rank_by_t_test(pooled, y, pooling=pooling, source=dataset_csv)
        atomic_write_csv(out_dir / T_TEST_CSV, primary)
        write_sidecar(out_dir / T_TEST_CSV, prov)
        summary.update(n_tumor=int(sum(y)), n_normal=int(len(y) - sum(y)), primary_csv=T_TEST_CSV)
    top = primary.iloc[0]
    summary["top_unit"] = int(top["unit_id"])
    summary["top_p_value"] = float(top["p_value"])
    atomic_write_json(out_dir / SUMMARY_JSON, summary)
    write_sidecar(out_dir / SUMMARY_JSON, prov)
    return primary


def _code_files_or_empty(feature_dir, file_type) -> dict[str, Path]:
    try:
        return code_files(feature_dir, file_type)
    except InputFileError:
        return {}  # reported with its fix when the codes are read


def _binary_for_graded(
    dataset_csv, label_column: str, slides: list[str], grades: dict[str, float]
) -> dict[str, int]:
    # tumour/normal from the label column when it has them, else grade above the lowest
    try:
        labels = read_slide_labels(dataset_csv, label_column)
        return binarize_labels({s: labels[s] for s in slides}, dataset_csv)
    except (InputFileError, KeyError):
        low = min(grades.values())
        return {s: int(grades[s] > low) for s in slides}


def _counts(values) -> dict[str, int]:
    vals, counts = np.unique(np.asarray(list(values)), return_counts=True)
    return {f"{v:g}": int(c) for v, c in zip(vals, counts)}

