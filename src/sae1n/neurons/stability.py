"""Seed stability (``sae1n stability EXP --seeds 5``): would another SAE seed
pick an equally good neuron, and the same direction?

For each seed the SAE of ``EXP`` is trained on the same data, every slide is
encoded, the neurons are ranked on the train slides (the paper's rule) and
the chosen neuron is evaluated on the test patches (with the baselines when
``input_feature_dir`` is given). The chosen neurons are then compared by the
cosine of their decoder directions (rows of ``W_dec``, in input space).

Written to ``<output_dir>/<exp>/stability/``::

    runs/seed_<s>/...           each seed's SAE, codes, ranking, evaluation
    stability_runs.csv          one row per (seed, method): metrics of that seed
    stability_summary.csv       one row per method: mean, std, min, max over seeds
    decoder_cosine.csv          cosine of the chosen neurons' decoder directions (seed x seed)
    stability.json              the above plus the best cross-seed matches
    stability_strip.png         strip plot of patch and slide AUROC per method over seeds
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from sae1n.errors import ConfigError
from sae1n.io import Provenance, atomic_path, atomic_write_csv, atomic_write_json, write_sidecar

log = logging.getLogger(__name__)

METRICS = ("patch_auroc", "patch_ap", "f1", "slide_auroc")
RUNS_CSV = "stability_runs.csv"
SUMMARY_CSV = "stability_summary.csv"
COSINE_CSV = "decoder_cosine.csv"
STRIP_PNG = "stability_strip.png"
SUMMARY_JSON = "stability.json"


def decoder_cosines(directions: np.ndarray) -> np.ndarray:
    """Cosine similarity matrix of the rows of ``directions`` (S, D)."""
    d = np.asarray(directions, dtype=np.float64)
    n = np.linalg.norm(d, axis=1, keepdims=True)
    d = d / np.where(n > 0, n, 1.0)
    return d @ d.T


def best_matches(chosen: Sequence[np.ndarray], dictionaries: Sequence[np.ndarray]) -> list[dict]:
    """For each ordered seed pair (i, j): the neuron of seed j whose decoder
    direction is closest (cosine) to seed i's chosen direction."""
    out = []
    for i, v in enumerate(chosen):
        v = np.asarray(v, np.float64)
        v = v / (np.linalg.norm(v) or 1.0)
        for j, w in enumerate(dictionaries):
            if i == j:
                continue
            w = np.asarray(w, np.float64)
            cos = (w @ v) / np.where(np.linalg.norm(w, axis=1) > 0, np.linalg.norm(w, axis=1), 1.0)
            k = int(np.argmax(cos))
            out.append(
                {
                    "seed_index": i,
                    "other_index": j,
                    "best_unit": k,
                    "best_cosine": float(cos[k]),
                    "mean_abs_cosine": float(np.abs(cos).mean()),  # chance level: any neuron of seed j
                }
            )
    return out


