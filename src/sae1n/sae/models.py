"""Sparse autoencoders: BatchTopK (default), TopK, ReLU+L1 ("vanilla"), JumpReLU,
and Matryoshka BatchTopK (nested prefixes of the dictionary, each trained to
reconstruct; Bussmann et al. 2025).

One file over ~450 lines on purpose: one class hierarchy, the five SAE types
each a few overrides of :class:`BaseSAE`'s encoder, statistics and loss pieces
(their settings, :class:`SAEConfig`, live in :mod:`sae1n.sae.model_config`).

Parameter and buffer names follow the paper's code (``W_enc`` (D, F),
``W_dec`` (F, D), ``b_enc``, ``b_dec``, ``threshold``,
``jumprelu.log_threshold``) so its ``sae_best.pt`` state dicts load as is.

Shared behaviour: the decoder bias is subtracted before encoding, decoder
rows are kept at unit norm (the gradient component parallel to each row is
removed before the optimiser step), an AuxK loss reconstructs the residual
from latents dead for ``n_batches_to_dead`` batches, optional per-row input
normalisation.

Two defects of the paper's code are fixed, each with a switch restoring it:

* ``paper_compat_update_in_eval``: the paper updates the BatchTopK threshold
  and the dead-latent counters in every forward pass, so validation changes
  the model. Here they update only in training mode.
* ``paper_compat_no_b_enc``: the paper's TopK/BatchTopK encoders never add
  ``b_enc``. Here they do.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from sae1n.sae import kernels
from sae1n.sae.model_config import (
    MODEL_TYPES,
    SAEConfig,
    canonical_model_type,
    default_group_sizes,
)

__all__ = [
    "MODEL_TYPES", "BaseSAE", "BatchTopKSAE", "JumpReLU", "JumpReLUSAE", "MatryoshkaBatchTopKSAE",
    "SAEConfig", "TopKSAE", "VanillaSAE", "build_sae", "canonical_model_type", "default_group_sizes",
]


class BaseSAE(nn.Module):
    """Parameters, normalisation, decoder-norm upkeep and the statistics shared
    by every SAE; subclasses define the activation."""

    supports_sparse_kernels = False
    # set by a multi-process trainer (sae1n.sae.distributed.BatchStatsSync): makes the
    # batch-wide selection and statistics global over the ranks in training
    batch_sync = None

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        self.cfg = cfg
        d, f = cfg.act_size, cfg.dict_size
        self.b_dec = nn.Parameter(torch.zeros(d))
        self.b_enc = nn.Parameter(torch.zeros(f))
        w_enc = nn.init.kaiming_uniform_(torch.empty(d, f))
        # stored column-major: the sparse kernels build its gradient as (F, D) rows
        self.W_enc = nn.Parameter(torch.empty(f, d).t().copy_(w_enc))
        # drawn only to consume the RNG as the paper does, then tied to W_enc
        self.W_dec = nn.Parameter(nn.init.kaiming_uniform_(torch.empty(f, d)))
        with torch.no_grad():
            self.W_dec.copy_(self.W_enc.t())
            self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True))
        self.register_buffer("num_batches_not_active", torch.zeros(f))
        self._workspace: torch.Tensor | None = None

    # ------------------------------------------------------------------ sizes / flags
    @property
    def act_size(self) -> int:
        return self.cfg.act_size

    @property
    def dict_size(self) -> int:
        return self.cfg.dict_size

    @property
    def uses_b_enc(self) -> bool:
        return True

    @property
    def stats_update_enabled(self) -> bool:
        """Threshold / dead counters update in training (and, in paper-compatible
        mode, also in eval)."""
        return self.training or self.cfg.paper_compat_update_in_eval

    # ------------------------------------------------------------------ input normalisation
    def preprocess_input(self, x: torch.Tensor):
        if self.cfg.input_unit_norm:
            x_mean = x.mean(dim=-1, keepdim=True)
            x = x - x_mean
            x_std = x.std(dim=-1, keepdim=True)
            return x / (x_std + 1e-5), x_mean, x_std
        return x, None, None

    def postprocess_output(self, x_rec: torch.Tensor, x_mean, x_std) -> torch.Tensor:
        if self.cfg.input_unit_norm and x_mean is not None:
            return x_rec * x_std + x_mean
        return x_rec

    # ------------------------------------------------------------------ encoder
    def encoder_preacts(self, x_cent: torch.Tensor, *, workspace: bool = False) -> torch.Tensor:
        """(x - b_dec) @ W_enc (+ b_enc); with ``workspace`` the result goes into a
        reused buffer (valid until the next call) and carries no autograd graph."""
        w = self.W_enc.detach() if workspace else self.W_enc
        if not workspace:
            pre = x_cent @ w
            return pre + self.b_enc if self.uses_b_enc else pre
        n = x_cent.shape[0] * self.dict_size
        buf = self._workspace
        if (
            buf is None
            or buf.numel() < n
            or buf.device != x_cent.device
            or buf.dtype != x_cent.dtype
        ):
            buf = self._workspace = torch.empty(n, dtype=x_cent.dtype, device=x_cent.device)
        out = buf[:n].view(x_cent.shape[0], self.dict_size)
        with kernels.all_threads():
            if self.uses_b_enc:
                return torch.addmm(self.b_enc.detach(), x_cent, w, out=out)
            return torch.mm(x_cent, w, out=out)

    # ------------------------------------------------------------------ statistics (one place)
    @torch.no_grad()
    def update_stats(
        self, cols: torch.Tensor, vals: torch.Tensor, *, positive: bool = False
    ) -> None:
        """Update dead-latent counters (and subclass statistics) from the active
        entries of one batch, given as column indices and activation values
        (``positive``: all values are known to be > 0)."""
        if positive:
            fired = torch.zeros(self.dict_size, dtype=torch.bool, device=vals.device).index_fill_(
                0, cols, True
            )
        else:  # no boolean indexing: no device sync
            fired = (
                torch.zeros(self.dict_size, dtype=vals.dtype, device=vals.device).index_add_(
                    0, cols, (vals > 0).to(vals.dtype)
                )
                > 0
            )
        if self.batch_sync is not None and self.training:
            fired = self.batch_sync.any(fired)
        self.num_batches_not_active.add_(1).masked_fill_(fired, 0)

    @torch.no_grad()
    def update_stats_dense(self, acts: torch.Tensor) -> None:
        """:meth:`update_stats` from a dense (B, F) activation matrix."""
        nz = (acts > 0).nonzero()
        self.update_stats(nz[:, 1], acts[nz[:, 0], nz[:, 1]], positive=True)

    # ------------------------------------------------------------------ dead latents
    def dead_mask(self) -> torch.Tensor:
        """Latents that have not fired for ``n_batches_to_dead`` training batches."""
        return self.num_batches_not_active >= self.cfg.n_batches_to_dead

    # ------------------------------------------------------------------ decoder norm
    @torch.no_grad()
    def remove_parallel_decoder_grad(self) -> None:
        """Remove from each decoder row's gradient its component along the row."""
        grad = self.W_dec.grad
        if grad is None:
            return
        w = self.W_dec
        coef = torch.linalg.vecdot(grad, w) / torch.linalg.vector_norm(w, dim=1).square()
        grad.addcmul_(w, coef.unsqueeze(1), value=-1.0)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale decoder rows to unit norm."""
        self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True))

    def make_decoder_weights_and_grad_unit_norm(self) -> None:
        """The paper's name: project the gradient, then normalise the rows."""
        self.remove_parallel_decoder_grad()
        self.normalize_decoder()

    # ------------------------------------------------------------------ API
    def forward(self, x: torch.Tensor) -> dict:
        """Loss dict (``loss``, ``l2_loss``, ``l1_loss``, ``aux_loss``,
        ``l0_norm``, ``l1_norm``, ``num_dead_features``, ``x_in``, ...)."""
        if self.supports_sparse_kernels and self.cfg.fast_kernels:
            return kernels.sparse_sae_loss(self, x)
        return self.forward_dense(x)

    def forward_dense(self, x: torch.Tensor) -> dict:
        raise NotImplementedError

    def activations(self, pre: torch.Tensor) -> torch.Tensor:
        """Dense inference activations from pre-activations (no statistics)."""
        raise NotImplementedError

    def select_codes(self, pre: torch.Tensor, *, sync_free: bool = False) -> kernels.SparseCodes:
        """Active entries of ``pre`` for the current mode (no statistics)."""
        acts = self.activations(pre)
        flat = (acts > 0).reshape(-1).nonzero().squeeze(1)
        codes = kernels.SparseCodes.from_flat(flat, pre, sort=False)
        return codes

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Dense (B, F) codes with the inference rule; never updates statistics."""
        x_in, _, _ = self.preprocess_input(x)
        return self.activations(self.encoder_preacts(x_in - self.b_dec))

    @torch.no_grad()
    def encode_sparse(self, x: torch.Tensor, chunk_rows: int | None = None):
        """Codes as CSR parts ``(indptr, indices, values)`` (int64, int64, float32),
        computed in row chunks to bound memory; never updates statistics."""
        was_training = self.training
        self.eval()
        try:
            n = x.shape[0]
            chunk_rows = chunk_rows or max(1, (1 << 24) // self.dict_size)
            counts, idx_parts, val_parts = [], [], []
            for s in range(0, n, chunk_rows):
                x_in, _, _ = self.preprocess_input(x[s : s + chunk_rows])
                pre = self.encoder_preacts(x_in - self.b_dec, workspace=True)
                codes = kernels.positive_only(self.select_codes(pre))
                counts.append(torch.bincount(codes.rows, minlength=pre.shape[0]))
                idx_parts.append(codes.cols)
                val_parts.append(codes.vals)
            indptr = torch.zeros(n + 1, dtype=torch.int64, device=x.device)
            if n:
                torch.cumsum(torch.cat(counts), 0, out=indptr[1:])
            indices = (
                torch.cat(idx_parts)
                if idx_parts
                else torch.zeros(0, dtype=torch.int64, device=x.device)
            )
            values = (
                torch.cat(val_parts)
                if val_parts
                else torch.zeros(0, dtype=x.dtype, device=x.device)
            )
            return indptr, indices, values
        finally:
            self.train(was_training)

    def decode(self, acts: torch.Tensor, x_mean=None, x_std=None) -> torch.Tensor:
        """Reconstruction from dense codes."""
        return self.postprocess_output(acts @ self.W_dec + self.b_dec, x_mean, x_std)

    # ------------------------------------------------------------------ shared loss pieces
    def _aux_loss_dense(self, x_in, x_rec, acts):
        cfg = self.cfg
        dead = self.num_batches_not_active >= cfg.n_batches_to_dead
        n_dead = int(dead.sum())
        if n_dead == 0 or cfg.top_k_aux == 0 or cfg.aux_penalty == 0:
            return torch.zeros((), dtype=x_in.dtype, device=x_in.device)
        residual = x_in.float() - x_rec.float()
        sub = acts[:, dead]
        top = torch.topk(sub, min(cfg.top_k_aux, n_dead), dim=-1)
        acts_aux = torch.zeros_like(sub).scatter(-1, top.indices, top.values)
        x_aux = acts_aux @ self.W_dec[dead]
        return cfg.aux_penalty * (x_aux.float() - residual).pow(2).mean()

    def _loss_dict(self, x_in, x_rec, acts_sparse, aux_loss, x_mean, x_std, l1_source=None):
        cfg = self.cfg
        l2_loss = (x_rec.float() - x_in.float()).pow(2).mean()
        src = acts_sparse if l1_source is None else l1_source
        l1_norm = src.float().abs().sum(-1).mean()
        l1_loss = cfg.l1_coeff * l1_norm
        l0_norm = (acts_sparse > 0).float().sum(-1).mean()
        return {
            "loss": l2_loss + l1_loss + aux_loss,
            "l2_loss": l2_loss,
            "l1_loss": l1_loss,
            "aux_loss": aux_loss,
            "l0_norm": l0_norm,
            "l1_norm": l1_norm,
            "num_dead_features": (self.num_batches_not_active > cfg.n_batches_to_dead).sum(),
            "x_in": x_in,
            "x_rec": x_rec,
            "x_mean": x_mean,
            "x_std": x_std,
            "feature_acts": acts_sparse,
        }


class TopKSAE(BaseSAE):
    """Exactly ``top_k`` active latents per row."""

    supports_sparse_kernels = True

    @property
    def uses_b_enc(self) -> bool:
        return not self.cfg.paper_compat_no_b_enc

    def activations(self, pre):
        acts = F.relu(pre)
        top = torch.topk(acts, min(self.cfg.top_k, self.dict_size), dim=-1)
        return torch.zeros_like(acts).scatter(-1, top.indices, top.values)

    def select_codes(self, pre, *, sync_free=False):
        return kernels.row_topk_codes(pre, self.cfg.top_k, sync_free=sync_free)

    def forward_dense(self, x):
        x_in, x_mean, x_std = self.preprocess_input(x)
        acts = F.relu(self.encoder_preacts(x_in - self.b_dec))
        top = torch.topk(acts, min(self.cfg.top_k, self.dict_size), dim=-1)
        acts_topk = torch.zeros_like(acts).scatter(-1, top.indices, top.values)
        x_rec = acts_topk @ self.W_dec + self.b_dec
        if self.stats_update_enabled:
            self.update_stats_dense(acts_topk.detach())
        aux = self._aux_loss_dense(x_in, x_rec, acts)
        return self._loss_dict(x_in, x_rec, acts_topk, aux, x_mean, x_std)


class BatchTopKSAE(TopKSAE):
    """``top_k`` x batch latents over the whole batch in training; at inference
    a learned threshold (EMA of the smallest kept activation)."""

    def __init__(self, cfg: SAEConfig):
        super().__init__(cfg)
        self.register_buffer("threshold", torch.tensor(0.0))
        self._select_hint: float | None = None

    def activations(self, pre):
        acts = F.relu(pre)
        return torch.where(acts > self.threshold, acts, torch.zeros_like(acts))

    def select_codes(self, pre, *, sync_free=False):
        if self.training and self.batch_sync is not None:
            codes, self._select_hint = self.batch_sync.batch_topk_codes(
                pre, self.cfg.top_k, self._select_hint, sync_free=sync_free
            )
            return codes
        if self.training:
            codes, self._select_hint = kernels.batch_topk_codes(
                pre, self.cfg.top_k * pre.shape[0], self._select_hint, sync_free=sync_free
            )
            return codes
        return kernels.threshold_codes(pre, self.threshold)

    @torch.no_grad()
    def update_stats(self, cols, vals, *, positive=False):
        super().update_stats(cols, vals, positive=positive)
        sync = self.batch_sync if self.training else None
        if vals.numel() == 0 and sync is None:
            return
        inf = torch.full((), float("inf"), dtype=vals.dtype, device=vals.device)
        pos = vals if positive else torch.where(vals > 0, vals, inf)
        lr = self.cfg.threshold_lr
        m = pos.min() if pos.numel() else inf
        if sync is not None:  # every rank takes part, even with no entries
            m = sync.min(m)
        self.threshold.copy_(
            torch.where(torch.isfinite(m), (1 - lr) * self.threshold + lr * m, self.threshold)
        )

    def _selected_dense(self, acts: torch.Tensor) -> torch.Tensor:
        """The dense (B, F) activations kept by the current mode's rule."""
        if self.training and self.batch_sync is not None:
            codes = self.select_codes(acts.detach())  # the rank-global selection
            keep = torch.zeros_like(acts).index_put_(
                (codes.rows, codes.cols), (codes.vals > 0).to(acts.dtype)
            )
            acts_topk = acts * keep
        elif self.training:
            flat = acts.flatten()
            top = torch.topk(flat, min(self.cfg.top_k * acts.shape[0], flat.numel()), dim=-1)
            acts_topk = (
                torch.zeros_like(flat).scatter(-1, top.indices, top.values).reshape(acts.shape)
            )
        else:
            acts_topk = torch.where(acts > self.threshold, acts, torch.zeros_like(acts))
        return acts_topk

    def forward_dense(self, x):
        x_in, x_mean, x_std = self.preprocess_input(x)
        acts = F.relu(self.encoder_preacts(x_in - self.b_dec))
        acts_topk = self._selected_dense(acts)
        x_rec = acts_topk @ self.W_dec + self.b_dec
        if self.stats_update_enabled:
            self.update_stats_dense(acts_topk.detach())
        aux = self._aux_loss_dense(x_in, x_rec, acts)
        out = self._loss_dict(x_in, x_rec, acts_topk, aux, x_mean, x_std)
        out["threshold"] = self.threshold
        return out


