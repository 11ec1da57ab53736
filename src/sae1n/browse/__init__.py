"""``sae1n browse``: a local web app to explore every SAE neuron on zoomable
whole slides, name it, and export its regions to QuPath.

Names are imported lazily so that ``sae1n --help`` stays fast.
"""

from __future__ import annotations

from sae1n._lazy import lazy_exports

_EXPORTS = {
    "Experiment": "sae1n.browse.experiment",
    "open_experiment": "sae1n.browse.experiment",
    "NotesStore": "sae1n.io.neuron_notes",
    "read_notes": "sae1n.io.neuron_notes",
    "create_app": "sae1n.browse.app",
    "serve": "sae1n.browse.app",
}
__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
