"""One self-contained HTML page per SAE experiment (images embedded as base64),
leading with the answer: the chosen neuron (with its name from ``sae1n browse``
notes), its patch metrics against every baseline, every evaluation figure, its
heatmaps and gallery; then the SAE's health (FVU, dead and dense fractions,
firing-frequency histogram), the ranking, names, training curves, and the
configuration folded last. Every section is optional: the page shows what the
experiment folder holds.

The HTML building blocks are in :mod:`sae1n.viz.report_html`, the sections in
:mod:`sae1n.viz.report_sections`; this module assembles the page.
"""

from __future__ import annotations

import html
import logging
import os
from pathlib import Path

from sae1n.errors import InputFileError
from sae1n.io import atomic_write_text
from sae1n.viz.report_html import MAX_IMAGES, PAGE_CSS, read_csv_or_none, read_json_or_none
from sae1n.viz.report_sections import (
    RANKING_ROWS,
    section_answer,
    section_config,
    section_health,
    section_images,
    section_names,
    section_notes,
    section_ranking,
    section_training,
)

__all__ = [
    "FIGURES_DIR", "GALLERY_DIR", "GEOJSON_DIR", "HEATMAP_DIR", "MAX_IMAGES", "RANKING_ROWS",
    "REPORT_HTML", "REPORT_SCHEMA", "report", "report_inputs",
]

log = logging.getLogger(__name__)

FIGURES_DIR = "figures"
HEATMAP_DIR = "figures/heatmaps"
GALLERY_DIR = "figures/galleries"
GEOJSON_DIR = "figures/geojson"
REPORT_HTML = "report.html"


# ----------------------------------------------------------------------------- public

REPORT_SCHEMA = 2


def report_inputs(exp: Path) -> dict:
    """Every file the report embeds or reads, for its provenance record."""
    from sae1n.io.neuron_notes import NOTES_JSON
    from sae1n.io.provenance import input_identity

    files = []
    for sub, pat in (
        ("analysis", "*.csv"),
        ("analysis", "*.json"),
        ("analysis", "*stability*.png"),
        ("evaluation", "*.csv"),
        ("evaluation", "*.json"),
        ("evaluation", "*.png"),
        (HEATMAP_DIR, "*.png"),
        (GALLERY_DIR, "*.png"),
        ("logs", "metrics.csv"),
        ("checkpoints", "config_best.json"),
    ):
        files += sorted(p for p in (exp / sub).glob(pat) if p.is_file() and not p.name.startswith("."))
    if (exp / NOTES_JSON).is_file():
        files.append(exp / NOTES_JSON)
    enc = sorted((exp / "encoded_features").glob("*/*/sparse_files/*.h5"))
    out = {str(p.relative_to(exp)): input_identity(p) for p in files}
    if enc:  # the codes only feed the firing histogram: identified by size and mtime
        out["encoded_features"] = {
            str(p.relative_to(exp)): [p.stat().st_size, p.stat().st_mtime_ns] for p in enc
        }
    return out


def report(
    exp_dir: str | os.PathLike,
    out_path: str | os.PathLike | None = None,
    title: str | None = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Write ``<exp_dir>/report.html`` (or ``out_path``): one self-contained page
    leading with the chosen neuron and its metrics, then the SAE's health, the
    ranking, training curves, and the configuration (folded). A provenance sidecar
    records every input: a current report is kept, a stale one is refused unless
    ``overwrite``. Returns its path."""
    from sae1n.io.neuron_notes import read_notes
    from sae1n.io.provenance import Provenance, check_output, write_sidecar
    from sae1n.neurons.naming import NAMES_CSV
    from sae1n.neurons.ranking_csv import SUMMARY_JSON

    exp = Path(exp_dir)
    if not exp.is_dir():
        raise InputFileError(
            exp,
            "experiment folder not found",
            "pass output/sae/<exp> (the folder holding checkpoints/, logs/, analysis/)",
        )
    title = title or f"sae1n report: {exp.name}"
    out = Path(out_path) if out_path else exp / REPORT_HTML
    prov = Provenance.make("report", REPORT_SCHEMA, settings={"title": title}, inputs=report_inputs(exp))
    if check_output(out, prov, overwrite=overwrite, fix="Fix: pass --overwrite to rewrite the report, or --out another file."):
        return out
    try:
        notes = read_notes(exp)
    except InputFileError as exc:
        log.warning("report: neuron notes not shown (%s)", exc)
        notes = {}
    names_path = exp / "analysis" / NAMES_CSV
    names = read_csv_or_none(names_path) if names_path.is_file() else None
    if names is not None and not {"unit_id", "name", "cosine"} <= set(names.columns):
        names = None
    summary = read_json_or_none(exp / "analysis" / SUMMARY_JSON) if (exp / "analysis" / SUMMARY_JSON).is_file() else None
    summary = summary if isinstance(summary, dict) else {}
    cfg_path = exp / "checkpoints" / "config_best.json"
    cfg = read_json_or_none(cfg_path) if cfg_path.is_file() else None
    ranking_html, top_unit = section_ranking(exp, names, notes)
    answer_html, chosen = section_answer(exp, None, top_unit, notes, names)
    body = [
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="note">Experiment folder: {html.escape(str(exp))}</p>',
        answer_html,
        section_images(exp, HEATMAP_DIR, "Heatmaps", "No heatmaps yet (run <code>sae1n heatmap</code>).", "heatmap", chosen),
        section_images(exp, GALLERY_DIR, "Top-activating patches", "No galleries yet (run <code>sae1n heatmap --gallery N</code>).", "gallery", chosen),
        section_health(exp, summary, cfg),
        ranking_html,
        section_notes(notes),
        section_names(names, chosen),
        section_training(exp),
        section_config(exp, cfg),
    ]
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{PAGE_CSS}</style></head><body>"
        + "\n".join(b for b in body if b)
        + "</body></html>\n"
    )
    atomic_write_text(out, page)
    write_sidecar(out, prov)
    return out
