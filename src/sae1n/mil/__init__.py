"""MIL slide classifiers (MaxMIL, MeanMIL, ABMIL, CLAM-SB/MB, TransMIL,
MambaMIL, SAE(+1N)+MaxMIL) with k-fold training: ``sae1n train-mil``.

Public API: :func:`train_mil` (config -> summary table),
:func:`train_mil_experiment` (``exp`` name + overrides), the typed settings
:class:`MILRunConfig` (:func:`load_mil_config`), the fold loop
:class:`MILTrainer`, :func:`build_model`
and the :class:`MILModel` contract (bag (N, D) -> :class:`MILOutput` with
``logits``, per-patch ``scores`` and an optional ``aux_loss``),
:func:`load_mil_checkpoint`, and the pure-PyTorch :func:`selective_scan`.
"""

from sae1n._lazy import lazy_exports

# Imported lazily so that `sae1n --help` (which imports mil.commands) does not load torch.
_EXPORTS = {
    "MILRunConfig": "config",
    "load_mil_config": "config",
    "MILTrainer": "trainer",
    "MODEL_TYPES": "models",
    "MILModel": "models",
    "MILOutput": "models",
    "build_model": "models",
    "load_mil_checkpoint": "models",
    "save_mil_checkpoint": "models",
    "selective_scan": "scan",
    "selective_scan_chunked": "scan",
    "selective_scan_reference": "scan",
    "train_mil": "train",
    "train_mil_experiment": "train",
}


__getattr__ = lazy_exports(__name__, _EXPORTS)


__all__ = [
    "MILModel",
    "MILRunConfig",
    "MILTrainer",
    "MILOutput",
    "MODEL_TYPES",
    "build_model",
    "load_mil_checkpoint",
    "load_mil_config",
    "save_mil_checkpoint",
    "selective_scan",
    "selective_scan_chunked",
    "selective_scan_reference",
    "train_mil",
    "train_mil_experiment",
]
