"""The report's sections, each returning its HTML (a short note, or nothing,
when the experiment folder lacks its inputs; the answer and the ranking also
return their neuron): the answer (chosen neuron, metrics, figures),
heatmaps/galleries, SAE health, training curves, configuration, ranking,
notes and prompt names."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd

from sae1n.viz.report_html import (
    MAX_IMAGES,
    figure_html,
    flatten_settings,
    format_cell,
    is_truthy,
    key_value_table,
    list_pngs,
    log,
    read_csv_or_none,
    read_json_or_none,
    table_html,
)

RANKING_ROWS = 20



def _unit_name(unit, notes: dict, names: pd.DataFrame | None) -> str:
    n = (notes.get(int(unit)) or {}).get("name") if unit is not None else None
    if n:
        return str(n)
    if names is not None and unit is not None and (names["unit_id"] == unit).any():
        return f"{names.loc[names['unit_id'] == unit, 'name'].iloc[0]} (prompt)"
    return ""


def section_answer(exp: Path, chosen, top_unit, notes: dict, names) -> tuple[str, int | None]:
    """The chosen neuron, its patch metrics against every baseline, every evaluation figure."""
    from sae1n.errors import InputFileError
    from sae1n.neurons.patch_evaluation import METRICS_CSV, PR_PNG, ROC_PNG, read_patch_evaluation

    ev = exp / "evaluation"
    try:
        res = read_patch_evaluation(ev)
    except InputFileError:  # not evaluated yet, or damaged: the report says what is missing
        res = None
    unit = res.chosen_unit if res is not None else (chosen if chosen is not None else top_unit)
    parts = ["<h2>The answer</h2>"]
    if unit is None:
        parts.append('<p class="note">No neuron chosen yet (run <code>sae1n analyze-sae</code> and <code>sae1n evaluate-patches</code>).</p>')
        return "".join(parts), None
    name = _unit_name(unit, notes, names)
    c = res.chosen if res is not None else {}
    baseline = res.baseline if res is not None else None
    head = f"Chosen neuron {format_cell(unit)}" + (f": <b>{html.escape(name)}</b>" if name else "")
    bits = [f"rank {format_cell(c.get('rank'))}" if c.get("rank") is not None else "", f"fires on {html.escape(str(c['direction']))}" if c.get("direction") else ""]
    parts.append(f'<p class="answer">{head} <span class="note">{", ".join(b for b in bits if b)}</span></p>')
    if c:
        keys = ["patch_auroc", "patch_ap", "f1", "precision", "recall", "threshold", "slide_auroc", "n_patches", "n_positive", "n_slides"]
        parts.append(key_value_table({k: c.get(k) for k in keys if k in c}))
    table = read_csv_or_none(ev / METRICS_CSV) if (ev / METRICS_CSV).is_file() else None
    if table is not None and len(table):
        table = table.copy()
        oracle = table["oracle"].map(is_truthy) if "oracle" in table.columns else pd.Series(False, index=table.index)
        if "method" in table.columns:
            table["method"] = [f"{m} (oracle)" if o else str(m) for m, o in zip(table["method"], oracle)]
        has_baseline = "method" in table.columns and (table["method"].astype(str) != "sae_neuron").any()
        if baseline and not has_baseline:
            b = {"method": "abmil_attention (baseline)", **{k: baseline.get(k) for k in ("patch_auroc", "patch_ap", "precision", "recall", "f1", "slide_auroc")}}
            table = pd.concat([table, pd.DataFrame([b])], ignore_index=True)
            oracle = pd.concat([oracle, pd.Series([False])], ignore_index=True)
        chosen_mask = table["chosen"].map(is_truthy) if "chosen" in table.columns else pd.Series(False, index=table.index)
        parts.append(
            f"<h3>Patch metrics against the baselines ({html.escape(METRICS_CSV)}, every row)</h3>"
            '<p class="note">Highlighted: the chosen neuron. Rows marked <i>oracle</i> were chosen with the test labels: an upper bound, not a method.</p>'
            + table_html(table, chosen_mask, oracle.reset_index(drop=True))
        )
    elif baseline:
        b = baseline
        parts.append("<h3>ABMIL attention baseline</h3>" + key_value_table({k: b.get(k) for k in ("patch_auroc", "patch_ap", "precision", "recall", "f1", "slide_auroc")}))
    stability = sorted(ev.glob("*stability*.csv")) + sorted((exp / "analysis").glob("*stability*.csv"))
    for csv in stability:
        st = read_csv_or_none(csv)
        if st is not None and len(st):
            parts.append(f"<h3>Stability ({html.escape(csv.name)})</h3>" + table_html(st.head(50)))
    known = [(ROC_PNG, "ROC (test patches)"), (PR_PNG, "Precision-recall (test patches)")]
    figs = [figure_html(ev / f, cap) for f, cap in known if (ev / f).is_file()]
    extra = sorted(p for p in ev.glob("*.png") if p.name not in {ROC_PNG, PR_PNG} and not p.name.startswith(".")) if ev.is_dir() else []
    extra += sorted((exp / "analysis").glob("*stability*.png"))
    figs += [figure_html(p, p.stem.replace("_", " ")) for p in extra]
    if figs:
        parts.append("<div>" + "".join(figs) + "</div>")
    settings = res.settings if res is not None else {}
    if settings:
        parts.append("<details><summary>evaluation settings</summary>" + key_value_table(settings) + "</details>")
    return "".join(parts), int(unit)


def section_images(exp: Path, folder: str, title: str, empty: str, cls: str, unit: int | None = None) -> str:
    """Pictures of the chosen neuron first; pictures of other neurons folded below."""
    files, more = list_pngs(exp / folder, limit=10_000)
    parts = [f"<h2>{html.escape(title)}</h2>"]
    if not files:
        parts.append(f'<p class="note">{empty}</p>')
        return "".join(parts)

    def unit_of(p: Path):
        from sae1n.io.provenance import read_provenance

        prov = read_provenance(p)
        if prov is not None and "unit" in prov.settings:
            return prov.settings["unit"]
        import re

        m = re.search(r"unit(\d+)", p.stem)
        return int(m.group(1)) if m else None

    mine = [p for p in files if unit is None or unit_of(p) == unit]
    other = [p for p in files if p not in mine]
    shown = mine[:MAX_IMAGES]
    if shown:
        parts.append("<div>" + "".join(figure_html(p, p.stem, cls) for p in shown) + "</div>")
    if len(mine) > len(shown):
        parts.append(f'<p class="note">{len(mine) - len(shown)} more in {html.escape(folder)}/.</p>')
    if other:
        parts.append(
            f"<details><summary>{len(other)} picture(s) of other neurons</summary><div>"
            + "".join(figure_html(p, p.stem, cls) for p in other[:MAX_IMAGES])
            + "</div></details>"
        )
    return "".join(parts)


def _firing_frequencies(exp: Path, summary: dict) -> np.ndarray | None:
    """Fraction of patches each neuron fires on, from the experiment's sparse codes."""
    import h5py

    from sae1n.neurons.inputs import code_files

    feat = summary.get("feature_dir")
    root = Path(feat) if feat and Path(feat).is_dir() else None
    if root is None:
        cands = sorted(p.parent for p in (exp / "encoded_features").glob("*/*/sparse_files"))
        root = cands[0] if cands else None
    if root is None or not (root / "sparse_files").is_dir():
        return None
    counts = None
    n = 0
    try:
        for path in code_files(root, "sparse").values():
            with h5py.File(path, "r") as f:
                d = int(f.attrs["dict_size"])
                idx = np.asarray(f["indices"][()])
                val = np.asarray(f["values"][()])
                n += int(f["indptr"].shape[0]) - 1
            c = np.bincount(idx[val > 0], minlength=d)
            counts = c if counts is None else counts + c
    except Exception as exc:  # a damaged file must not break the page
        log.warning("report: firing frequencies not computed (%s)", exc)
        return None
    return None if counts is None or n == 0 else counts / n


