"""Pictures: heatmaps on slide thumbnails, patch galleries, QuPath GeoJSON,
curves, and the self-contained HTML report.

Names are imported lazily so that ``sae1n --help`` stays fast.
"""

from __future__ import annotations

from sae1n._lazy import lazy_exports

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


__getattr__ = lazy_exports(__name__, _EXPORTS)
