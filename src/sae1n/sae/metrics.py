"""Reconstruction and sparsity metrics of an SAE over a set of batches."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from sae1n.sae.models import BaseSAE

LOSS_KEYS = ("loss", "l2_loss", "l1_loss", "aux_loss", "l0_norm", "l1_norm")

# firing-frequency histogram: fraction of latents whose share of rows with a
# positive activation falls in each bin (``never`` = dead on these rows)
FREQ_BIN_EDGES = (1e-4, 1e-3, 1e-2, 1e-1)
FREQ_BIN_NAMES = ("never", "lt_1e-4", "1e-4_1e-3", "1e-3_1e-2", "1e-2_1e-1", "ge_1e-1")


def frequency_histogram(fired: torch.Tensor, n_rows: int) -> dict[str, float]:
    """``{bin name: fraction of latents}`` from per-latent fired counts."""
    fired = fired.double()
    freq = fired / max(int(n_rows), 1)
    f = fired.numel()
    out = {"never": float((fired == 0).sum()) / f}
    lo = 0.0
    names = FREQ_BIN_NAMES[1:]
    for name, hi in zip(names, (*FREQ_BIN_EDGES, float("inf"))):
        inside = (fired > 0) & (freq >= lo) & (freq < hi)
        out[name] = float(inside.sum()) / f
        lo = hi
    return out


def fired_counts(out: dict, dict_size: int) -> torch.Tensor:
    """Per-latent number of rows with a positive activation in one forward output."""
    if "codes" in out:
        return torch.bincount(out["codes"].cols[out["acts"] > 0], minlength=dict_size)
    return (out["feature_acts"] > 0).sum(0)


class MetricAccumulator:
    """Token-weighted sums of the loss terms plus what FVU and latent
    frequencies need; :meth:`result` turns them into numbers."""

    def __init__(self, dict_size: int, device):
        self.dict_size = dict_size
        self.n = 0
        self.sums = {k: torch.zeros((), dtype=torch.float64, device=device) for k in LOSS_KEYS}
        self.sq_err = torch.zeros((), dtype=torch.float64, device=device)
        self.x_sum = None
        self.x_sq = torch.zeros((), dtype=torch.float64, device=device)
        self.fired = torch.zeros(dict_size, dtype=torch.float64, device=device)

    @torch.no_grad()
    def add(self, out: dict) -> None:
        x_in = out["x_in"].double()
        b = x_in.shape[0]
        self.n += b
        for k in LOSS_KEYS:
            self.sums[k] += out[k].detach().double() * b
        self.sq_err += out["l2_loss"].detach().double() * x_in.numel()
        xs = x_in.sum(0)
        self.x_sum = xs if self.x_sum is None else self.x_sum + xs
        self.x_sq += x_in.pow(2).sum()
        self.fired += fired_counts(out, self.dict_size).double()

    def result(self, dense_latent_freq: float = 0.1) -> dict[str, float]:
        """Means of the loss terms, ``mse``, ``fvu`` (about the mean),
        ``explained_variance``, ``dead_frac`` (never fired), ``dense_frac``
        (fired on more than ``dense_latent_freq`` of rows)."""
        if self.n == 0:
            return {}
        n = self.n
        out = {k: float(v) / n for k, v in self.sums.items()}
        d = self.x_sum.numel()
        total_var = float(self.x_sq) - float((self.x_sum.pow(2)).sum()) / n
        sq = float(self.sq_err)
        out["mse"] = sq / (n * d)
        out["fvu"] = sq / total_var if total_var > 0 else float("nan")
        out["explained_variance"] = 1.0 - out["fvu"]
        freq = self.fired / n
        out["dead_frac"] = float((self.fired == 0).double().mean())
        out["dense_frac"] = float((freq > dense_latent_freq).double().mean())
        for name, v in frequency_histogram(self.fired, n).items():
            out[f"freq_{name}"] = v
        out["n_tokens"] = n
        return out


@torch.no_grad()
def evaluate(
    model: BaseSAE,
    batches: Iterable[torch.Tensor],
    dense_latent_freq: float = 0.1,
    *,
    reduce: Callable[[MetricAccumulator], None] | None = None,
) -> dict[str, float]:
    """Metrics of ``model`` in eval mode over ``batches`` (restores its mode).

    Statistics do not change unless the model is in paper-compatible mode.
    ``reduce`` may combine the sums with other processes' before the result
    (each evaluated a share of the rows)."""
    was_training = model.training
    model.eval()
    acc = MetricAccumulator(model.dict_size, model.W_dec.device)
    try:
        for x in batches:
            acc.add(model(x))
    finally:
        model.train(was_training)
    if reduce is not None:
        reduce(acc)
    res = acc.result(dense_latent_freq)
    cfg = model.cfg
    res["dead_frac_train"] = float(
        (model.num_batches_not_active >= cfg.n_batches_to_dead).double().mean()
    )
    if hasattr(model, "threshold"):
        res["threshold"] = float(model.threshold)
    return res


def batch_fvu(out: dict) -> float:
    """FVU of one batch about its own mean (for the progress bar)."""
    x_in = out["x_in"]
    var = float((x_in - x_in.mean(0)).pow(2).sum())
    return float(out["l2_loss"].detach()) * x_in.numel() / var if var > 0 else float("nan")
