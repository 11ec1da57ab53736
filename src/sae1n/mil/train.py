"""k-fold MIL training and evaluation (the paper's ``experiments/mil/main.py``).

For each fold ``k_start..k_end-1`` of ``split_dir/splits_<k>.csv``: train on
one bag per step with Adam and early stopping on the validation loss, keep
the best weights, evaluate validation and test slides, and write under
``<results_dir_base>/mil/<exp>/``::

    fold_<k>/checkpoint_best.safetensors   weights + model config (metadata)
    fold_<k>/log.csv                       per-epoch losses and validation AUC
    fold_<k>/predictions_{val,test}.csv    slide_id, label, pred, prob_<c>
    fold_<k>/patch_scores/<slide>.h5       coords + per-patch scores (val and test slides;
                                           val lets evaluate-patches pick a threshold)
    fold_<k>/metrics.json                  fold metrics (written last: marks the fold done)
    summary.csv, summary.json              folds + mean/std rows, as the paper
    config.yaml                            the run's settings (every key)

The settings are :class:`sae1n.mil.config.MILRunConfig` (typed, unknown keys
refused by name); the fold loop is :class:`sae1n.mil.trainer.MILTrainer`.

Provenance: ``metrics.json``, the predictions and ``summary.csv`` carry a
``.provenance.json`` sidecar, each patch-score file an h5 attribute (settings,
split / dataset / ranking CSVs and the feature files' identities). A re-run
skips folds whose record matches; a fold made with other settings or inputs
stops the run before anything is written (``StaleOutputError``) unless
``overwrite`` (``--overwrite``).

``compat=paper`` trains as the paper's code does: its models
(:mod:`sae1n.mil.paper_models`, init included), each split in metadata-CSV
order, the epoch order from the global torch RNG as its DataLoader /
RandomSampler draw it, no mixed precision, sequential float sums of the
losses, and the summary CSV in its format (index column, mean / std rows).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from sae1n.mil.config import MILRunConfig, build_mil_config, load_mil_config
from sae1n.mil.outputs import SUMMARY_COLUMNS
from sae1n.mil.trainer import MILTrainer


def train_mil_experiment(
    exp: str,
    overrides: Sequence[str] = (),
    *,
    allow_missing: bool = False,
    device: str | None = None,
    overwrite: bool = False,
) -> pd.DataFrame:
    """Load the ``exp`` MIL config (with ``key=value`` overrides) and train it."""
    return train_mil(
        load_mil_config(exp, overrides),
        allow_missing=allow_missing,
        device=device,
        overwrite=overwrite,
    )


def train_mil(
    cfg: MILRunConfig | Mapping,
    *,
    allow_missing: bool | None = None,
    device: str | None = None,
    overwrite: bool = False,
) -> pd.DataFrame:
    """Train and evaluate every configured fold; return the summary table
    (one row per fold, then ``mean`` and ``std`` rows).

    ``cfg`` is a :class:`~sae1n.mil.config.MILRunConfig`, or a mapping (an
    OmegaConf ``DictConfig`` from :func:`sae1n.configs.load_experiment`, or a
    dict) that is built into one. Folds whose outputs were made with other
    settings or inputs raise :class:`StaleOutputError` (before anything is
    written) unless ``overwrite``."""
    if not isinstance(cfg, MILRunConfig):
        cfg = build_mil_config(cfg)
    return MILTrainer(cfg, allow_missing, device).run(overwrite)

__all__ = ["SUMMARY_COLUMNS", "MILTrainer", "train_mil", "train_mil_experiment"]
