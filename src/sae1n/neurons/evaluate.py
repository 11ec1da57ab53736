"""Patch-level evaluation of selected SAE neurons against patch labels.

For the chosen neuron (rank 1 by default), each of the top-N neurons and,
when its per-patch scores exist, an ABMIL attention baseline: patch AUROC and
average precision on the test slides, the best-F1 threshold chosen on the
validation slides and applied to the test slides, and the slide AUROC of the
pooled score. Patches are matched to their labels by level-0 coords.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from sae1n.errors import ConfigError, InputFileError, Sae1nError
from sae1n.io import (
    Provenance,
    atomic_write_csv,
    atomic_write_json,
    feature_paths,
    read_bag,
    write_sidecar,
)
from sae1n.neurons.baselines import FEATURE_BASELINES, fit_baselines
from sae1n.neurons.inputs import (
    binarize_labels,
    code_files,
    match_coords,
    missing_list,
    neuron_columns,
    read_codes,
    read_patch_label_file,
    read_patch_scores,
    read_slide_labels,
    read_split_slides,
)
from sae1n.neurons.pooling import check_pooling, pool_activations
from sae1n.neurons.ranking_csv import ranking_csv_path, read_ranking
from sae1n.utils import progress

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.5
METRICS_CSV = "patch_metrics.csv"
METRICS_JSON = "patch_metrics.json"
ROC_PNG = "roc_curve.png"
PR_PNG = "pr_curve.png"


@dataclass
class SplitScores:
    """Per-patch scores (matched to labels) and per-slide pooled scores of one split."""

    scores: dict[str, list[np.ndarray]] = field(default_factory=dict)  # method -> per-slide arrays
    labels: list[np.ndarray] = field(default_factory=list)  # per-slide patch labels
    slide_ids: list[str] = field(default_factory=list)
    slide_scores: dict[str, list[float]] = field(default_factory=dict)
    n_unmatched: int = 0

    def patch_scores(self, method: str) -> np.ndarray:
        parts = self.scores.get(method, [])
        return np.concatenate(parts) if parts else np.empty(0)

    def patch_labels(self) -> np.ndarray:
        return np.concatenate(self.labels).astype(bool) if self.labels else np.empty(0, bool)


# ----------------------------------------------------------------------------- metrics


def best_f1_threshold(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """(threshold, F1) maximising F1 of ``scores >= threshold``; NaNs when undefined."""
    from sklearn.metrics import precision_recall_curve

    labels = np.asarray(labels, bool)
    if labels.size == 0 or not labels.any():
        return math.nan, math.nan
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)[
            :-1
        ]
    i = int(np.argmax(f1))
    return float(thresholds[i]), float(f1[i])


def patch_metrics(
    test_labels: np.ndarray, test_scores: np.ndarray, threshold: float | None = None
) -> dict:
    """AUROC, AP and (given a threshold) precision/recall/F1 of per-patch scores."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = np.asarray(test_labels, bool)
    s = np.asarray(test_scores, float)
    out = {
        "n_patches": int(y.size),
        "n_positive": int(y.sum()),
        "patch_auroc": math.nan,
        "patch_ap": math.nan,
    }
    if y.size and 0 < y.sum() < y.size:
        out["patch_auroc"] = float(roc_auc_score(y, s))
        out["patch_ap"] = float(average_precision_score(y, s))
    out["threshold"] = math.nan if threshold is None else float(threshold)
    out.update(precision=math.nan, recall=math.nan, f1=math.nan)
    if threshold is not None and np.isfinite(threshold) and y.size:
        pred = s >= threshold
        tp = int((pred & y).sum())
        fp = int((pred & ~y).sum())
        fn = int((~pred & y).sum())
        out["precision"] = tp / (tp + fp) if tp + fp else 0.0
        out["recall"] = tp / (tp + fn) if tp + fn else math.nan
        p, r = out["precision"], out["recall"]
        out["f1"] = 2 * p * r / (p + r) if (p + r) > 0 else 0.0
    return out