def summarize_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean, std (ddof 1), min and max of each metric per method over seeds."""
    rows = []
    for (method, oracle), g in runs.groupby(["method", "oracle"], sort=False):
        row = {"method": method, "oracle": bool(oracle), "n_seeds": int(g["seed"].nunique())}
        for m in METRICS:
            v = g[m].astype(float)
            row[f"{m}_mean"] = float(v.mean())
            row[f"{m}_std"] = float(v.std(ddof=1)) if len(v) > 1 else 0.0
            row[f"{m}_min"] = float(v.min())
            row[f"{m}_max"] = float(v.max())
        rows.append(row)
    return pd.DataFrame(rows)


def seed_stability(
    exp: str,
    *,
    seeds: int | Sequence[int] = 5,
    overrides: Sequence[str] = (),
    split_csv_path: str | os.PathLike | None = None,
    dataset_csv: str | os.PathLike,
    patch_label_dir: str | os.PathLike,
    output_dir: str | os.PathLike | None = None,
    input_feature_dir: str | os.PathLike | None = None,
    baselines: Sequence[str] | None = None,
    mil_dir=None,
    pooling: str = "max",
    n_components: int = 32,
    label_column: str = "label",
) -> dict:
    """Train ``exp`` (an SAE config, with ``key=value`` ``overrides``) once per
    seed, select and evaluate the neuron in each, and compare the seeds.

    ``seeds``: a count N (seeds ``cfg.seed + 0 .. N-1``) or explicit seeds.
    ``split_csv_path`` defaults to the config's ``data.split_csv_path``.
    Returns the content of ``stability.json``.
    """
    from sae1n.neurons.evaluate import evaluate_patches
    from sae1n.neurons.ranking import analyze_sae
    from sae1n.sae import load_sae, load_sae_config, save_sae_features, train_sae
    from sae1n.sae.config import experiment_dir

    base = load_sae_config(exp, overrides)
    if base.get("sweep"):
        raise ConfigError("stability trains one SAE per seed; drop the sweep settings")
    seed_list = (
        [int(base.seed) + i for i in range(int(seeds))]
        if isinstance(seeds, int | np.integer)
        else [int(s) for s in seeds]
    )
    if len(seed_list) < 2 or len(set(seed_list)) != len(seed_list):
        raise ConfigError(f"--seeds needs at least 2 distinct seeds, got {seed_list}")
    split = split_csv_path or base.data.get("split_csv_path")
    if not split:
        raise ConfigError("give --split_csv_path (the config has no data.split_csv_path)")
    if output_dir is not None:
        base.output_dir = str(output_dir)
    root = experiment_dir(base) / "stability"
    runs_dir = root / "runs"
    rows, chosen_dirs, dictionaries, units = [], [], [], []
    for s in seed_list:
        cfg = copy.deepcopy(base)
        cfg.seed = s
        cfg.exp_name = f"seed_{s}"
        cfg.output_dir = str(runs_dir)
        cfg.data.split_csv_path = str(split)
        log.info("stability: seed %d", s)
        exp_dir = train_sae(cfg)
        enc = save_sae_features(exp_dir).out_dir
        analyze_sae(cfg.exp_name, split, enc, dataset_csv, runs_dir, pooling=pooling, label_column=label_column)
        res = evaluate_patches(
            cfg.exp_name,
            split,
            enc,
            patch_label_dir,
            runs_dir,
            top_n=0,
            dataset_csv=dataset_csv,
            label_column=label_column,
            mil_dir=mil_dir,
            pooling=pooling,
            input_feature_dir=input_feature_dir,
            baselines=baselines,
            baseline_seed=s,
            n_components=n_components,
        )
        unit = int(res.chosen_unit)
        w = load_sae(exp_dir, device="cpu").W_dec.detach().cpu().numpy()
        units.append(unit)
        chosen_dirs.append(w[unit])
        dictionaries.append(w)
        for r in [res.chosen, *res.baselines]:
            rows.append(
                {
                    "seed": s,
                    "method": r["method"],
                    "oracle": bool(r.get("oracle", False)),
                    "unit_id": unit if r["method"] == "sae_neuron" else None,
                    "detail": r.get("detail", ""),
                    **{m: (np.nan if r.get(m) is None else r[m]) for m in METRICS},
                }
            )
    runs = pd.DataFrame(rows)
    summary = summarize_runs(runs)
    cos = decoder_cosines(np.stack(chosen_dirs))
    names = [f"seed_{s}" for s in seed_list]
    cos_df = pd.DataFrame(cos, index=names, columns=names)
    matches = best_matches(chosen_dirs, dictionaries)
    for m in matches:
        m["seed"] = seed_list[m.pop("seed_index")]
        m["other_seed"] = seed_list[m.pop("other_index")]
        m["is_other_chosen"] = m["best_unit"] == units[seed_list.index(m["other_seed"])]
    off = cos[~np.eye(len(seed_list), dtype=bool)]
    result = {
        "exp": exp,
        "seeds": seed_list,
        "chosen_units": dict(zip(map(str, seed_list), units)),
        "pairwise_cosine_mean": float(off.mean()),
        "pairwise_cosine_min": float(off.min()),
        "best_match_cosine_mean": float(np.mean([m["best_cosine"] for m in matches])),
        "best_match_is_chosen_share": float(np.mean([m["is_other_chosen"] for m in matches])),
        "chance_abs_cosine_mean": float(np.mean([m["mean_abs_cosine"] for m in matches])),
        "best_matches": matches,
        "summary": summary.to_dict(orient="records"),
        "files": {"runs": RUNS_CSV, "summary": SUMMARY_CSV, "cosine": COSINE_CSV, "strip": STRIP_PNG},
    }
    atomic_write_csv(root / RUNS_CSV, runs)
    atomic_write_csv(root / SUMMARY_CSV, summary)
    atomic_write_csv(root / COSINE_CSV, cos_df, index=True)
    plot_strip(runs, root / STRIP_PNG, title=f"{exp}: {len(seed_list)} SAE seeds")
    atomic_write_json(root / SUMMARY_JSON, result)
    prov = Provenance.make(
        "seed_stability",
        1,
        settings={"exp": exp, "overrides": list(overrides), "seeds": seed_list, "pooling": pooling, "baselines": baselines, "n_components": n_components},
        inputs={"split_csv": Path(split), "dataset_csv": Path(dataset_csv), "input_feature_dir": None if input_feature_dir is None else str(input_feature_dir)},
    )
    for name in (RUNS_CSV, SUMMARY_CSV, COSINE_CSV, STRIP_PNG, SUMMARY_JSON):
        write_sidecar(root / name, prov)
    result["out_dir"] = str(root)
    return result


def plot_strip(runs: pd.DataFrame, path: str | os.PathLike, title: str = "") -> Path:
    """Strip plot: one dot per seed, per method, for patch and slide AUROC."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(runs["method"]))
    oracle = dict(zip(runs["method"], runs["oracle"]))
    rng = np.random.default_rng(0)
    fig, axes = plt.subplots(1, 2, figsize=(max(6, 1.1 * len(methods) + 2) * 1.6, 3.6), sharey=True)
    for ax, metric in zip(axes, ("patch_auroc", "slide_auroc")):
        for i, m in enumerate(methods):
            v = runs.loc[runs["method"] == m, metric].astype(float).to_numpy()
            ax.scatter(i + rng.uniform(-0.12, 0.12, len(v)), v, s=22, alpha=0.8, color="0.5" if oracle[m] else f"C{i % 10}")
            if np.isfinite(v).any():
                ax.hlines(np.nanmean(v), i - 0.25, i + 0.25, color="k", lw=1.5)
        ax.set_xticks(range(len(methods)))
        ax.set_xticklabels([m + (" *" if oracle[m] else "") for m in methods], rotation=30, ha="right", fontsize=8)
        ax.set_title(metric.replace("_", " "))
        ax.axhline(0.5, color="0.8", lw=0.8, ls="--")
        ax.set_ylim(-0.02, 1.02)
    axes[0].set_ylabel("AUROC (one dot per seed; bar = mean)")
    fig.suptitle(title + "   (* oracle: uses patch labels)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path
