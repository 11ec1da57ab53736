"""HTML building blocks of the report (embedded base64 images, tables, number
formatting, the page's CSS) and the tolerant readers that let a damaged file
skip one section instead of breaking the page."""

from __future__ import annotations

import base64
import html
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger("sae1n.viz.reporting")  # the logger name of the messages before this module was split out

MAX_IMAGES = 12

PAGE_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1200px;color:#222;padding:0 16px}
h1{font-size:1.6em;margin-bottom:4px}h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:32px}
table{border-collapse:collapse;font-size:0.85em;margin:8px 0}th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f2f2f2}td.l,th.l{text-align:left}tr.chosen td{background:#fff4d6}
figure{display:inline-block;margin:8px 12px 8px 0;vertical-align:top}figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:0.8em;color:#555}.scroll{overflow-x:auto}.note{color:#777;font-size:0.9em}.missing{color:#a33}
tr.oracle td{font-style:italic;color:#666;background:#f3f3f3}.answer{font-size:1.25em}details summary{cursor:pointer;color:#335}
"""


def _img_tag(png: bytes | Path, alt: str, cls: str = "") -> str:
    data = png.read_bytes() if isinstance(png, Path) else png
    b64 = base64.b64encode(data).decode("ascii")
    c = f' class="{cls}"' if cls else ""
    return f'<img{c} alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def figure_html(png: bytes | Path, caption: str, cls: str = "") -> str:
    return f"<figure>{_img_tag(png, caption, cls)}<figcaption>{html.escape(caption)}</figcaption></figure>"


def format_cell(v) -> str:
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


def table_html(
    df: pd.DataFrame, highlight: pd.Series | None = None, oracle: pd.Series | None = None
) -> str:
    head = "".join(f'<th class="l">{html.escape(str(c))}</th>' for c in df.columns)
    body = []
    for i, (_, row) in enumerate(df.iterrows()):
        classes = []
        if highlight is not None and is_truthy(highlight.iloc[i]):
            classes.append("chosen")
        if oracle is not None and i < len(oracle) and is_truthy(oracle.iloc[i]):
            classes.append("oracle")
        cls = f' class="{" ".join(classes)}"' if classes else ""
        cells = "".join(
            f'<td class="l">{format_cell(v)}</td>' if isinstance(v, str) else f"<td>{format_cell(v)}</td>"
            for v in row
        )
        body.append(f"<tr{cls}>{cells}</tr>")
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def key_value_table(items: dict) -> str:
    rows = "".join(
        f'<tr><th class="l">{html.escape(str(k))}</th><td class="l">{format_cell(v)}</td></tr>'
        for k, v in items.items()
    )
    return f"<table>{rows}</table>"


def flatten_settings(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten_settings(v, key + "."))
        elif isinstance(v, list):
            out[key] = json.dumps(v) if len(json.dumps(v)) < 80 else f"[{len(v)} items]"
        else:
            out[key] = v
    return out


def read_json_or_none(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("report: cannot read %s (%s); section skipped", path, exc)
        return None


def read_csv_or_none(path: Path) -> pd.DataFrame | None:
    try:
        return pd.read_csv(path)
    except Exception as exc:  # a damaged file must not break the whole page
        log.warning("report: cannot read %s (%s); section skipped", path, exc)
        return None


def list_pngs(folder: Path, limit: int = MAX_IMAGES) -> tuple[list[Path], int]:
    files = (
        sorted(p for p in folder.glob("*.png") if not p.name.startswith("."))
        if folder.is_dir()
        else []
    )
    return files[:limit], max(0, len(files) - limit)


def is_truthy(v) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("true", "1", "yes")
    try:
        return bool(v) and not (isinstance(v, float) and np.isnan(v))
    except (TypeError, ValueError):
        return False

