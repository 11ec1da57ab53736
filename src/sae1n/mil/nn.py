"""Building blocks of the MIL models: patch MLPs, attention pooling, Nystrom
attention with PPEG (TransMIL) and selective-state-space blocks (MambaMIL).

Every block works on one bag; sequence blocks take (batch, N, dim).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sae1n.mil.scan import selective_scan

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


def dropout_rate(drop_out) -> float:
    """The paper's ``drop_out`` is a rate or a flag (True means 0.25)."""
    if isinstance(drop_out, bool):
        return 0.25 if drop_out else 0.0
    return float(drop_out or 0.0)


def patch_mlp(in_dim: int, hidden_dim: int, act: str = "relu", drop_out=0.25) -> nn.Sequential:
    """Linear -> activation -> dropout, applied to every patch."""
    act_cls = ACTIVATIONS.get(str(act).lower())
    if act_cls is None:
        raise ValueError(f"unknown activation {act!r}; use one of {', '.join(ACTIVATIONS)}")
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim), act_cls()]
    rate = dropout_rate(drop_out)
    if rate > 0:
        layers.append(nn.Dropout(rate))
    return nn.Sequential(*layers)


class AttentionScorer(nn.Module):
    """Attention logits (N, branches) of Ilse et al.; ``gated`` adds the
    sigmoid gate of gated attention."""

    def __init__(
        self, dim: int, attn_dim: int = 128, branches: int = 1, gated: bool = True, drop_out=0.0
    ):
        super().__init__()
        rate = dropout_rate(drop_out)
        drop = [nn.Dropout(rate)] if rate > 0 else []
        self.value = nn.Sequential(nn.Linear(dim, attn_dim), nn.Tanh(), *drop)
        self.gate = nn.Sequential(nn.Linear(dim, attn_dim), nn.Sigmoid(), *drop) if gated else None
        self.out = nn.Linear(attn_dim, branches)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        a = self.value(h)
        if self.gate is not None:
            a = a * self.gate(h)
        return self.out(a)


# ----------------------------------------------------------------------------- Nystrom attention


def iterative_pinv(x: torch.Tensor, iters: int = 6) -> torch.Tensor:
    """Moore-Penrose pseudo-inverse by Newton-Schulz-type iterations
    (Razavi et al. 2014), as used by the Nystromformer."""
    absx = x.abs()
    z = x.transpose(-1, -2) / (absx.sum(-1).amax() * absx.sum(-2).amax())
    eye = torch.eye(x.shape[-1], device=x.device, dtype=x.dtype)
    for _ in range(iters):
        xz = x @ z
        z = 0.25 * z @ (13 * eye - xz @ (15 * eye - xz @ (7 * eye - xz)))
    return z


