"""Fast, exact sparse paths for TopK / BatchTopK SAEs.

A dense SAE step spends most of its time on work that a k-sparse code makes
unnecessary: the decoder input has only k non-zeros per row, so decoding is a
weighted gather of k decoder rows (``embedding_bag``) and the encoder weight
gradient is only non-zero in the columns of the selected latents. This module
gives:

* selection of the active latents as a :class:`SparseCodes`, exact
  (:mod:`sae1n.sae.sparse_codes`; CPU threads in :mod:`sae1n.sae.threads`);
* :func:`sparse_sae_loss`, the full TopK/BatchTopK loss (MSE + L1 + AuxK)
  as one autograd function whose backward touches only the selected entries
  (SDDMM for the code gradient, ``embedding_bag`` over column-grouped
  entries for the weight gradients, small dense matmuls over the dead
  latents for AuxK) and makes few batch-sized temporaries; its values and
  gradients equal the dense formulation's up to float rounding.

On CPU entries whose activation is not positive are dropped (they contribute
nothing and have zero gradient); on CUDA (``sync_free``) all shapes stay
static so no step waits for the device.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sae1n.sae.sparse_codes import (
    SparseCodes,
    batch_topk_codes,
    positive_only,
    row_topk_codes,
    threshold_codes,
)
from sae1n.sae.threads import all_threads, few_threads

__all__ = [
    "SparseCodes", "all_threads", "batch_topk_codes", "few_threads", "positive_only",
    "row_topk_codes", "sddmm", "sparse_sae_loss", "threshold_codes",
]

# ----------------------------------------------------------------------------- the fused loss


def _embedding_bag_sum(indices, weight, ptr, psw):
    return F.embedding_bag(
        indices, weight, ptr, mode="sum", per_sample_weights=psw, include_last_offset=True
    )


def sddmm(codes: SparseCodes, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(a @ b.T)[rows, cols]`` for the entries of ``codes`` without forming a @ b.T."""
    if codes.nnz == 0:
        return torch.zeros(0, dtype=a.dtype, device=a.device)
    mask = codes.to_csr(torch.zeros(codes.nnz, dtype=a.dtype, device=a.device))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse.sampled_addmm(mask, a, b.t(), beta=0.0).values()


def _sum_of_squares(m: torch.Tensor) -> torch.Tensor:
    """Sum of squares of a (B, D) matrix in one pass, without a temporary
    (row norms keep the float32 rounding error far below a flat dot's)."""
    return torch.linalg.vector_norm(m, dim=1).square().sum()


@dataclass
class _LossPlan:
    """Non-differentiable inputs of :class:`_SparseTopKLosses`."""

    x_in: torch.Tensor
    x_cent: torch.Tensor
    codes: SparseCodes
    top_k_aux: int
    aux_penalty: float
    aux_cols: torch.Tensor | None = None  # dead latents (CPU path)
    aux_mask: torch.Tensor | None = None  # (F,) dead mask over all latents (sync-free path)
    diff: torch.Tensor | None = None  # set by forward: x_rec - x_in (overwritten by backward)
    acts: torch.Tensor | None = None  # set by forward: ReLU of the selected values
    group_ends: tuple[int, ...] | None = None  # Matryoshka: nested prefixes of the dictionary
    group_ids: torch.Tensor | None = None  # set by forward: the group of each entry
    prefix_diffs: list | None = None  # set by forward: x_rec_p - x_in of the prefixes but the last
    prefix_l2: torch.Tensor | None = None  # set by forward: (P,) MSE of each prefix
    full_l2: torch.Tensor | None = None  # set by forward: MSE of the full reconstruction

    @property
    def has_aux(self) -> bool:
        return self.aux_cols is not None or self.aux_mask is not None


