"""Patch-level evaluation of selected SAE neurons against patch labels.

For the chosen neuron (rank 1 by default), each of the top-N neurons and,
when its per-patch scores exist, an ABMIL attention baseline: patch AUROC and
average precision on the test slides, the best-F1 threshold chosen on the
validation slides and applied to the test slides, and the slide AUROC of the
pooled score. Patches are matched to their labels by level-0 coords.

The metrics live in :mod:`sae1n.neurons.metrics`, the per-split score
collection in :mod:`sae1n.neurons.patch_scores` and the feature baselines'
training inputs in :mod:`sae1n.neurons.baseline_inputs`.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from sae1n.errors import ConfigError, InputFileError, Sae1nError
from sae1n.io import Provenance, atomic_write_csv, feature_paths, write_sidecar
from sae1n.neurons.baseline_inputs import fit_feature_baselines
from sae1n.neurons.baselines import FEATURE_BASELINES
from sae1n.neurons.inputs import (
    binarize_labels,
    code_files,
    read_codes,
    read_slide_labels,
    read_split_slides,
)
from sae1n.neurons.metrics import best_f1_threshold, patch_metrics, slide_auroc
from sae1n.neurons.patch_evaluation import (
    METRICS_CSV,
    METRICS_JSON,
    PR_PNG,
    ROC_PNG,
    PatchEvaluation,
    write_patch_evaluation,
)
from sae1n.neurons.patch_scores import (
    DEFAULT_THRESHOLD,
    SplitScores,
    collect_split_scores,
    fold_of_split,
    mil_method_name,
)
from sae1n.neurons.pooling import check_pooling
from sae1n.neurons.ranking_csv import ranking_csv_path, read_ranking

__all__ = [  # evaluate_patches and the names it was split from, importable from here
    "DEFAULT_THRESHOLD", "METRICS_CSV", "METRICS_JSON", "PR_PNG", "ROC_PNG", "PatchEvaluation", "SplitScores",
    "best_f1_threshold", "evaluate_patches", "mil_method_name", "patch_metrics", "slide_auroc",
]

log = logging.getLogger(__name__)



# ----------------------------------------------------------------------------- the stage


def evaluate_patches(
    exp_id: str,
    split_csv_path: str | os.PathLike,
    feature_dir: str | os.PathLike,
    patch_label_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    unit: int | None = None,
    ranking_csv: str | os.PathLike | None = None,
    top_n: int = 10,
    threshold: float | None = None,
    dataset_csv: str | os.PathLike | None = None,
    label_column: str = "label",
    mil_dir=None,
    fold: int | None = None,
    pooling: str = "max",
    topk: int = 10,
    quantile: float = 0.9,
    file_type: str | None = None,
    allow_missing: bool = False,
    plots: bool = True,
    input_feature_dir: str | os.PathLike | None = None,
    baselines: Sequence[str] | None = None,
    sae_checkpoint: str | os.PathLike | None = None,
    baseline_seed: int = 0,
    n_components: int = 32,
) -> PatchEvaluation:
    """Evaluate the chosen neuron (default: rank 1) and the top-N neurons on the
    split's test slides, with thresholds chosen on its val slides.

    Writes ``<output_dir>/<exp_id>/evaluation/patch_metrics.csv`` (one row per
    method; columns ``method``, ``oracle``, ...) and ``.json``; returns the
    :class:`~sae1n.neurons.patch_evaluation.PatchEvaluation`, whose ``curves``
    (legend name -> (labels, scores) of every method) :func:`sae1n.viz.evaluation.plot_patch_evaluation` draws as the ROC
    and PR figures (``plots=False``: the JSON lists no figures). A neuron whose
    ranking direction is ``normal`` (fires on normal tissue) is scored by its
    negated activation (its threshold is on that negated scale).

    Baselines, all scored on the same patches with the same metrics:
    ``mil_dir`` (one ``<results_dir_base>/mil/<exp>`` folder or a list) adds
    each MIL run's per-patch scores from ``fold_<k>/patch_scores/<slide>.h5``
    (``abmil_attention``, ``maxmil_scores``); ``input_feature_dir`` (the
    features the SAE was trained on) adds the feature baselines of
    :mod:`sae1n.neurons.baselines` (``raw_dim``, ``pca``, ``random_sae``,
    ``linear_probe``; pick with ``baselines``), chosen on the train slides
    exactly as the neuron is, except the ``linear_probe`` oracle.
    """
    check_pooling(pooling, topk, quantile)
    if top_n < 0:
        raise ConfigError(f"--top_n must be >= 0, got {top_n}")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"--threshold is a tumour fraction in [0, 1], got {threshold}")
    label_dir = Path(patch_label_dir)
    if not label_dir.is_dir():
        raise InputFileError(
            label_dir,
            "patch-label folder not found",
            "run `sae1n patch-labels` first and pass its --out_dir",
        )
    ranking_path = Path(ranking_csv) if ranking_csv else ranking_csv_path(output_dir, exp_id)
    ranking = None
    if unit is None or ranking_csv is not None or ranking_path.is_file():
        ranking = read_ranking(ranking_path)
    files = code_files(feature_dir, file_type)
    dim = _dim_of(next(iter(files.values())))
    ranked_units = (
        [] if ranking is None else [int(u) for u in ranking["unit_id"].head(max(top_n, 1))]
    )
    chosen = int(unit) if unit is not None else ranked_units[0]
    if not 0 <= chosen < dim:
        raise ConfigError(f"--unit {chosen} is outside the SAE's {dim} neurons")
    units = [chosen] + [u for u in ranked_units[:top_n] if u != chosen]
    rank_of, signs, direction = {}, {}, {}
    for u in units:
        rank_of[u], direction[u] = _rank_and_direction(ranking, u)
        signs[u] = -1.0 if direction[u] == "normal" else 1.0

    slide_labels = None
    if dataset_csv is not None:
        raw = read_slide_labels(dataset_csv, label_column)
        slide_labels = binarize_labels(
            {s: v for s, v in raw.items() if v.strip().lower() not in ("", "nan")}, dataset_csv
        )
    test = read_split_slides(split_csv_path, "test")
    val = read_split_slides(split_csv_path, "val")
    if not test:
        raise InputFileError(
            split_csv_path, "the test column is empty", "pass a split with test slides"
        )
    k = fold_of_split(split_csv_path) if fold is None else int(fold)
    mil_dirs: dict[str, Path] = {}
    for d in [] if mil_dir is None else ([mil_dir] if isinstance(mil_dir, str | os.PathLike) else list(mil_dir)):
        cand = Path(d) / f"fold_{k}" / "patch_scores"
        if cand.is_dir():
            mil_dirs[mil_method_name(d)] = cand
        else:
            log.warning("no MIL patch scores at %s; baseline skipped", cand)
    raw_files, fitted, baseline_info = None, [], {}
    if input_feature_dir is not None:
        raw_files = feature_paths(input_feature_dir)
        fitted = fit_feature_baselines(
            split_csv_path, raw_files, files, feature_dir, label_dir, threshold, slide_labels,
            methods=FEATURE_BASELINES if baselines is None else tuple(baselines),
            sae_checkpoint=sae_checkpoint, seed=baseline_seed, n_components=n_components,
            pooling=pooling, topk=topk, quantile=quantile, allow_missing=allow_missing,
        )
        baseline_info = {b.method: _clean(b.detail) for b in fitted}
    elif baselines:
        raise ConfigError("the feature baselines need --input_feature_dir (the features the SAE was trained on)")
    common = dict(
        files=files,
        units=units,
        signs=signs,
        label_dir=label_dir,
        threshold=threshold,
        slide_labels=slide_labels,
        mil_dirs=mil_dirs,
        pooling=pooling,
        topk=topk,
        quantile=quantile,
        allow_missing=allow_missing,
        raw_files=raw_files,
        baselines=fitted,
    )
    test_scores = collect_split_scores("test", test, **common)
    val_scores = collect_split_scores("val", val, **common) if val else SplitScores()
    if not test_scores.slide_ids:
        raise Sae1nError("no test slide could be evaluated (no codes or patch labels)")

    rows = []
    curves = {}
    extra = list(mil_dirs) + [b.method for b in fitted]
    oracle = {b.method: b.oracle for b in fitted}
    methods = [f"unit_{u}" for u in units] + extra
    for m in methods:
        row = _evaluate_method(m, test_scores, val_scores)
        if m in extra:
            row.update(method=m, unit_id=None, rank=None, direction=None)
            det = baseline_info.get(m, {})
            row["detail"] = ";".join(f"{a}={v:.4g}" if isinstance(v, float) else f"{a}={v}" for a, v in det.items())
        else:
            u = int(m.split("_")[1])
            row.update(method="sae_neuron", unit_id=u, rank=rank_of[u], direction=direction[u], detail="")
        row["chosen"] = m == f"unit_{chosen}"
        row["oracle"] = bool(oracle.get(m, False))
        rows.append(row)
        if m == f"unit_{chosen}" or m in extra:
            curves[m] = _curve_data(test_scores, m)
    cols = [
        "method",
        "oracle",
        "unit_id",
        "rank",
        "direction",
        "chosen",
        "patch_auroc",
        "patch_ap",
        "threshold",
        "precision",
        "recall",
        "f1",
        "val_f1",
        "slide_auroc",
        "n_patches",
        "n_positive",
        "n_slides",
        "n_val_patches",
        "n_val_positive",
        "detail",
    ]
    table = pd.DataFrame(rows)[cols]
    eval_dir = Path(output_dir) / exp_id / "evaluation"
    atomic_write_csv(eval_dir / METRICS_CSV, table)
    files = {"csv": METRICS_CSV}
    if plots:  # drawn by sae1n.viz.evaluation.plot_patch_evaluation (neurons do not draw)
        files.update(roc=ROC_PNG, pr=PR_PNG)
    settings = {
        "split_csv_path": str(split_csv_path),
        "feature_dir": str(feature_dir),
        "patch_label_dir": str(label_dir),
        "ranking_csv": str(ranking_path) if ranking is not None else None,
        "threshold": threshold,
        "pooling": pooling,
        "fold": k,
        "mil_patch_scores": {m: str(d) for m, d in mil_dirs.items()},
        "input_feature_dir": None if input_feature_dir is None else str(input_feature_dir),
        "baseline_seed": baseline_seed,
        "n_components": n_components,
        "n_test_slides": len(test_scores.slide_ids),
        "n_val_slides": len(val_scores.slide_ids),
        "n_unmatched_test_patches": int(test_scores.n_unmatched),
    }
    result = PatchEvaluation(
        exp_id=exp_id,
        chosen_unit=chosen,
        chosen=_clean(next(r for r in rows if r["chosen"])),
        top_n=[_clean(r) for r in rows if r["method"] == "sae_neuron"],
        baseline=next((_clean(r) for r in rows if r["method"] == "abmil_attention"), None),
        baselines=[_clean(r) for r in rows if r["method"] in extra],
        settings=settings,
        files=files,
        eval_dir=eval_dir,
        # curve data for the figures: legend name -> (labels, scores)
        curves={_label_for(m, rank_of, direction, oracle): c for m, c in curves.items()},
    )
    write_patch_evaluation(result)
    prov = Provenance.make(
        "patch_metrics",
        1,
        settings={k2: v for k2, v in settings.items() if not k2.startswith("n_")} | {"chosen_unit": chosen, "top_n": top_n, "baselines": [b.method for b in fitted]},
        inputs={"split_csv": Path(split_csv_path), "ranking_csv": ranking_path if ranking is not None else None},
    )
    for name in (METRICS_CSV, METRICS_JSON):
        write_sidecar(eval_dir / name, prov)
    return result


def _rank_and_direction(ranking: pd.DataFrame | None, unit: int) -> tuple[int | None, str]:
    """(rank, 'tumor'|'normal') of a neuron in the ranking; unranked -> (None, 'tumor')."""
    if ranking is None:
        return None, "tumor"
    pos = np.nonzero(ranking["unit_id"].to_numpy() == unit)[0]
    if not pos.size:
        return None, "tumor"
    row = ranking.iloc[pos[0]]
    if "direction" in ranking.columns:
        d = str(row["direction"])
    elif "t_statistic" in ranking.columns:
        d = "normal" if float(row["t_statistic"]) < 0 else "tumor"
    else:
        d = "tumor"
    return int(pos[0]) + 1, {"lower_grade": "normal", "higher_grade": "tumor"}.get(d, d)


def _dim_of(path: Path) -> int:
    codes, _, _ = read_codes(path)
    return int(codes.shape[1])


def _evaluate_method(m: str, test: SplitScores, val: SplitScores) -> dict:
    y = test.patch_labels()
    s = test.patch_scores(m)
    keep = np.isfinite(s)
    vy = val.patch_labels()
    vs = val.patch_scores(m)
    vkeep = np.isfinite(vs) if vs.size else np.zeros(0, bool)
    thr, vf1 = best_f1_threshold(vy[vkeep], vs[vkeep]) if vs.size else (math.nan, math.nan)
    row = patch_metrics(y[keep], s[keep], thr)
    row["val_f1"] = vf1
    row["n_val_patches"] = int(vkeep.sum())
    row["n_val_positive"] = int(vy[vkeep].sum()) if vs.size else 0
    sl = np.asarray(test.slide_scores.get(m, []), float)
    lab = np.asarray(test.slide_scores.get("_label", []), bool)
    ok = np.isfinite(sl)
    row["slide_auroc"] = slide_auroc(lab[ok], sl[ok])
    row["n_slides"] = int(ok.sum())
    return row


def _curve_data(test: SplitScores, m: str) -> tuple[np.ndarray, np.ndarray]:
    y = test.patch_labels()
    s = test.patch_scores(m)
    keep = np.isfinite(s)
    return y[keep], s[keep]


def _label_for(m: str, rank_of: dict, direction: dict, oracle: dict | None = None) -> str:
    if m == "abmil_attention":
        return "ABMIL attention"
    if not m.startswith("unit_"):
        return f"{m} (oracle: patch labels)" if (oracle or {}).get(m) else m
    u = int(m.split("_")[1])
    rank = f" (rank {rank_of[u]})" if rank_of.get(u) else ""
    neg = ", negated" if direction.get(u) == "normal" else ""
    return f"neuron {u}{rank}{neg}"


def _clean(row: dict) -> dict:
    out = {}
    for k, v in row.items():
        if isinstance(v, float | np.floating) and not np.isfinite(v):
            out[k] = None
        elif isinstance(v, np.generic):
            out[k] = v.item()
        else:
            out[k] = v
    return out