class MatryoshkaBatchTopKSAE(BatchTopKSAE):
    """BatchTopK whose dictionary is cut into nested groups (``group_sizes``):
    the latents of the first group alone, of the first two, ... and of all
    reconstruct the input, and the training loss is the mean of those
    prefixes' squared errors (plus AuxK on the full reconstruction's
    residual). The selection, threshold, kernels and encoding are
    BatchTopK's; early groups learn the coarse, frequent features.

    ``l2_loss`` (and FVU) in the outputs are the full reconstruction's;
    ``loss`` holds the mean over prefixes."""

    def __init__(self, cfg: SAEConfig):
        super().__init__(cfg)
        ends, total = [], 0
        for g in cfg.group_sizes:
            total += int(g)
            ends.append(total)
        self.group_ends = tuple(ends)

    def group_of(self, latents: torch.Tensor) -> torch.Tensor:
        """The group index of each latent index."""
        ends = torch.tensor(self.group_ends, device=latents.device, dtype=latents.dtype)
        return torch.bucketize(latents, ends, right=True)

    @torch.no_grad()
    def prefix_reconstructions(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Inference reconstructions of ``x`` from the first 1, 2, ... groups."""
        x_in, x_mean, x_std = self.preprocess_input(x)
        acts = self.encode(x)
        out, rec, start = [], self.b_dec.expand_as(x_in), 0
        for end in self.group_ends:
            rec = rec + acts[:, start:end] @ self.W_dec[start:end]
            out.append(self.postprocess_output(rec, x_mean, x_std))
            start = end
        return out

    def forward_dense(self, x):
        x_in, x_mean, x_std = self.preprocess_input(x)
        acts = F.relu(self.encoder_preacts(x_in - self.b_dec))
        acts_topk = self._selected_dense(acts)
        x_rec, start, prefix_l2 = self.b_dec, 0, []
        for end in self.group_ends:
            x_rec = x_rec + acts_topk[:, start:end] @ self.W_dec[start:end]
            prefix_l2.append((x_rec.float() - x_in.float()).pow(2).mean())
            start = end
        if self.stats_update_enabled:
            self.update_stats_dense(acts_topk.detach())
        aux = self._aux_loss_dense(x_in, x_rec, acts)
        out = self._loss_dict(x_in, x_rec, acts_topk, aux, x_mean, x_std)
        train_l2 = torch.stack(prefix_l2).mean()
        out["loss"] = train_l2 + out["l1_loss"] + aux
        out["prefix_l2_loss"] = torch.stack(prefix_l2).detach()
        out["threshold"] = self.threshold
        return out


class VanillaSAE(BaseSAE):
    """ReLU latents with an L1 penalty (``l1_coeff``)."""

    def activations(self, pre):
        return F.relu(pre)

    def forward_dense(self, x):
        x_in, x_mean, x_std = self.preprocess_input(x)
        acts = F.relu(self.encoder_preacts(x_in - self.b_dec))
        x_rec = acts @ self.W_dec + self.b_dec
        if self.stats_update_enabled:
            self.update_stats_dense(acts.detach())
        zero = torch.zeros((), dtype=x_in.dtype, device=x_in.device)
        return self._loss_dict(x_in, x_rec, acts, zero, x_mean, x_std)


def _rectangle(u: torch.Tensor) -> torch.Tensor:
    """Pseudo-derivative window: 1 on (-1/2, 1/2), else 0."""
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLUFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, log_threshold, bandwidth: float):
        ctx.save_for_backward(x, log_threshold)
        ctx.bandwidth = bandwidth
        return x * (x > torch.exp(log_threshold)).to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        x, log_threshold = ctx.saved_tensors
        thr = torch.exp(log_threshold)
        win = _rectangle((x - thr) / ctx.bandwidth)
        g_x = (x > thr).to(x.dtype) * g
        g_thr = (-(thr / ctx.bandwidth) * win * g).sum(0) if ctx.needs_input_grad[1] else None
        return g_x, g_thr, None


class _StepFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, log_threshold, bandwidth: float):
        ctx.save_for_backward(x, log_threshold)
        ctx.bandwidth = bandwidth
        return (x > torch.exp(log_threshold)).to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        x, log_threshold = ctx.saved_tensors
        thr = torch.exp(log_threshold)
        win = _rectangle((x - thr) / ctx.bandwidth)
        # d/d(log thr) = thr * d/d(thr) (the paper's code omits the thr factor here)
        g_thr = (-(thr / ctx.bandwidth) * win * g).sum(0) if ctx.needs_input_grad[1] else None
        return torch.zeros_like(x), g_thr, None


class JumpReLU(nn.Module):
    """Per-latent learned threshold ``exp(log_threshold)``."""

    def __init__(self, size: int, bandwidth: float):
        super().__init__()
        self.log_threshold = nn.Parameter(torch.zeros(size))
        self.bandwidth = bandwidth

    def forward(self, x):
        return _JumpReLUFn.apply(x, self.log_threshold, self.bandwidth)


class JumpReLUSAE(BaseSAE):
    """JumpReLU latents with an L0 penalty (``l1_coeff`` x L0, straight-through
    estimator of width ``bandwidth``)."""

    def __init__(self, cfg: SAEConfig):
        super().__init__(cfg)
        self.jumprelu = JumpReLU(cfg.dict_size, cfg.bandwidth)

    def activations(self, pre):
        pre = F.relu(pre)
        return pre * (pre > torch.exp(self.jumprelu.log_threshold)).to(pre.dtype)

    def forward_dense(self, x):
        x_in, x_mean, x_std = self.preprocess_input(x)
        acts = self.jumprelu(F.relu(self.encoder_preacts(x_in - self.b_dec)))
        x_rec = acts @ self.W_dec + self.b_dec
        if self.stats_update_enabled:
            self.update_stats_dense(acts.detach())
        l0 = _StepFn.apply(acts, self.jumprelu.log_threshold, self.cfg.bandwidth).sum(-1).mean()
        zero = torch.zeros((), dtype=x_in.dtype, device=x_in.device)
        out = self._loss_dict(x_in, x_rec, acts, zero, x_mean, x_std)
        out["l1_loss"] = self.cfg.l1_coeff * l0
        out["l1_norm"] = l0
        out["loss"] = out["l2_loss"] + out["l1_loss"]
        return out


_CLASSES = {
    "BatchTopKSAE": BatchTopKSAE,
    "TopKSAE": TopKSAE,
    "VanillaSAE": VanillaSAE,
    "JumpReLUSAE": JumpReLUSAE,
    "MatryoshkaBatchTopKSAE": MatryoshkaBatchTopKSAE,
}


def build_sae(cfg: SAEConfig | Mapping) -> BaseSAE:
    """Build an SAE from an :class:`SAEConfig` or an ``sae`` config mapping."""
    if not isinstance(cfg, SAEConfig):
        cfg = SAEConfig.from_mapping(cfg)
    else:
        cfg.validate()
    return _CLASSES[cfg.model_type](cfg)