class _SparseTopKLosses(torch.autograd.Function):
    """(MSE, mean L1 norm, AuxK) of a TopK/BatchTopK SAE from its selected
    entries, with a hand-written backward that touches only those entries
    (and the dead latents' columns for AuxK).

    MSE = mean((x_rec - x)^2) with x_rec = sum_j acts_j W_dec[j] + b_dec;
    AuxK = aux_penalty * mean((x_aux - (x - x_rec))^2), x_aux from the top
    ``top_k_aux`` dead-latent activations per row (the residual is not
    detached, as in the paper).
    """

    @staticmethod
    def forward(ctx, W_enc, b_enc, b_dec, W_dec, plan: _LossPlan):
        x_in, x_cent, codes = plan.x_in, plan.x_cent, plan.codes
        n, batch = x_in.numel(), x_in.shape[0]
        acts = codes.vals if codes.positive else codes.vals.clamp(min=0)
        plan.acts = acts
        crow = codes.crow()
        if plan.group_ends is None:
            with all_threads():
                diff = _embedding_bag_sum(codes.cols, W_dec, crow, acts)
            diff.sub_(x_cent)  # x_rec - x_in = decoded - (x_in - b_dec)
            l2 = _sum_of_squares(diff) / n
            plan.full_l2 = l2
        else:
            diff, l2 = _prefix_decodes(plan, codes, acts, W_dec, x_cent, n)
        l1_norm = acts.sum() / batch
        aux = torch.zeros((), dtype=x_in.dtype, device=x_in.device)
        err = acts_aux = w_dec_aux = None
        if plan.has_aux:
            if plan.aux_cols is not None:
                w_enc_aux = W_enc.index_select(1, plan.aux_cols)
                w_dec_aux = W_dec.index_select(0, plan.aux_cols)
                b_aux = None if b_enc is None else b_enc.index_select(0, plan.aux_cols)
            else:
                w_enc_aux, w_dec_aux, b_aux = W_enc, W_dec, b_enc
            with all_threads():
                pre = x_cent @ w_enc_aux if b_aux is None else torch.addmm(b_aux, x_cent, w_enc_aux)
            if plan.aux_mask is not None:
                pre.masked_fill_(~plan.aux_mask.unsqueeze(0), float("-inf"))
            k = min(plan.top_k_aux, pre.shape[1])
            if k < pre.shape[1] or plan.aux_mask is not None:
                top = torch.topk(pre, k, dim=1, sorted=False)
                acts_aux = torch.zeros_like(pre).scatter_(1, top.indices, top.values.clamp_(min=0))
            else:
                acts_aux = pre.clamp_(min=0)
            with all_threads():
                err = torch.addmm(diff, acts_aux, w_dec_aux)  # x_aux - residual
            aux = plan.aux_penalty * _sum_of_squares(err) / n
            if plan.aux_mask is not None:  # nothing dead: the paper adds no AuxK term
                aux = aux * plan.aux_mask.any().to(aux.dtype)
        plan.diff = diff
        ctx.plan = plan
        ctx.has_b_enc = b_enc is not None
        ctx.save_for_backward(W_enc, W_dec, acts, diff, err, acts_aux, w_dec_aux)
        return l2, l1_norm, aux

    @staticmethod
    def backward(ctx, g_l2, g_l1, g_aux):
        with few_threads(enabled=not g_l2.is_cuda):
            return _SparseTopKLosses._backward(ctx, g_l2, g_l1, g_aux)

    @staticmethod
    def _backward(ctx, g_l2, g_l1, g_aux):
        W_enc, W_dec, acts, diff, err, acts_aux, w_dec_aux = ctx.saved_tensors
        plan: _LossPlan = ctx.plan
        codes, x_cent = plan.codes, plan.x_cent
        n, batch = diff.numel(), diff.shape[0]
        # d loss / d x_rec (diff is not needed any more); Matryoshka: of the full prefix
        n_prefix = 1 if plan.group_ends is None else len(plan.group_ends)
        grad_rec = diff.mul_(2.0 * g_l2 / (n * n_prefix))
        g_err = None
        if err is not None:
            scale = 2.0 * plan.aux_penalty * g_aux / n
            if plan.aux_mask is not None:
                scale = scale * plan.aux_mask.any().to(scale.dtype)
            g_err = err.mul_(scale)  # err is not needed any more
            grad_rec.add_(g_err)
        if plan.group_ends is None:
            g_acts = sddmm(codes, grad_rec, W_dec)  # serial: its bookkeeping copies outweigh the dots
            suffix = None
        else:  # Matryoshka: an entry of group g feeds the prefixes g..P-1
            suffix = _prefix_grads(plan, grad_rec, 2.0 * g_l2 / (n * len(plan.group_ends)))
            g_acts = torch.zeros(codes.nnz, dtype=grad_rec.dtype, device=grad_rec.device)
            for g, grad_g in enumerate(suffix):
                g_acts = torch.where(plan.group_ids == g, sddmm(codes, grad_g, W_dec), g_acts)
        if g_l1.is_cuda or float(g_l1) != 0.0:  # the paper's default l1_coeff is 0
            g_acts.add_(g_l1 / batch)
        if not codes.positive:
            g_acts.mul_(acts > 0)
        perm, ptr = codes.col_order()
        rows_by_col = codes.rows.index_select(0, perm)
        acts_by_col, g_by_col = acts.index_select(0, perm), g_acts.index_select(0, perm)
        with all_threads():
            if suffix is None:
                g_w_dec = _embedding_bag_sum(rows_by_col, grad_rec, ptr, acts_by_col)
            else:  # each decoder row takes the gradient of its own group's prefixes
                g_w_dec, start = torch.empty_like(W_dec), 0
                for end, grad_g in zip(plan.group_ends, suffix):
                    part = _embedding_bag_sum(rows_by_col, grad_g, ptr, acts_by_col)
                    g_w_dec[start:end] = part[start:end]
                    start = end
            g_w_enc_t = _embedding_bag_sum(rows_by_col, x_cent, ptr, g_by_col)
        col_sum = torch.zeros(W_dec.shape[0], dtype=g_acts.dtype, device=g_acts.device).index_add_(
            0, codes.cols, g_acts
        )
        rec_all = grad_rec if suffix is None else suffix[0]  # b_dec is in every prefix
        g_b_dec = torch.mv(
            rec_all.t(), torch.ones(batch, dtype=rec_all.dtype, device=rec_all.device)
        )
        if err is not None:
            ones = torch.ones(batch, dtype=g_err.dtype, device=g_err.device)
            with all_threads():
                g_pre_aux = (g_err @ w_dec_aux.t()).mul_(acts_aux > 0)
                g_dec_aux = acts_aux.t() @ g_err
                g_enc_aux = g_pre_aux.t() @ x_cent
            if plan.aux_cols is not None:
                g_w_dec.index_add_(0, plan.aux_cols, g_dec_aux)
                g_w_enc_t.index_add_(0, plan.aux_cols, g_enc_aux)
                col_sum.index_add_(0, plan.aux_cols, torch.mv(g_pre_aux.t(), ones))
            else:
                g_w_dec.add_(g_dec_aux)
                g_w_enc_t.add_(g_enc_aux)
                col_sum.add_(torch.mv(g_pre_aux.t(), ones))
        g_b_dec.sub_(W_enc @ col_sum)
        g_b_enc = col_sum if ctx.has_b_enc else None
        return g_w_enc_t.t(), g_b_enc, g_b_dec, g_w_dec, None


