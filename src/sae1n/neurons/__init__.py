"""Neuron ranking by slide labels, patch-level evaluation, prompt naming.

Names are imported lazily so that ``sae1n --help`` (which imports
``sae1n.neurons.commands``) stays fast.
"""

from __future__ import annotations

from sae1n._lazy import lazy_exports

_EXPORTS = {
    "analyze_sae": "sae1n.neurons.ranking",
    "rank_neurons": "sae1n.neurons.ranking",
    "read_ranking": "sae1n.neurons.ranking_csv",
    "welch_t_test": "sae1n.neurons.column_stats",
    "pool_activations": "sae1n.neurons.pooling",
    "POOLINGS": "sae1n.neurons.pooling",
    "evaluate_patches": "sae1n.neurons.evaluate",
    "name_neurons": "sae1n.neurons.naming",
    "write_neuron_names": "sae1n.neurons.naming",
    "registry_text_encoder": "sae1n.neurons.naming",
    "name_experiment": "sae1n.neurons.naming",
    "DEFAULT_PATHOLOGY_PROMPTS": "sae1n.neurons.naming",
}
__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
