"""MIL slide classifiers (MaxMIL, MeanMIL, ABMIL, CLAM-SB/MB, TransMIL,
MambaMIL, SAE(+1N)+MaxMIL) with k-fold training: ``sae1n train-mil``.

Public API: :func:`train_mil` (config -> summary table),
:func:`train_mil_experiment` (``exp`` name + overrides), :func:`build_model`
and the :class:`MILModel` contract (bag (N, D) -> :class:`MILOutput` with
``logits``, per-patch ``scores`` and an optional ``aux_loss``),
:func:`load_mil_checkpoint`, and the pure-PyTorch :func:`selective_scan`.
"""

from sae1n.mil.models import (
    MODEL_TYPES,
    MILModel,
    MILOutput,
    build_model,
    load_mil_checkpoint,
    save_mil_checkpoint,
)
from sae1n.mil.scan import selective_scan, selective_scan_chunked, selective_scan_reference
from sae1n.mil.train import train_mil, train_mil_experiment

__all__ = [
    "MILModel",
    "MILOutput",
    "MODEL_TYPES",
    "build_model",
    "load_mil_checkpoint",
    "save_mil_checkpoint",
    "selective_scan",
    "selective_scan_chunked",
    "selective_scan_reference",
    "train_mil",
    "train_mil_experiment",
]
