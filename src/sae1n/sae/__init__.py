"""Sparse autoencoders: models, fast sparse kernels, training and encoding.

Public API::

    train_sae(cfg) -> Path                     # sae1n train-sae
    save_sae_features(exp_dir, ...) -> EncodeSummary   # sae1n save-sae-features
    load_sae(path_or_exp_dir) -> BaseSAE       # decoder directions: model.W_dec (F, D)
    export_sae(exp_dir, fmt="saelens") -> Path  # sae1n export-sae
    build_sae(sae_cfg) -> BaseSAE
    load_sae_config(exp, overrides) -> DictConfig

Heavy modules (torch) load on first use, so ``import sae1n.sae`` stays cheap.
"""

from __future__ import annotations

from sae1n._lazy import lazy_exports

_EXPORTS = {
    "train_sae": "sae1n.sae.train",
    "train_step": "sae1n.sae.train",
    "save_sae_features": "sae1n.sae.encode",
    "EncodeSummary": "sae1n.sae.encode",
    "load_sae": "sae1n.sae.checkpoints",
    "save_sae": "sae1n.sae.checkpoints",
    "export_sae": "sae1n.sae.export",
    "build_sae": "sae1n.sae.models",
    "SAEConfig": "sae1n.sae.model_config",
    "BaseSAE": "sae1n.sae.models",
    "BatchTopKSAE": "sae1n.sae.models",
    "TopKSAE": "sae1n.sae.models",
    "VanillaSAE": "sae1n.sae.models",
    "JumpReLUSAE": "sae1n.sae.models",
    "MatryoshkaBatchTopKSAE": "sae1n.sae.models",
    "SAETrainer": "sae1n.sae.trainer",
    "load_sae_config": "sae1n.sae.config",
    "evaluate": "sae1n.sae.metrics",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