def slide_auroc(slide_labels, slide_scores) -> float:
    """ROC AUC of pooled slide scores; NaN when one class is missing."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(slide_labels, bool)
    if y.size == 0 or y.all() or not y.any():
        return math.nan
    return float(roc_auc_score(y, np.asarray(slide_scores, float)))


# ----------------------------------------------------------------------------- loading


def _fold_of(split_csv_path) -> int:
    m = re.search(r"splits_(\d+)", Path(split_csv_path).stem)
    return int(m.group(1)) if m else 0


def _slide_patch_labels(
    sid: str,
    coords: np.ndarray,
    label_dir: Path,
    threshold: float | None,
    slide_label: int | None,
    allow_missing: bool,
):
    """(index into coords, labels) of the patches that have a label, or None to skip."""
    path = label_dir / f"{sid}.h5"
    if not path.is_file():
        if slide_label == 0:  # a normal slide without annotations: every patch is normal
            return np.arange(len(coords)), np.zeros(len(coords), bool), 0
        if allow_missing:
            log.warning("no patch labels for %s; skipped", sid)
            return None
        raise InputFileError(
            path,
            "patch-label file not found",
            "run `sae1n patch-labels` for this slide, give --dataset_csv so normal slides need none, or pass --allow_missing",
        )
    lab_coords, frac, file_thr = read_patch_label_file(path)
    thr = (
        threshold
        if threshold is not None
        else (file_thr if file_thr is not None else DEFAULT_THRESHOLD)
    )
    ia, ib = match_coords(coords, lab_coords)
    if len(ia) == 0:
        raise InputFileError(
            path,
            f"none of its {len(lab_coords)} patch coords match the {len(coords)} coords of the SAE codes",
            "make patch labels from the same patch coordinates (patches/<slide>.h5) the features were extracted from",
        )
    return ia, frac[ib] >= thr, len(coords) - len(ia)


def _collect(
    split_name: str,
    slides: list[str],
    files: dict[str, Path],
    units: list[int],
    signs: dict[int, float],
    label_dir: Path,
    threshold: float | None,
    slide_labels: dict[str, int] | None,
    mil_dirs: dict[str, Path],
    pooling: str,
    topk: int,
    quantile: float,
    allow_missing: bool,
    raw_files: dict[str, Path] | None = None,
    baselines: list | None = None,
) -> SplitScores:
    out = SplitScores()
    missing = [s for s in slides if s not in files]
    if missing:
        if not allow_missing:
            raise InputFileError(
                next(iter(files.values())).parent,
                f"no SAE codes for {len(missing)} {split_name} slide(s): {missing_list(missing)}",
                "run `sae1n save-sae-features` for them, or pass --allow_missing",
            )
        slides = [s for s in slides if s in files]
    for sid in progress(slides, desc=f"{split_name} slides", total=len(slides)):
        codes, coords, _ = read_codes(files[sid])
        if coords is None:
            raise InputFileError(
                files[sid],
                "has no coords",
                "use h5 or sparse code files (they keep coords), not pt files",
            )
        known = None if slide_labels is None else slide_labels.get(sid)
        got = _slide_patch_labels(sid, coords, label_dir, threshold, known, allow_missing)
        if got is None:
            continue
        idx, lab, unmatched = got
        out.n_unmatched += unmatched
        out.slide_ids.append(sid)
        out.labels.append(lab)
        sl = int(lab.any()) if known is None else int(known)
        out.slide_scores.setdefault("_label", []).append(sl)
        acts = neuron_columns(codes, units)
        for j, u in enumerate(units):
            act = acts[:, j]
            key = f"unit_{u}"
            out.scores.setdefault(key, []).append(signs[u] * act[idx])
            pooled = pool_activations(act[:, None], pooling, topk=topk, quantile=quantile)[0]
            out.slide_scores.setdefault(key, []).append(signs[u] * pooled)
        for method, folder in mil_dirs.items():
            part, pooled = _mil_scores(folder / f"{sid}.h5", coords[idx])
            out.scores.setdefault(method, []).append(part)
            out.slide_scores.setdefault(method, []).append(pooled)
        if baselines:
            if sid not in raw_files:
                raise InputFileError(
                    Path(next(iter(raw_files.values()))).parent,
                    f"no input features for {split_name} slide {sid}",
                    "pass the --input_feature_dir the SAE was trained on",
                )
            raw = read_bag(raw_files[sid])
            ja, jb = _raw_match(raw, coords, raw_files[sid])
            for b in baselines:
                full = np.full(len(coords), np.nan)
                sc = b.score(raw.features)
                full[ja] = sc[jb]
                out.scores.setdefault(b.method, []).append(full[idx])
                pooled = pool_activations(sc[:, None], pooling, topk=topk, quantile=quantile)[0]
                out.slide_scores.setdefault(b.method, []).append(float(pooled))
    return out


def _mil_scores(path: Path, coords: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-patch MIL scores matched to ``coords`` (NaN where absent) and their max."""
    full = np.full(len(coords), np.nan)
    if not path.is_file():
        return full, math.nan
    bcoords, bscores = read_patch_scores(path)
    ja, jb = match_coords(coords, bcoords)
    full[ja] = bscores[jb]
    return full, (float(bscores.max()) if bscores.size else math.nan)


def _raw_match(raw, coords: np.ndarray, path: Path) -> tuple[np.ndarray, np.ndarray]:
    if raw.coords is None:
        if len(raw.features) != len(coords):
            raise InputFileError(path, "has no coords and not one row per SAE-code row", "use h5 input features (they keep coords)")
        ar = np.arange(len(coords))
        return ar, ar
    return match_coords(coords, raw.coords)


