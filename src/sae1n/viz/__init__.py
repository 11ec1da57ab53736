"""Pictures: heatmaps on slide thumbnails, patch galleries, QuPath GeoJSON,
curves, and the self-contained HTML report.

Names are imported lazily so that ``sae1n --help`` stays fast.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "PatchScores": "sae1n.viz.heatmaps",
    "heatmap": "sae1n.viz.heatmaps",
    "neuron_heatmap": "sae1n.viz.heatmaps",
    "gallery": "sae1n.viz.galleries",
    "neuron_gallery": "sae1n.viz.galleries",
    "export_geojson": "sae1n.viz.geojson",
    "neuron_figures": "sae1n.viz.figures",
    "report": "sae1n.viz.reporting",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'sae1n.viz' has no attribute {name!r}")