def _prefix_decodes(plan: _LossPlan, codes: SparseCodes, acts, W_dec, x_cent, n: int):
    """Matryoshka forward: ``x_rec_p - x_in`` of every prefix of groups; the
    mean of their MSEs; keeps the prefixes' differences for the backward."""
    ends = torch.tensor(plan.group_ends, dtype=codes.cols.dtype, device=codes.cols.device)
    gid = torch.bucketize(codes.cols, ends, right=True)
    plan.group_ids = gid
    crow = codes.crow()
    diffs, running = [], None
    for g in range(len(plan.group_ends)):
        w = torch.where(gid == g, acts, torch.zeros_like(acts))
        with all_threads():
            part = _embedding_bag_sum(codes.cols, W_dec, crow, w)
        running = part.sub_(x_cent) if running is None else running.add_(part)
        diffs.append(running.clone() if g < len(plan.group_ends) - 1 else running)
    plan.prefix_diffs = diffs[:-1]
    plan.prefix_l2 = torch.stack([_sum_of_squares(d) / n for d in diffs])
    plan.full_l2 = plan.prefix_l2[-1]
    return diffs[-1], plan.prefix_l2.mean()


def _prefix_grads(plan: _LossPlan, grad_full: torch.Tensor, scale) -> list[torch.Tensor]:
    """Matryoshka backward: ``G_g`` = sum over prefixes p >= g of d loss / d x_rec_p
    (``grad_full`` already holds the last prefix's, AuxK included)."""
    out = [grad_full]
    running = grad_full
    for d in reversed(plan.prefix_diffs):
        running = running + d * scale
        out.append(running)
    return out[::-1]