def mil_method_name(folder: str | os.PathLike) -> str:
    """Method name of a MIL experiment folder's per-patch scores:
    ``abmil_attention`` (ABMIL), ``maxmil_scores`` (MaxMIL), else ``<exp>_scores``."""
    name = Path(folder).name.lower()
    if "abmil" in name:
        return "abmil_attention"
    if "maxmil" in name and "sae" not in name:
        return "maxmil_scores"
    return f"{Path(folder).name}_scores"


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
) -> dict:
    """Evaluate the chosen neuron (default: rank 1) and the top-N neurons on the
    split's test slides, with thresholds chosen on its val slides.

    Writes ``<output_dir>/<exp_id>/evaluation/patch_metrics.csv`` (one row per
    method; columns ``method``, ``oracle``, ...) and ``.json``; returns the JSON
    content plus ``curves`` (legend name -> (labels, scores) of every method),
    which :func:`sae1n.viz.evaluation.plot_patch_evaluation` draws as the ROC
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
    k = _fold_of(split_csv_path) if fold is None else int(fold)
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
        fitted = _fit_feature_baselines(
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
    test_scores = _collect("test", test, **common)
    val_scores = _collect("val", val, **common) if val else SplitScores()
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
    result = {
        "exp_id": exp_id,
        "chosen_unit": chosen,
        "chosen": _clean(next(r for r in rows if r["chosen"])),
        "top_n": [_clean(r) for r in rows if r["method"] == "sae_neuron"],
        "baseline": next((_clean(r) for r in rows if r["method"] == "abmil_attention"), None),
        "baselines": [_clean(r) for r in rows if r["method"] in extra],
        "settings": {
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
        },
        "files": {"csv": METRICS_CSV},
    }
    if plots:  # drawn by sae1n.viz.evaluation.plot_patch_evaluation (neurons do not draw)
        result["files"].update(roc=ROC_PNG, pr=PR_PNG)
    atomic_write_json(eval_dir / METRICS_JSON, result)
    prov = Provenance.make(
        "patch_metrics",
        1,
        settings={k2: v for k2, v in result["settings"].items() if not k2.startswith("n_")} | {"chosen_unit": chosen, "top_n": top_n, "baselines": [b.method for b in fitted]},
        inputs={"split_csv": Path(split_csv_path), "ranking_csv": ranking_path if ranking is not None else None},
    )
    for name in (METRICS_CSV, METRICS_JSON):
        write_sidecar(eval_dir / name, prov)
    # curve data for the figures (not part of the JSON): legend name -> (labels, scores)
    result["curves"] = {_label_for(m, rank_of, direction, oracle): c for m, c in curves.items()}
    result["eval_dir"] = str(eval_dir)
    return result


def _fit_feature_baselines(
    split_csv_path, raw_files, code_files_, feature_dir, label_dir, threshold, slide_labels, *,
    methods, sae_checkpoint, seed, n_components, pooling, topk, quantile, allow_missing,
):
    """Fit the feature baselines on the split's train slides (input features,
    slide labels; patch labels for the oracle only)."""
    train = read_split_slides(split_csv_path, "train")
    feats, labels, patch_labels = {}, {}, {}
    for sid in train:
        if sid not in raw_files:
            if allow_missing:
                continue
            raise InputFileError(
                split_csv_path,
                f"train slide {sid} has no input features",
                "pass the --input_feature_dir the SAE was trained on, or --allow_missing",
            )
        bag = read_bag(raw_files[sid])
        known = None if slide_labels is None else slide_labels.get(sid)
        coords = bag.coords if bag.coords is not None else np.zeros((len(bag.features), 2), np.int64)
        got = None
        if bag.coords is not None and ((label_dir / f"{sid}.h5").is_file() or known is not None):
            got = _slide_patch_labels(sid, coords, label_dir, threshold, known, True)
        feats[sid] = bag.features
        if got is not None:
            patch_labels[sid] = (got[0], got[1])  # rows with a label, their labels
        if known is not None:
            labels[sid] = int(known)
        elif got is not None:
            labels[sid] = int(got[1].any())
    if not labels:
        raise InputFileError(
            split_csv_path, "no train slide has a label", "pass --dataset_csv with slide labels"
        )
    sae_config = None
    if "random_sae" in methods:
        sae_config = _sae_config_of(sae_checkpoint, feature_dir, code_files_)
    return fit_baselines(
        feats,
        labels,
        patch_labels=patch_labels,
        methods=methods,
        sae_config=sae_config,
        n_components=n_components,
        seed=seed,
        pooling=pooling,
        topk=topk,
        quantile=quantile,
    )


def _sae_config_of(sae_checkpoint, feature_dir, code_files_):
    """The trained SAE's config: from ``sae_checkpoint``, else the checkpoint the
    codes were encoded with (``encoding.json`` / the code files' attrs)."""
    import json

    from sae1n.sae import load_sae

    ckpt = sae_checkpoint
    if ckpt is None:
        root = Path(feature_dir)
        for cand in (root / "encoding.json", root.parent / "encoding.json"):
            if cand.is_file():
                ckpt = json.loads(cand.read_text()).get("checkpoint")
                break
    if ckpt is None:
        _, _, attrs = read_codes(next(iter(code_files_.values())))
        ckpt = attrs.get("sae_checkpoint")
    if ckpt is None or not Path(str(ckpt)).exists():
        log.warning("no SAE checkpoint found for the random_sae baseline (pass --sae_checkpoint); skipped")
        return None
    return load_sae(ckpt, device="cpu").cfg


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
