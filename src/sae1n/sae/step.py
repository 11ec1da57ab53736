"""One SAE optimisation step, the optimiser and the running loss sums.

:func:`train_step` is what every trainer calls per batch (sae1n's
:class:`~sae1n.sae.trainer.SAETrainer`, the benchmarks and the tests that
compare it with the paper's loop).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from sae1n.sae.config import training_settings
from sae1n.sae.distributed import StatsSync
from sae1n.sae.models import BaseSAE
from sae1n.sae.threads import few_threads


def train_step(
    model: BaseSAE,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    max_grad_norm: float,
    *,
    after_backward: Callable[[BaseSAE], None] | None = None,
) -> dict:
    """One optimisation step: loss (statistics update inside the forward),
    backward, optional hook (e.g. a gradient all-reduce), clipping, removal of
    the decoder-parallel gradient, optimiser step, decoder renormalisation."""
    model.train()
    out = model(x)
    out["loss"].backward()
    if after_backward is not None:
        after_backward(model)
    with few_threads(enabled=not x.is_cuda):
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        model.remove_parallel_decoder_grad()
        optimizer.step()
        model.normalize_decoder()
        optimizer.zero_grad(set_to_none=True)
    return out


def make_optimizer(model: BaseSAE, training) -> torch.optim.Optimizer:
    """Adam with the configured lr and betas (fused kernel where available);
    ``training`` is :class:`SAETrainingSettings` or a mapping of ``training.*`` keys."""
    training = training_settings(training)
    kw = dict(lr=training.lr, betas=(training.beta1, training.beta2))
    try:
        return torch.optim.Adam(model.parameters(), fused=True, **kw)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(model.parameters(), **kw)


def default_threads(device: str) -> int:
    """Compute threads when ``training.num_threads`` is unset: every core this
    process may use on CPU (the batch loader is one extra thread that mostly
    waits on memory); on CUDA torch's own default."""
    if str(device).startswith("cuda"):
        return torch.get_num_threads()
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)



class TrainSums:
    """Running token-weighted sums of the training loss terms (kept on the
    device: no synchronisation per step)."""

    KEYS = ("loss", "l2_loss", "aux_loss", "l0_norm")

    def __init__(self):
        self.n = 0
        self.sums: dict[str, torch.Tensor] = {}

    def add(self, out: dict) -> None:
        b = out["x_in"].shape[0]
        self.n += b
        for k in self.KEYS:
            v = out[k].detach() * b
            self.sums[k] = self.sums[k] + v if k in self.sums else v

    def reduce(self, sync: StatsSync) -> None:
        """Add the sums of every process."""
        if not sync.distributed:
            return
        zero = torch.zeros((), dtype=torch.float64)
        parts = sync.sum(
            [torch.tensor(float(self.n), dtype=torch.float64)]
            + [self.sums.get(k, zero) for k in self.KEYS]
        )
        self.n = int(round(float(parts[0])))
        self.sums = {k: v for k, v in zip(self.KEYS, parts[1:])} if self.n else {}

    def result(self) -> dict[str, float]:
        return {k: float(v) / self.n for k, v in self.sums.items()} if self.n else {}
