"""Weakly supervised neuron ranking: pool each SAE neuron per slide, then
test tumour vs normal slides (Welch's t-test, as the paper) or correlate with
a grade (Spearman), all neurons at once.

The paper's CSV columns come first (``unit_id, t_statistic, p_value,
tumor_mean_activation, normal_mean_activation``), sorted by p ascending then
t descending; rank 1 is the first row. Neurons that never vary get t = 0 and
p = 1 (scipy gives NaN), so they sort last instead of poisoning the order.

``compat="paper"`` (:func:`analyze_sae_paper`) computes what the paper's
``analyze_sae.py`` does: float32 max-pooling and a float32 per-unit
``scipy.stats.ttest_ind`` (p-values below ~1e-39 underflow to 0, and such
ties are broken by t descending, the sign of t ignored), the files in
``Path.glob`` order (unsorted), NaN t/p for constant units, sorted last.
:func:`select_units` reads a ranking CSV for the MIL stage, in paper mode with
the paper's unstable re-sort by p alone.

This module owns the ranking CSV: :func:`write_ranking` / :func:`read_ranking`.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse, stats

from sae1n.errors import ConfigError, InputFileError, Sae1nError
from sae1n.io import FeatureBag, atomic_write_csv, atomic_write_json
from sae1n.io.provenance import Provenance, check_output, input_identity, is_current, write_sidecar
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
from sae1n.utils import progress

log = logging.getLogger(__name__)

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


# ----------------------------------------------------------------------------- statistics


def welch_t_test(tumor: np.ndarray, normal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Welch's t-test (scipy, ``equal_var=False``) of every column at once.

    ``tumor`` (n1, D) and ``normal`` (n0, D) hold pooled activations. Columns
    constant across both groups get t = 0, p = 1 instead of NaN.
    """
    tumor = np.asarray(tumor, dtype=np.float64)
    normal = np.asarray(normal, dtype=np.float64)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ttest_ind(tumor, normal, axis=0, equal_var=False)
    t = np.atleast_1d(np.asarray(res.statistic, dtype=np.float64)).copy()
    p = np.atleast_1d(np.asarray(res.pvalue, dtype=np.float64)).copy()
    undefined = np.isnan(t) | np.isnan(p)
    t[undefined] = 0.0
    p[undefined] = 1.0
    return t, p


def column_auroc(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """ROC AUC of every column of ``scores`` (n, D) for the binary ``positive`` (n,),
    via the rank-sum identity (ties count one half, as scikit-learn)."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n1 = int(positive.sum())
    n0 = positive.size - n1
    if n1 == 0 or n0 == 0:
        return np.full(scores.shape[1], np.nan)
    ranks = stats.rankdata(scores, axis=0)
    return (ranks[positive].sum(axis=0) - n1 * (n1 + 1) / 2.0) / (n1 * n0)


def spearman_columns(scores: np.ndarray, grade: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Spearman's rho of every column of ``scores`` (n, D) with ``grade`` (n,) and the
    two-sided p-value (t-distribution with n-2 df, as scipy). Constant columns: rho 0, p 1."""
    scores = np.asarray(scores, dtype=np.float64)
    n = scores.shape[0]
    rx = stats.rankdata(scores, axis=0)
    ry = stats.rankdata(np.asarray(grade, dtype=np.float64))
    rx -= rx.mean(axis=0)
    ry -= ry.mean()
    with np.errstate(all="ignore"):
        rho = (rx * ry[:, None]).sum(axis=0) / np.sqrt((rx**2).sum(axis=0) * (ry**2).sum())
        rho = np.clip(rho, -1.0, 1.0)
        dof = n - 2
        tval = rho * np.sqrt(dof / ((1.0 + rho) * (1.0 - rho)))
        p = 2.0 * stats.t.sf(np.abs(tval), dof)
    const = ~np.isfinite(rho)
    rho[const] = 0.0
    p[const] = 1.0
    p[np.isnan(p)] = 1.0
    return rho, p


def bh_q_values(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values)."""
    p = np.asarray(p, dtype=np.float64)
    if p.size == 0:
        return p
    return stats.false_discovery_control(p, method="bh")


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


# ----------------------------------------------------------------------------- the paper's ranking


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