def section_health(exp: Path, summary: dict, cfg: dict | None) -> str:
    """FVU, dead and dense fractions (last logged values), firing-frequency histogram."""
    from sae1n.viz.curves import read_training_log

    parts = ["<h2>SAE health</h2>"]
    logdf = read_training_log(exp / "logs" / "metrics.csv")
    vals = {}
    if logdf is not None:
        for label, cands in (
            ("FVU (fraction of variance unexplained)", ("val_fvu", "fvu", "train_fvu")),
            ("dead fraction", ("val_dead_frac", "dead_frac", "dead_fraction", "val_dead_frac_train")),
            ("dense fraction", ("val_dense_frac", "dense_frac", "dense_fraction")),
            ("L0 (active neurons per patch)", ("val_l0_norm", "train_l0_norm", "l0", "l0_norm")),
        ):
            for c in cands:
                if c in logdf.columns:
                    v = pd.to_numeric(logdf[c], errors="coerce").dropna()
                    if len(v):
                        vals[label] = float(v.iloc[-1])
                        break
    freq = _firing_frequencies(exp, summary)
    dense_at = 0.1
    if isinstance(cfg, dict):
        dense_at = float((cfg.get("training") or {}).get("dense_latent_freq") or cfg.get("dense_latent_freq") or 0.1)
    if freq is not None:
        vals["neurons"] = int(freq.size)
        vals["never fire on the encoded patches"] = f"{int((freq == 0).sum())} ({100 * float((freq == 0).mean()):.1f}%)"
        vals[f"fire on more than {dense_at:g} of patches"] = f"{int((freq > dense_at).sum())} ({100 * float((freq > dense_at).mean()):.1f}%)"
    if not vals:
        parts.append('<p class="note">No training log (logs/metrics.csv) or sparse codes yet.</p>')
        return "".join(parts)
    parts.append(key_value_table(vals))
    if freq is not None:
        png = _render_to_bytes(lambda p: _plot_firing_histogram(freq, dense_at, p))
        if png is not None:
            parts.append(figure_html(png, "Firing frequency of every neuron over the encoded patches (log scale; dead neurons at the left edge)", "curves"))
    return "".join(parts)


