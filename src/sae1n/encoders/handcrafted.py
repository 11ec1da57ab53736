"""``handcrafted``: stain, colour and texture statistics of a patch (no weights).

Patches are resized to 128 px (the registry input size; about 1 um per pixel
for 256-px patches at 20x, so features do not depend on the read size)
and described by 64 numbers, named in :data:`FEATURE_NAMES`:

* ``hed`` (12): haematoxylin (H), eosin (E) and DAB/residual (D) channels
  from colour deconvolution (scikit-image's ``rgb2hed`` matrix, applied
  batched in torch): mean, std and 10/50/90th percentiles of H and E; mean
  and std of D.
* ``nuclei`` (6): fraction of pixels with H above 0.04 and 0.08 (nuclear
  area), granulometry of the H > 0.04 mask (share surviving a morphological
  opening with 3, 5 and 7 px squares: large nuclei survive larger openings),
  and the share of mask pixels on a mask boundary (small, fragmented nuclei
  have more boundary).
* ``colour`` (12): RGB means and stds; HSV saturation and value mean/std;
  saturation-weighted circular mean of hue (cos, sin).
* ``hist`` (24): 8-bin histograms of grey level, saturation and hue
  (saturation-weighted), each summing to 1.
* ``background`` (1): fraction of near-white pixels (glass, fat).
* ``texture`` (9): Sobel gradient magnitude mean/std of grey and mean of H,
  mean |Laplacian|, mean absolute grey difference at 1/2/4/8 px offsets, and
  the mean standard deviation of 8x8 blocks.

Darker, denser, larger purple nuclei (tumour-like) raise the H statistics,
the nuclear area and the granulometry shares, and lower value and the
near-white fraction, so such patches separate from pink stroma and fat.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from sae1n.encoders.base import EncoderModel

H_THRESHOLDS = (0.04, 0.08)
OPENING_SIZES = (3, 5, 7)
DIFF_OFFSETS = (1, 2, 4, 8)
N_BINS = 8

FEATURE_NAMES: tuple[str, ...] = (
    *(f"{c}_{s}" for c in "he" for s in ("mean", "std", "p10", "p50", "p90")),
    "d_mean",
    "d_std",
    *(f"nuclear_frac_h{t:g}" for t in H_THRESHOLDS),
    *(f"nuclear_open{k}_share" for k in OPENING_SIZES),
    "nuclear_boundary_share",
    "r_mean",
    "g_mean",
    "b_mean",
    "r_std",
    "g_std",
    "b_std",
    "sat_mean",
    "sat_std",
    "val_mean",
    "val_std",
    "hue_cos",
    "hue_sin",
    *(f"grey_hist{i}" for i in range(N_BINS)),
    *(f"sat_hist{i}" for i in range(N_BINS)),
    *(f"hue_hist{i}" for i in range(N_BINS)),
    "white_frac",
    "grad_mean",
    "grad_std",
    "h_grad_mean",
    "laplacian_abs_mean",
    *(f"grey_diff{d}" for d in DIFF_OFFSETS),
    "block8_std_mean",
)
DIM = len(FEATURE_NAMES)


def _hed_from_rgb() -> torch.Tensor:
    from skimage.color import hed_from_rgb

    return torch.as_tensor(np.asarray(hed_from_rgb), dtype=torch.float32)


def rgb_to_hed(rgb: torch.Tensor, matrix: torch.Tensor | None = None) -> torch.Tensor:
    """Colour deconvolution of ``(B, 3, H, W)`` RGB in [0, 1] to H, E, D
    channels, identical to ``skimage.color.rgb2hed`` (Ruifrok & Johnston)."""
    m = _hed_from_rgb() if matrix is None else matrix
    od = torch.log(rgb.clamp_min(1e-6)) / np.log(1e-6)
    return torch.einsum("bchw,cd->bdhw", od, m.to(rgb)).clamp_min(0)


def _percentiles(x: torch.Tensor, qs) -> torch.Tensor:
    """(B, C, len(qs)) nearest-rank percentiles of (B, C, H, W), from every
    2nd pixel in each direction (same statistic, 4x cheaper sort)."""
    s = x[..., ::2, ::2].flatten(2).sort(dim=2).values
    idx = [min(s.shape[2] - 1, round(q * (s.shape[2] - 1))) for q in qs]
    return s[..., idx]


def _box_sum(m: torch.Tensor, k: int) -> torch.Tensor:
    """Sum over the k x k window centred on each pixel (zero outside), via
    cumulative sums: O(1) per pixel whatever k."""
    p = k // 2
    c = F.pad(m, (p + 1, p, p + 1, p)).cumsum(-1)
    c = (c[..., k:] - c[..., :-k]).cumsum(-2)
    return c[..., k:, :] - c[..., :-k, :]


def _dilate(m: torch.Tensor, k: int) -> torch.Tensor:
    return (_box_sum(m, k) > 0.5).to(m.dtype)


def _erode(m: torch.Tensor, k: int) -> torch.Tensor:
    return (_box_sum(m, k) > k * k - 0.5).to(m.dtype)


def _hist(
    x: torch.Tensor, lo: float, hi: float, weights: torch.Tensor | None = None
) -> torch.Tensor:
    b = ((x - lo) / (hi - lo) * N_BINS).long().clamp(0, N_BINS - 1).flatten(1)
    w = torch.ones_like(x).flatten(1) if weights is None else weights.flatten(1)
    h = torch.zeros(x.shape[0], N_BINS, dtype=x.dtype, device=x.device).scatter_add_(1, b, w)
    return h / h.sum(1, keepdim=True).clamp_min(1e-8)


def _sobel(g: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude (kernels scaled by 1/8), edges replicated."""
    p = F.pad(g, (1, 1, 1, 1), mode="replicate")[:, 0]
    sy = p[:, :-2] + 2 * p[:, 1:-1] + p[:, 2:]  # vertical smoothing
    sx = p[:, :, :-2] + 2 * p[:, :, 1:-1] + p[:, :, 2:]
    gx = (sy[:, :, 2:] - sy[:, :, :-2]) / 8
    gy = (sx[:, 2:] - sx[:, :-2]) / 8
    return (gx * gx + gy * gy).sqrt()