def sparse_sae_loss(model, x: torch.Tensor, *, sync_free: bool | None = None) -> dict:
    """TopK/BatchTopK loss with the sparse kernels; same values and gradients
    as ``model.forward_dense`` (up to float rounding). Updates the model's
    dead-latent counters / threshold when its mode allows it.

    ``sync_free`` (default: on CUDA) keeps every shape static."""
    sync_free = x.is_cuda if sync_free is None else sync_free
    with few_threads(enabled=not x.is_cuda):
        return _sparse_sae_loss(model, x, sync_free)


def _sparse_sae_loss(model, x: torch.Tensor, sync_free: bool) -> dict:
    cfg = model.cfg
    x_in, x_mean, x_std = model.preprocess_input(x)
    with torch.no_grad():
        x_cent = x_in - model.b_dec
        pre = model.encoder_preacts(x_cent, workspace=True)
        codes = model.select_codes(pre, sync_free=sync_free)
        if model.stats_update_enabled:
            model.update_stats(codes.cols, codes.vals, positive=codes.positive)
        plan = _LossPlan(x_in, x_cent, codes, cfg.top_k_aux, cfg.aux_penalty)
        plan.group_ends = getattr(model, "group_ends", None)
        if cfg.aux_penalty > 0 and cfg.top_k_aux > 0:
            dead = model.num_batches_not_active >= cfg.n_batches_to_dead
            if sync_free:
                plan.aux_mask = dead
            else:
                idx = dead.nonzero().squeeze(1)
                plan.aux_cols = idx if idx.numel() else None
    b_enc = model.b_enc if model.uses_b_enc else None
    l2_loss, l1_norm, aux_loss = _SparseTopKLosses.apply(
        model.W_enc, b_enc, model.b_dec, model.W_dec, plan
    )
    l1_loss = cfg.l1_coeff * l1_norm
    batch = x.shape[0]
    acts = plan.acts
    l0 = (
        torch.tensor(codes.nnz / max(batch, 1), dtype=x_in.dtype)  # an empty shard: 0
        if codes.positive
        else (acts > 0).sum().to(x_in.dtype) / batch
    )
    out = {
        "loss": l2_loss + l1_loss + aux_loss,
        "l2_loss": l2_loss,
        "l1_loss": l1_loss,
        "aux_loss": aux_loss,
        "l0_norm": l0,
        "l1_norm": l1_norm,
        "num_dead_features": (model.num_batches_not_active > cfg.n_batches_to_dead).sum(),
        "x_in": x_in,
        "x_mean": x_mean,
        "x_std": x_std,
        "codes": codes,
        "acts": acts,
    }
    if plan.group_ends is not None:  # the training loss is the prefixes' mean
        out["l2_loss"] = plan.full_l2.detach()
        out["prefix_l2_loss"] = plan.prefix_l2.detach()
    return out