def segment_means(t: torch.Tensor, m: int) -> torch.Tensor:
    """Means of ``m`` near-equal consecutive segments along dim -2."""
    n = t.shape[-2]
    bounds = [(j * n) // m for j in range(m + 1)]
    csum = F.pad(t.float().cumsum(-2), (0, 0, 1, 0))
    idx_hi = torch.tensor(bounds[1:], device=t.device)
    idx_lo = torch.tensor(bounds[:-1], device=t.device)
    counts = (idx_hi - idx_lo).to(csum.dtype)[:, None]
    return ((csum.index_select(-2, idx_hi) - csum.index_select(-2, idx_lo)) / counts).to(t.dtype)


def paper_pinv(x: torch.Tensor, iters: int = 6) -> torch.Tensor:
    """The Nystromformer pseudo-inverse as the paper's TransMIL computes it
    (initial scale from the maxima over the whole tensor, all heads)."""
    abs_x = torch.abs(x)
    z = x.transpose(-1, -2) / (torch.max(abs_x.sum(dim=-1)) * torch.max(abs_x.sum(dim=-2)))
    eye = torch.eye(x.shape[-1], device=x.device, dtype=x.dtype)[None]
    for _ in range(iters):
        xz = x @ z
        z = 0.25 * z @ (13 * eye - (xz @ (15 * eye - (xz @ (7 * eye - xz)))))
    return z


def nystrom_paper(attn: nn.Module, x: torch.Tensor, first_row: bool = False):
    """Nystrom attention exactly as the paper's TransMIL (the ``nystrom_attention``
    package): the sequence is zero-padded *at the front* to a multiple of
    ``num_landmarks``, landmarks are means of ``ceil(n / num_landmarks)``
    consecutive tokens, ``(attn1 @ pinv(attn2)) @ (attn3 @ v)`` plus the
    residual conv of v, the last n tokens kept. ``attn`` holds ``to_qkv``,
    ``to_out``, ``res_conv``, ``heads``, ``num_landmarks``, ``pinv_iterations``,
    ``scale``. With ``first_row`` also the head-averaged attention of the first
    real token over the n tokens, (b, n)."""
    b, n, _ = x.shape
    h, m = attn.heads, attn.num_landmarks
    pad = (m - n % m) % m
    if pad:
        x = F.pad(x, (0, 0, pad, 0), value=0)
    q, k, v = attn.to_qkv(x).chunk(3, dim=-1)
    q, k, v = (t.reshape(b, t.shape[1], h, -1).transpose(1, 2) for t in (q, k, v))
    q = q * attn.scale
    group = math.ceil(n / m)
    q_l = q.reshape(b, h, -1, group, q.shape[-1]).sum(dim=-2) / group
    k_l = k.reshape(b, h, -1, group, k.shape[-1]).sum(dim=-2) / group
    attn1 = torch.einsum("...id,...jd->...ij", q, k_l).softmax(dim=-1)
    attn2 = torch.einsum("...id,...jd->...ij", q_l, k_l).softmax(dim=-1)
    attn3 = torch.einsum("...id,...jd->...ij", q_l, k).softmax(dim=-1)
    attn2_inv = paper_pinv(attn2, attn.pinv_iterations)
    out = (attn1 @ attn2_inv) @ (attn3 @ v)
    out = out + attn.res_conv(v)
    out = out.transpose(1, 2).reshape(b, -1, h * out.shape[-1])
    out = attn.to_out(out)[:, -n:]
    if not first_row:
        return out
    row = ((attn1[:, :, pad : pad + 1] @ attn2_inv) @ attn3)[:, :, 0, -n:].mean(1)
    return out, row


class NystromAttention(nn.Module):
    """Multi-head self-attention approximated with ``num_landmarks`` landmarks
    (Xiong et al. 2021) plus a depth-wise convolution residual on the values.

    By default the arithmetic is the paper's (:func:`nystrom_paper`: front
    zero-padding and landmark means, whatever the length). ``exact=True``:
    sequences no longer than ``num_landmarks`` use exact softmax attention and
    longer ones landmarks from near-equal segments without padding.
    """

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        dim_head: int | None = None,
        num_landmarks: int = 256,
        pinv_iterations: int = 6,
        residual_conv_kernel: int = 33,
        dropout: float = 0.1,
        exact: bool = False,
    ):
        super().__init__()
        self.exact = bool(exact)
        dim_head = dim_head or dim // heads
        inner = heads * dim_head
        self.heads, self.num_landmarks, self.pinv_iterations = heads, num_landmarks, pinv_iterations
        self.scale = dim_head**-0.5
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))
        pad = residual_conv_kernel // 2
        self.res_conv = nn.Conv2d(
            heads, heads, (residual_conv_kernel, 1), padding=(pad, 0), groups=heads, bias=False
        )

    def forward(self, x: torch.Tensor, return_first_row: bool = False):
        """(b, n, dim) -> (b, n, dim); with ``return_first_row`` also the
        head-averaged attention of token 0 over all tokens, (b, n)."""
        if not self.exact:
            with torch.autocast(device_type=x.device.type, enabled=False):  # the pinv needs float32
                return nystrom_paper(self, x.float(), first_row=return_first_row)
        b, n, _ = x.shape
        q, k, v = self.to_qkv(x).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, n, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        q = q * self.scale
        row = None
        if n <= self.num_landmarks:
            attn = (q @ k.transpose(-1, -2)).softmax(-1)
            out = attn @ v
            if return_first_row:
                row = attn[:, :, 0].mean(1)
        else:
            m = self.num_landmarks
            q_l, k_l = segment_means(q, m), segment_means(k, m)
            attn1 = (q @ k_l.transpose(-1, -2)).softmax(-1)  # (b, h, n, m)
            with torch.autocast(
                device_type=x.device.type, enabled=False
            ):  # the iteration needs float32
                attn2 = (q_l.float() @ k_l.float().transpose(-1, -2)).softmax(-1)
                attn2_inv = iterative_pinv(attn2, self.pinv_iterations).to(q.dtype)
            attn3 = (q_l @ k.transpose(-1, -2)).softmax(-1)  # (b, h, m, n)
            out = attn1 @ (attn2_inv @ (attn3 @ v))  # n*m*d instead of n*m*m work
            if return_first_row:
                row = ((attn1[:, :, :1] @ attn2_inv) @ attn3)[:, :, 0].mean(1)
        out = out + self.res_conv(v)
        out = self.to_out(out.transpose(1, 2).reshape(b, n, -1))
        return (out, row) if return_first_row else out