def _plot_firing_histogram(freq: np.ndarray, dense_at: float, path: Path) -> Path:
    from matplotlib.figure import Figure

    from sae1n.viz.curves import save_figure

    n = max(int(freq.size), 1)
    floor = 0.5 / max(n * 1000, 1)
    x = np.log10(np.maximum(freq, floor))
    fig = Figure(figsize=(6, 2.8), dpi=110, layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    ax.hist(x, bins=50, color="#3b6ea8")
    ax.axvline(np.log10(dense_at), color="#c33", lw=1, ls="--", label=f"dense ({dense_at:g})")
    ax.set_xlabel("log10 firing frequency (fraction of patches)", fontsize=8)
    ax.set_ylabel("neurons", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def section_training(exp: Path) -> str:
    from sae1n.viz.curves import plot_training_curves, read_training_log, training_metric_columns

    parts = ["<h2>SAE training</h2>"]
    logdf = read_training_log(exp / "logs" / "metrics.csv")
    if logdf is None:
        parts.append('<p class="note">No training log (logs/metrics.csv).</p>')
        return "".join(parts)
    buf_path = _render_to_bytes(lambda p: plot_training_curves(logdf, p))
    if buf_path is not None:
        parts.append(figure_html(buf_path, f"Training curves (logs/metrics.csv, {len(logdf)} logged points)", "curves"))
    if len(logdf) < 5:
        parts.append(
            f'<p class="note">Only {len(logdf)} logged point(s): lower <code>training.validation_freq</code> '
            "(steps between logged validations) for denser curves.</p>"
        )
    x, metrics = training_metric_columns(logdf)
    last = {}
    for c in ([x] if x else []) + metrics:
        vals = pd.to_numeric(logdf[c], errors="coerce").dropna()
        if len(vals):
            last[c] = float(vals.iloc[-1]) if c != x else int(vals.iloc[-1])
    if last:
        parts.append("<details><summary>Last logged values</summary>" + key_value_table(last) + "</details>")
    return "".join(parts)


def section_config(exp: Path, cfg: dict | None) -> str:
    if not isinstance(cfg, dict):
        return ""
    flat = flatten_settings(cfg)
    return (
        "<h2>Configuration</h2><details><summary>"
        f"{len(flat)} settings of the best checkpoint (checkpoints/config_best.json)</summary>"
        + key_value_table(flat)
        + "</details>"
    )


def _render_to_bytes(plot) -> bytes | None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "fig.png"
        out = plot(p)
        return p.read_bytes() if out is not None and p.is_file() else None


def section_ranking(exp: Path, names: pd.DataFrame | None, notes: dict) -> tuple[str, int | None]:
    from sae1n.neurons.ranking_csv import RANK_CORRELATION_CSV, SUMMARY_JSON, T_TEST_CSV

    analysis = exp / "analysis"
    summary = read_json_or_none(analysis / SUMMARY_JSON) if (analysis / SUMMARY_JSON).is_file() else None
    primary = (summary or {}).get("primary_csv") or T_TEST_CSV
    path = analysis / primary
    if not path.is_file():
        for cand in (T_TEST_CSV, RANK_CORRELATION_CSV):
            if (analysis / cand).is_file():
                path = analysis / cand
                break
    parts = ["<h2>Neuron ranking</h2>"]
    if not path.is_file():
        parts.append('<p class="note">No ranking yet (run <code>sae1n analyze-sae</code>).</p>')
        return "".join(parts), None
    df = read_csv_or_none(path)
    if df is None or df.empty or "unit_id" not in df.columns:
        parts.append(f'<p class="missing">Ranking {html.escape(path.name)} could not be read.</p>')
        return "".join(parts), None
    if summary:
        keep = {
            k: summary[k]
            for k in ("pooling", "n_slides", "n_tumor", "n_normal", "num_features", "split_csv_path", "grade_column")
            if summary.get(k) is not None
        }
        parts.append(key_value_table(keep))
    top = df.head(RANKING_ROWS).copy()
    if notes:
        top.insert(1, "name", [str((notes.get(int(u)) or {}).get("name") or "") for u in top["unit_id"]])
    if names is not None:
        top = top.merge(
            names[["unit_id", "name", "cosine"]].rename(columns={"name": "prompt_name", "cosine": "prompt_cosine"}),
            on="unit_id",
            how="left",
        )
    parts.append(f"<p>{html.escape(path.name)}: top {len(top)} of {len(df)} neurons (rank 1 first).</p>")
    parts.append(table_html(top))
    return "".join(parts), int(df["unit_id"].iloc[0])


def section_notes(notes: dict) -> str:
    named = {u: n for u, n in notes.items() if (n or {}).get("name") or (n or {}).get("text")}
    if not named:
        return ""
    rows = pd.DataFrame(
        [
            {"unit_id": u, "name": n.get("name", ""), "rating": n.get("rating"), "tags": ", ".join(n.get("tags") or []), "notes": n.get("text", "")}
            for u, n in sorted(named.items())
        ]
    )
    return "<h2>Neuron names (sae1n browse)</h2>" + table_html(rows)


def section_names(names: pd.DataFrame | None, chosen: int | None) -> str:
    if names is None:
        return ""
    parts = [
        "<h2>Prompt names (CLIP text tower)</h2>",
        "<p class=\"note\">Cosine of each neuron's decoder direction with text-prompt embeddings; meaningful only with the encoder's real weights.</p>",
    ]
    if chosen is not None and (names["unit_id"] == chosen).any():
        parts.append(
            f"<p>Chosen neuron {chosen}: <b>{html.escape(str(names.loc[names['unit_id'] == chosen, 'name'].iloc[0]))}</b></p>"
        )
    parts.append(table_html(names.head(RANKING_ROWS)))
    return "".join(parts)