def handcrafted_features(rgb: torch.Tensor, matrix: torch.Tensor | None = None) -> torch.Tensor:
    """The 64 features (see module doc) of ``(B, 3, H, W)`` RGB in [0, 1]."""
    B = rgb.shape[0]
    hed = rgb_to_hed(rgb, matrix)
    h = hed[:, :1]
    r, g, b = rgb.unbind(1)
    vmax, vmin = rgb.max(1).values, rgb.min(1).values
    sat = torch.where(vmax > 0, (vmax - vmin) / vmax.clamp_min(1e-6), torch.zeros_like(vmax))
    hue = torch.atan2(np.sqrt(3.0) * (g - b), 2 * r - g - b)
    grey = (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(1)

    # one fused pass for every per-channel mean/std: H E D R G B sat val
    chans = torch.cat([hed, rgb, sat.unsqueeze(1), vmax.unsqueeze(1)], 1).flatten(2)
    std, mean = torch.std_mean(chans, dim=2)
    pct = _percentiles(hed[:, :2], (0.1, 0.5, 0.9))  # (B, 2, 3)
    he = torch.stack([mean[:, :2], std[:, :2], pct[..., 0], pct[..., 1], pct[..., 2]], 2).flatten(1)
    out = [he, mean[:, 2:3], std[:, 2:3]]

    masks = torch.cat([(h > t) for t in H_THRESHOLDS], 1).to(rgb.dtype)
    out.append(masks.mean((2, 3)))
    mask = masks[:, :1]
    area = mask.sum((1, 2, 3)).clamp_min(1.0)
    out += [(_dilate(_erode(mask, k), k).sum((1, 2, 3)) / area).unsqueeze(1) for k in OPENING_SIZES]
    out.append(((mask - _erode(mask, 3)).sum((1, 2, 3)) / area).unsqueeze(1))

    out += [
        mean[:, 3:6],
        std[:, 3:6],
        torch.stack([mean[:, 6], std[:, 6], mean[:, 7], std[:, 7]], 1),
    ]
    wsum = sat.sum((1, 2)).clamp_min(1e-6)
    out.append(
        torch.stack(
            [(sat * torch.cos(hue)).sum((1, 2)) / wsum, (sat * torch.sin(hue)).sum((1, 2)) / wsum],
            1,
        )
    )
    out += [_hist(grey, 0, 1), _hist(sat, 0, 1), _hist(hue, -np.pi, np.pi, weights=sat)]
    out.append(((vmax > 0.85) & (sat < 0.15)).to(rgb.dtype).mean((1, 2)).unsqueeze(1))

    grad = _sobel(grey)
    std_g, mean_g = torch.std_mean(grad.flatten(1), dim=1)
    gp = F.pad(grey, (1, 1, 1, 1), mode="replicate")
    lap = gp[..., :-2, 1:-1] + gp[..., 2:, 1:-1] + gp[..., 1:-1, :-2] + gp[..., 1:-1, 2:] - 4 * grey
    tex = [mean_g, std_g, _sobel(h).mean((1, 2)), lap.abs().mean((1, 2, 3))]
    for o in DIFF_OFFSETS:
        dx = (grey[..., :, o:] - grey[..., :, :-o]).abs().mean((1, 2, 3))
        dy = (grey[..., o:, :] - grey[..., :-o, :]).abs().mean((1, 2, 3))
        tex.append((dx + dy) / 2)
    hh, ww = grey.shape[-2] // 8 * 8, grey.shape[-1] // 8 * 8
    blocks = grey[:, 0, :hh, :ww].reshape(B, hh // 8, 8, ww // 8, 8)
    tex.append(blocks.std(dim=(2, 4)).mean((1, 2)))
    out.append(torch.stack(tex, 1))
    feats = torch.cat(out, dim=1)
    assert feats.shape[1] == DIM, feats.shape
    return feats


class HandcraftedModel(EncoderModel):
    dim = DIM

    def __init__(self):
        super().__init__()
        self.register_buffer("hed_matrix", _hed_from_rgb(), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return handcrafted_features(images.float().clamp(0, 1), self.hed_matrix)


def build_handcrafted(spec, weights, arch: Mapping) -> HandcraftedModel:
    """Registry builder for ``handcrafted`` (no weights)."""
    return HandcraftedModel()
