"""SAE training (``sae1n train-sae``): ``train_sae(cfg) -> Path``.

The public entry point; the work is :class:`sae1n.sae.trainer.SAETrainer`
(the loop), :mod:`sae1n.sae.data` (store, split rows, batches) and
:mod:`sae1n.sae.loggers` (metrics.csv, TensorBoard, W&B, the train log).
See :mod:`sae1n.sae.trainer` for the outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig

from sae1n import distributed as dist
from sae1n.errors import ConfigError, Sae1nError
from sae1n.sae.config import check_sae_config
from sae1n.sae.data import TrainingData, batch_rows, epoch_permutation, prepare_data
from sae1n.sae.step import default_threads, make_optimizer, train_step
from sae1n.sae.trainer import RESUME_FILE, SAETrainer
from sae1n.utils import resolve_device

__all__ = [
    "RESUME_FILE",
    "TrainingData",
    "batch_rows",
    "epoch_permutation",
    "make_optimizer",
    "prepare_data",
    "train_from_args",
    "train_sae",
    "train_step",
]


def train_sae(cfg: DictConfig, *, callbacks: Sequence[Callable[[int], None]] = ()) -> Path:
    """Train the SAE(s) of ``cfg`` (an ``exp`` config, see
    :func:`sae1n.sae.config.load_sae_config`); return the experiment folder.

    ``callbacks`` are called with the global step after every step (a
    progress hook; raising ``KeyboardInterrupt`` there stops training after
    saving a resumable state).

    Under ``torchrun`` (or inside an existing process group) every process
    trains on its share of each global batch and the result equals a
    one-process run (see :mod:`sae1n.sae.distributed`); rank 0 writes the outputs.
    """
    settings = check_sae_config(cfg)
    if settings.compat == "paper":
        from sae1n.sae.paper_exact import train_sae_paper

        return train_sae_paper(cfg, callbacks=callbacks)
    if settings.sae.dtype != "float32":
        raise ConfigError(f"sae.dtype={settings.sae.dtype} is not supported; use float32")
    device = resolve_device(settings.sae.device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"sae.device={device} but CUDA is not available; use sae.device=auto or cpu"
        )
    threads = settings.training.num_threads
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(int(threads) if threads else default_threads(device))
    try:
        with dist.session():
            return SAETrainer(cfg, dist.rank_device(device), callbacks).fit()
    finally:
        torch.set_num_threads(previous_threads)


def train_from_args(exp: str | None, overrides: Sequence[str]) -> Path:
    """``sae1n train-sae exp=<name> key=value ...``."""
    from sae1n.sae.config import load_sae_config

    if not exp:
        from sae1n.configs import available_experiments

        raise Sae1nError(
            f"give exp=<name>; known: {', '.join(available_experiments('sae')) or 'none'}"
        )
    return train_sae(load_sae_config(exp, overrides))
