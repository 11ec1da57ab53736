"""One self-contained HTML page per SAE experiment (images embedded as base64):
training curves and metrics, the neuron ranking, the chosen neuron's patch
metrics and curves, heatmaps, galleries and prompt names when present.
Every section is optional: the page shows what the experiment folder holds."""

from __future__ import annotations

import base64
import html
import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from sae1n.errors import InputFileError
from sae1n.io import atomic_write_text

log = logging.getLogger(__name__)

FIGURES_DIR = "figures"
HEATMAP_DIR = "figures/heatmaps"
GALLERY_DIR = "figures/galleries"
GEOJSON_DIR = "figures/geojson"
REPORT_HTML = "report.html"
MAX_IMAGES = 12
RANKING_ROWS = 20

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1200px;color:#222;padding:0 16px}
h1{font-size:1.6em;margin-bottom:4px}h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:32px}
table{border-collapse:collapse;font-size:0.85em;margin:8px 0}th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f2f2f2}td.l,th.l{text-align:left}tr.chosen td{background:#fff4d6}
figure{display:inline-block;margin:8px 12px 8px 0;vertical-align:top}figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:0.8em;color:#555}.scroll{overflow-x:auto}.note{color:#777;font-size:0.9em}.missing{color:#a33}
"""


def _img_tag(png: bytes | Path, alt: str, cls: str = "") -> str:
    data = png.read_bytes() if isinstance(png, Path) else png
    b64 = base64.b64encode(data).decode("ascii")
    c = f' class="{cls}"' if cls else ""
    return f'<img{c} alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def _figure(png: bytes | Path, caption: str, cls: str = "") -> str:
    return f"<figure>{_img_tag(png, caption, cls)}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _fmt(v) -> str:
    if v is None:
        return "&ndash;"
    if isinstance(v, bool | np.bool_):
        return "yes" if v else ""
    if isinstance(v, int | np.integer):
        return str(int(v))
    if isinstance(v, float | np.floating):
        if not np.isfinite(v):
            return "&ndash;"
        a = abs(float(v))
        return f"{v:.3e}" if (a != 0 and (a < 1e-3 or a >= 1e5)) else f"{v:.4g}"
    return html.escape(str(v))


def _table(df: pd.DataFrame, highlight: pd.Series | None = None) -> str:
    head = "".join(f'<th class="l">{html.escape(str(c))}</th>' for c in df.columns)
    body = []
    for i, (_, row) in enumerate(df.iterrows()):
        cls = ' class="chosen"' if highlight is not None and bool(highlight.iloc[i]) else ""
        cells = "".join(
            f'<td class="l">{_fmt(v)}</td>' if isinstance(v, str) else f"<td>{_fmt(v)}</td>"
            for v in row
        )
        body.append(f"<tr{cls}>{cells}</tr>")
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _kv_table(items: dict) -> str:
    rows = "".join(
        f'<tr><th class="l">{html.escape(str(k))}</th><td class="l">{_fmt(v)}</td></tr>'
        for k, v in items.items()
    )
    return f"<table>{rows}</table>"


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        elif isinstance(v, list):
            out[key] = json.dumps(v) if len(json.dumps(v)) < 80 else f"[{len(v)} items]"
        else:
            out[key] = v
    return out


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("report: cannot read %s (%s); section skipped", path, exc)
        return None


def _read_csv(path: Path) -> pd.DataFrame | None:
    try:
        return pd.read_csv(path)
    except Exception as exc:  # a damaged file must not break the whole page
        log.warning("report: cannot read %s (%s); section skipped", path, exc)
        return None


def _pngs(folder: Path, limit: int = MAX_IMAGES) -> tuple[list[Path], int]:
    files = (
        sorted(p for p in folder.glob("*.png") if not p.name.startswith("."))
        if folder.is_dir()
        else []
    )
    return files[:limit], max(0, len(files) - limit)


# ----------------------------------------------------------------------------- sections


def _section_training(exp: Path) -> str:
    from sae1n.viz.curves import plot_training_curves, read_training_log, training_metric_columns

    parts = ["<h2>SAE training</h2>"]
    cfg_path = exp / "checkpoints" / "config_best.json"
    if cfg_path.is_file() and (cfg := _read_json(cfg_path)) is not None and isinstance(cfg, dict):
        flat = _flatten(cfg)
        parts.append(
            "<h3>Configuration (best checkpoint)</h3>" + _kv_table(dict(list(flat.items())[:40]))
        )
    logdf = read_training_log(exp / "logs" / "metrics.csv")
    if logdf is None:
        parts.append('<p class="note">No training log (logs/metrics.csv).</p>')
        return "".join(parts)
    buf_path = _render_to_bytes(lambda p: plot_training_curves(logdf, p))
    if buf_path is not None:
        parts.append(_figure(buf_path, "Training curves (logs/metrics.csv)", "curves"))
    x, metrics = training_metric_columns(logdf)
    last = {}
    for c in ([x] if x else []) + metrics:
        vals = pd.to_numeric(logdf[c], errors="coerce").dropna()
        if len(vals):
            last[c] = float(vals.iloc[-1]) if c != x else int(vals.iloc[-1])
    if last:
        parts.append("<h3>Last logged values</h3>" + _kv_table(last))
    return "".join(parts)


def _render_to_bytes(plot) -> bytes | None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "fig.png"
        out = plot(p)
        return p.read_bytes() if out is not None and p.is_file() else None


def _section_ranking(exp: Path, names: pd.DataFrame | None) -> tuple[str, int | None]:
    from sae1n.neurons.ranking import RANK_CORRELATION_CSV, SUMMARY_JSON, T_TEST_CSV

    analysis = exp / "analysis"
    summary = _read_json(analysis / SUMMARY_JSON) if (analysis / SUMMARY_JSON).is_file() else None
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
    df = _read_csv(path)
    if df is None or df.empty or "unit_id" not in df.columns:
        parts.append(f'<p class="missing">Ranking {html.escape(path.name)} could not be read.</p>')
        return "".join(parts), None
    if summary:
        keep = {
            k: summary[k]
            for k in (
                "pooling",
                "n_slides",
                "n_tumor",
                "n_normal",
                "num_features",
                "split_csv_path",
                "grade_column",
            )
            if summary.get(k) is not None
        }
        parts.append(_kv_table(keep))
    top = df.head(RANKING_ROWS).copy()
    if names is not None:
        top = top.merge(
            names[["unit_id", "name", "cosine"]].rename(
                columns={"name": "prompt_name", "cosine": "prompt_cosine"}
            ),
            on="unit_id",
            how="left",
        )
    parts.append(
        f"<p>{html.escape(path.name)}: top {len(top)} of {len(df)} neurons (rank 1 first).</p>"
    )
    parts.append(_table(top))
    return "".join(parts), int(df["unit_id"].iloc[0])


def _section_evaluation(exp: Path) -> tuple[str, int | None]:
    from sae1n.neurons.evaluate import METRICS_CSV, METRICS_JSON, PR_PNG, ROC_PNG

    ev = exp / "evaluation"
    parts = ["<h2>Patch-level evaluation</h2>"]
    if not (ev / METRICS_JSON).is_file():
        parts.append(
            '<p class="note">No patch-level evaluation yet (run <code>sae1n evaluate-patches</code>).</p>'
        )
        return "".join(parts), None
    res = _read_json(ev / METRICS_JSON) or {}
    chosen = res.get("chosen_unit")
    if res.get("chosen"):
        keys = [
            "unit_id",
            "rank",
            "direction",
            "patch_auroc",
            "patch_ap",
            "threshold",
            "precision",
            "recall",
            "f1",
            "slide_auroc",
            "n_patches",
            "n_positive",
            "n_slides",
        ]
        parts.append(f"<h3>Chosen neuron {_fmt(chosen)} on the test slides</h3>")
        parts.append(_kv_table({k: res["chosen"].get(k) for k in keys if k in res["chosen"]}))
    if res.get("baseline"):
        b = res["baseline"]
        parts.append(
            "<h3>ABMIL attention baseline</h3>"
            + _kv_table(
                {
                    k: b.get(k)
                    for k in ("patch_auroc", "patch_ap", "precision", "recall", "f1", "slide_auroc")
                }
            )
        )
    if (ev / METRICS_CSV).is_file() and (table := _read_csv(ev / METRICS_CSV)) is not None:
        parts.append("<h3>Top neurons and baseline</h3>" + _table(table, table.get("chosen")))
    figs = [
        _figure(ev / f, cap)
        for f, cap in ((ROC_PNG, "ROC (test patches)"), (PR_PNG, "Precision-recall (test patches)"))
        if (ev / f).is_file()
    ]
    parts.append("<div>" + "".join(figs) + "</div>")
    settings = res.get("settings") or {}
    if settings:
        parts.append("<details><summary>settings</summary>" + _kv_table(settings) + "</details>")
    return "".join(parts), chosen


def _section_images(exp: Path, folder: str, title: str, empty: str, cls: str) -> str:
    files, more = _pngs(exp / folder)
    parts = [f"<h2>{html.escape(title)}</h2>"]
    if not files:
        parts.append(f'<p class="note">{empty}</p>')
        return "".join(parts)
    parts.append("<div>" + "".join(_figure(p, p.stem, cls) for p in files) + "</div>")
    if more:
        parts.append(f'<p class="note">{more} more in {html.escape(folder)}/.</p>')
    return "".join(parts)


def _section_names(names: pd.DataFrame | None, chosen: int | None) -> str:
    if names is None:
        return ""
    parts = [
        "<h2>Prompt names (CLIP text tower)</h2>",
        "<p class=\"note\">Cosine of each neuron's decoder direction with text-prompt embeddings; meaningful only with the encoder's real weights.</p>",
    ]
    show = names
    if chosen is not None and (names["unit_id"] == chosen).any():
        parts.append(
            f"<p>Chosen neuron {chosen}: <b>{html.escape(str(names.loc[names['unit_id'] == chosen, 'name'].iloc[0]))}</b></p>"
        )
    parts.append(_table(show.head(RANKING_ROWS)))
    return "".join(parts)


# ----------------------------------------------------------------------------- public


def report(
    exp_dir: str | os.PathLike, out_path: str | os.PathLike | None = None, title: str | None = None
) -> Path:
    """Write ``<exp_dir>/report.html`` (or ``out_path``): one self-contained page
    with every result the experiment folder holds; returns its path."""
    from sae1n.neurons.naming import NAMES_CSV

    exp = Path(exp_dir)
    if not exp.is_dir():
        raise InputFileError(
            exp,
            "experiment folder not found",
            "pass output/sae/<exp> (the folder holding checkpoints/, logs/, analysis/)",
        )
    names_path = exp / "analysis" / NAMES_CSV
    names = _read_csv(names_path) if names_path.is_file() else None
    if names is not None and not {"unit_id", "name", "cosine"} <= set(names.columns):
        names = None
    ranking_html, top_unit = _section_ranking(exp, names)
    eval_html, chosen = _section_evaluation(exp)
    chosen = chosen if chosen is not None else top_unit
    title = title or f"sae1n report: {exp.name}"
    body = [
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="note">Experiment folder: {html.escape(str(exp))}</p>',
        _section_training(exp),
        ranking_html,
        eval_html,
        _section_images(
            exp,
            HEATMAP_DIR,
            "Heatmaps",
            "No heatmaps yet (run <code>sae1n heatmap</code>).",
            "heatmap",
        ),
        _section_images(
            exp,
            GALLERY_DIR,
            "Top-activating patches",
            "No galleries yet (run <code>sae1n heatmap --gallery N</code>).",
            "gallery",
        ),
        _section_names(names, chosen),
    ]
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        + "\n".join(body)
        + "</body></html>\n"
    )
    out = Path(out_path) if out_path else exp / REPORT_HTML
    return atomic_write_text(out, page)
