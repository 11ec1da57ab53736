"""The paper's TopK / BatchTopK SAE (``sae.py`` of the paper's code) for
``compat=paper``: its parameter layout, init (with the generator draws before
it), forward, threshold / dead-counter updates and losses."""

from __future__ import annotations

import random
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from sae1n.errors import ConfigError

PAPER_MODEL_TYPES = ("BatchTopKSAE", "TopKSAE")


class PaperSAE(nn.Module):
    """The paper's TopK / BatchTopK SAE (``sae.py``), with its exact parameter
    layout, init, forward, state updates and losses.

    ``num_batches_not_active`` is a plain float32 attribute, not a buffer, as
    in the paper, so it is absent from the state dict.
    """

    def __init__(self, sae_cfg: Mapping, generator: torch.Generator | None = None):
        super().__init__()
        self.model_type = _paper_model_type(sae_cfg.get("model_type", "BatchTopKSAE"))
        self.act_size = int(sae_cfg["act_size"])
        self.dict_size = int(sae_cfg["dict_size"])
        self.top_k = int(sae_cfg["top_k"])
        self.top_k_aux = int(sae_cfg["top_k_aux"])
        self.aux_penalty = float(sae_cfg["aux_penalty"])
        self.n_batches_to_dead = int(sae_cfg["n_batches_to_dead"])
        self.l1_coeff = float(sae_cfg.get("l1_coeff") or 0.0)
        self.input_unit_norm = bool(sae_cfg.get("input_unit_norm", False))
        self.threshold_lr = float(sae_cfg.get("threshold_lr", 0.01) or 0.01)
        d, f = self.act_size, self.dict_size
        # parameter order is the paper's (and Adam's)
        self.b_dec = nn.Parameter(torch.zeros(d))
        self.b_enc = nn.Parameter(torch.zeros(f))
        self.W_enc = nn.Parameter(nn.init.kaiming_uniform_(torch.empty(d, f), generator=generator))
        self.W_dec = nn.Parameter(nn.init.kaiming_uniform_(torch.empty(f, d), generator=generator))
        self.W_dec.data[:] = self.W_enc.t().data
        self.W_dec.data[:] = self.W_dec / self.W_dec.norm(dim=-1, keepdim=True)
        self.num_batches_not_active = torch.zeros(f)
        if self.model_type == "BatchTopKSAE":
            self.register_buffer("threshold", torch.tensor(0.0))

    def _apply(self, fn, *args, **kwargs):  # keep the plain attribute on the model's device
        out = super()._apply(fn, *args, **kwargs)
        self.num_batches_not_active = fn(self.num_batches_not_active)
        return out

    def preprocess_input(self, x: torch.Tensor):
        if self.input_unit_norm:
            x_mean = x.mean(dim=-1, keepdim=True)
            x = x - x_mean
            x_std = x.std(dim=-1, keepdim=True)
            return x / (x_std + 1e-5), x_mean, x_std
        return x, None, None

    def _select(self, acts: torch.Tensor) -> torch.Tensor:
        if self.model_type == "TopKSAE":
            top = torch.topk(acts, self.top_k, dim=-1)
            return torch.zeros_like(acts).scatter(-1, top.indices, top.values)
        if self.training:
            flat = acts.flatten()
            top = torch.topk(flat, self.top_k * acts.shape[0], dim=-1)
            return torch.zeros_like(flat).scatter(-1, top.indices, top.values).reshape(acts.shape)
        return torch.where(acts > self.threshold, acts, torch.zeros_like(acts))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Codes with the current mode's rule; updates nothing (``save_sae_features``)."""
        x, _, _ = self.preprocess_input(x)
        acts = F.relu((x - self.b_dec) @ self.W_enc)
        return self._select(acts)

    @torch.no_grad()
    def _update_state(self, acts_topk: torch.Tensor) -> None:
        if self.model_type == "BatchTopKSAE":
            positive = acts_topk > 0
            if positive.any():
                min_positive = acts_topk[positive].min()
                lr = self.threshold_lr
                self.threshold = (1 - lr) * self.threshold + lr * min_positive
        col = acts_topk.sum(0)
        self.num_batches_not_active += (col == 0).float()
        self.num_batches_not_active[col > 0] = 0

    def forward(self, x: torch.Tensor) -> dict:
        """The paper's loss dict; updates threshold and dead counters in any mode."""
        x, _x_mean, _x_std = self.preprocess_input(x)
        acts = F.relu((x - self.b_dec) @ self.W_enc)
        acts_topk = self._select(acts)
        x_rec = acts_topk @ self.W_dec + self.b_dec
        self._update_state(acts_topk)
        l2_loss = (x_rec.float() - x.float()).pow(2).mean()
        l1_norm = acts_topk.float().abs().sum(-1).mean()
        l1_loss = self.l1_coeff * l1_norm
        l0_norm = (acts_topk > 0).float().sum(-1).mean()
        aux_loss = self._aux_loss(x, x_rec, acts)
        loss = l2_loss + l1_loss + aux_loss
        return {
            "loss": loss,
            "l2_loss": l2_loss,
            "l1_loss": l1_loss,
            "aux_loss": aux_loss,
            "l0_norm": l0_norm,
            "l1_norm": l1_norm,
            "num_dead_features": (self.num_batches_not_active > self.n_batches_to_dead).sum(),
            "feature_acts": acts_topk,
        }

    def _aux_loss(self, x, x_rec, acts):
        dead = self.num_batches_not_active >= self.n_batches_to_dead
        n_dead = int(dead.sum())
        if n_dead == 0:
            return torch.tensor(0, dtype=x.dtype, device=x.device)
        residual = x.float() - x_rec.float()
        acts_dead = acts[:, dead]
        top = torch.topk(acts_dead, min(self.top_k_aux, n_dead), dim=-1)
        acts_aux = torch.zeros_like(acts_dead).scatter(-1, top.indices, top.values)
        x_rec_aux = acts_aux @ self.W_dec[dead]
        return self.aux_penalty * (x_rec_aux.float() - residual.float()).pow(2).mean()

    @torch.no_grad()
    def make_decoder_weights_and_grad_unit_norm(self) -> None:
        """Project the decoder gradient onto the rows' tangent space, renormalise the rows."""
        w_normed = self.W_dec / self.W_dec.norm(dim=-1, keepdim=True)
        if self.W_dec.grad is not None:
            proj = (self.W_dec.grad * w_normed).sum(-1, keepdim=True) * w_normed
            self.W_dec.grad -= proj
        self.W_dec.data = w_normed


def _paper_model_type(name) -> str:
    from sae1n.sae.model_config import canonical_model_type

    t = canonical_model_type(str(name))
    if t not in PAPER_MODEL_TYPES:
        raise ConfigError(
            f"compat=paper supports sae.model_type {' / '.join(PAPER_MODEL_TYPES)}, got {t}",
            "use sae.model_type=BatchTopKSAE or TopKSAE, or drop compat=paper",
        )
    return t


def build_paper_sae(sae_cfg: Mapping, seed: int | None = None) -> PaperSAE:
    """The paper's SAE as ``main.py`` builds it after ``seed_everything(seed)``:
    two generator draws (the DataLoader iterators), then the model."""
    if seed is not None:
        _seed_all(seed)
        for _ in range(2):
            torch.empty((), dtype=torch.int64).random_()
    return PaperSAE(sae_cfg)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)