class TransLayer(nn.Module):
    """Pre-norm residual Nystrom self-attention layer of TransMIL."""

    def __init__(
        self,
        dim: int = 512,
        heads: int = 8,
        num_landmarks: int | None = None,
        dropout: float = 0.1,
        exact_attention: bool = False,
    ):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = NystromAttention(
            dim,
            heads=heads,
            dim_head=dim // heads,
            num_landmarks=num_landmarks or dim // 2,
            dropout=dropout,
            exact=exact_attention,
        )

    def forward(self, x: torch.Tensor, return_first_row: bool = False):
        if return_first_row:
            out, row = self.attn(self.norm(x), return_first_row=True)
            return x + out, row
        return x + self.attn(self.norm(x))


class PPEG(nn.Module):
    """Pyramid position encoding generator: depth-wise 7/5/3 convolutions of
    the patch tokens laid out on a square grid (token 0 is the class token)."""

    def __init__(self, dim: int = 512):
        super().__init__()
        self.proj7 = nn.Conv2d(dim, dim, 7, 1, 3, groups=dim)
        self.proj5 = nn.Conv2d(dim, dim, 5, 1, 2, groups=dim)
        self.proj3 = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor, side: int) -> torch.Tensor:
        b, _, c = x.shape
        cls_token, grid = x[:, :1], x[:, 1:].transpose(1, 2).reshape(b, c, side, side)
        grid = grid + self.proj7(grid) + self.proj5(grid) + self.proj3(grid)
        return torch.cat([cls_token, grid.flatten(2).transpose(1, 2)], dim=1)


# ----------------------------------------------------------------------------- Mamba


class SelectiveSSM(nn.Module):
    """The selective state-space path of a Mamba block (conv1d -> S6 scan),
    without the input/output projections, for (b, dim_inner, L) inputs."""

    def __init__(
        self,
        d_inner: int,
        d_state: int = 16,
        d_conv: int = 4,
        dt_rank: int = 32,
        dt_min=0.001,
        dt_max=0.1,
    ):
        super().__init__()
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner, bias=True)
        self.d_state, self.dt_rank = d_state, dt_rank
        nn.init.uniform_(self.dt_proj.weight, -(dt_rank**-0.5), dt_rank**-0.5)
        dt = torch.exp(
            torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        ).clamp(min=1e-4)
        with torch.no_grad():  # softplus(bias) = dt at initialisation
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(
            torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(d_inner, 1)
        )
        self.D = nn.Parameter(torch.ones(d_inner))

    def forward(self, x: torch.Tensor, scan_impl: str = "auto") -> torch.Tensor:
        length = x.shape[-1]
        x = F.silu(self.conv1d(x)[..., :length])  # causal
        dbc = self.x_proj(x.transpose(1, 2))  # (b, L, r + 2n)
        dt, B, C = dbc.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = (dt @ self.dt_proj.weight.t()).transpose(1, 2)  # (b, d_inner, L)
        A = -torch.exp(self.A_log.float())
        return selective_scan(
            x,
            delta,
            A,
            B.transpose(1, 2),
            C.transpose(1, 2),
            self.D.float(),
            delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True,
            impl=scan_impl,
        )


def reorder_index(length: int, rate: int, device=None) -> torch.Tensor:
    """Sequence reordering of SR-Mamba: tokens ``rate`` apart become
    neighbours (positions 0, r, 2r, ..., 1, 1+r, ...)."""
    idx = torch.arange(length, device=device)
    return torch.cat([idx[j::rate] for j in range(min(rate, max(length, 1)))])


class SRMamba(nn.Module):
    """Mamba mixer with sequence reordering (MambaMIL's SR-Mamba): one scan
    over the patch order and one over the reordered sequence, averaged,
    gated by ``silu(z)`` and projected back."""

    def __init__(
        self,
        d_model: int = 512,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        rate: int = 10,
    ):
        super().__init__()
        d_inner = expand * d_model
        dt_rank = math.ceil(d_model / 16)
        self.rate = rate
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.forward_ssm = SelectiveSSM(d_inner, d_state, d_conv, dt_rank)
        self.reordered_ssm = SelectiveSSM(d_inner, d_state, d_conv, dt_rank)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)
        self.scan_impl = "auto"

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x, z = self.in_proj(h).chunk(2, dim=-1)  # (b, L, d_inner) each
        y = self.forward_ssm(x.transpose(1, 2), self.scan_impl).transpose(1, 2)
        length = x.shape[1]
        if self.rate > 1 and length > 1:
            # permute whole rows in (b, L, d) layout: far cheaper than gathering along L in (b, d, L)
            order = reorder_index(length, self.rate, x.device)
            y_r = self.reordered_ssm(x[:, order].transpose(1, 2), self.scan_impl).transpose(1, 2)
            y = 0.5 * (y + y_r.contiguous()[:, torch.argsort(order)])
        return self.out_proj(y * F.silu(z))
