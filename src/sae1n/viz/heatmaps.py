"""Per-patch scores (a neuron's activation, ABMIL attention) painted on the
slide thumbnail, with an optional tumour-annotation outline; several score
vectors of one slide are drawn side by side (the paper's Figure 1c)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sae1n.errors import ConfigError, InputFileError
from sae1n.viz.curves import save_figure

NORMALIZATIONS = ("minmax", "percentile", "none")


@dataclass
class PatchScores:
    """Scores of one slide's patches: level-0 top-left coords (N, 2) and scores (N,)."""

    coords: np.ndarray
    scores: np.ndarray
    title: str = "scores"

    def __post_init__(self):
        self.coords = np.asarray(self.coords, dtype=np.int64).reshape(-1, 2)
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        if self.coords.shape[0] != self.scores.shape[0]:
            raise ConfigError(
                f"{self.title}: {self.scores.shape[0]} scores for {self.coords.shape[0]} coords"
            )


def infer_patch_size(coords: np.ndarray, attrs: Mapping | None = None) -> int:
    """Level-0 patch side: the file's :class:`~sae1n.wsi.patch_files.PatchGeometry`
    (``patch_size_level0``, or CLAM's ``patch_size * int(downsample)``), else
    the smallest step of the coord grid."""
    from sae1n.wsi.patch_files import PatchGeometry

    attrs = attrs or {}
    if attrs.get("patch_size_level0") or attrs.get("patch_size"):
        try:
            return PatchGeometry.from_attrs(attrs).side_level0
        except InputFileError:
            pass  # e.g. patch_level > 0 without a downsample: fall back to the grid step
    coords = np.asarray(coords).reshape(-1, 2)
    steps = []
    for axis in (0, 1):
        d = np.diff(np.unique(coords[:, axis]))
        if d.size:
            steps.append(int(d.min()))
    if not steps:
        raise ConfigError(
            "cannot infer the patch size from one patch; pass --patch_size (level-0 pixels)"
        )
    return min(steps)


def normalize_scores(
    scores: np.ndarray, mode: str = "minmax", vmin=None, vmax=None
) -> tuple[np.ndarray, float, float]:
    """Scores mapped to [0, 1] for colouring: ``minmax`` (vmin/vmax default to
    min(0, min) and max), ``percentile`` (rank within the slide, as CLAM does for
    attention) or ``none`` (clip to [vmin, vmax] given). Returns (values, lo, hi)."""
    if mode not in NORMALIZATIONS:
        raise ConfigError(f"unknown normalisation {mode!r}; use one of {', '.join(NORMALIZATIONS)}")
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0:
        return s, 0.0, 1.0
    if mode == "percentile":
        from scipy.stats import rankdata

        return (rankdata(s) - 1) / max(s.size - 1, 1), 0.0, 100.0
    lo = float(min(0.0, s.min())) if vmin is None else float(vmin)
    hi = float(s.max()) if vmax is None else float(vmax)
    if mode == "none" and (vmin is None or vmax is None):
        raise ConfigError("normalisation 'none' needs both vmin and vmax")
    if hi <= lo:
        hi = lo + 1.0
    return np.clip((s - lo) / (hi - lo), 0.0, 1.0), lo, hi


def paint_patches(
    shape: tuple[int, int], coords: np.ndarray, values: np.ndarray, patch_size: int, scale: float
) -> np.ndarray:
    """A (H, W) float canvas (NaN where no patch) with each patch's value
    filling its square; ``scale`` is level-0 pixels per canvas pixel."""
    h, w = shape
    canvas = np.full((h, w), np.nan)
    x0 = np.floor(coords[:, 0] / scale).astype(np.int64)
    y0 = np.floor(coords[:, 1] / scale).astype(np.int64)
    x1 = np.maximum(np.ceil((coords[:, 0] + patch_size) / scale).astype(np.int64), x0 + 1)
    y1 = np.maximum(np.ceil((coords[:, 1] + patch_size) / scale).astype(np.int64), y0 + 1)
    np.clip(x0, 0, w, out=x0)
    np.clip(x1, 0, w, out=x1)
    np.clip(y0, 0, h, out=y0)
    np.clip(y1, 0, h, out=y1)
    # paint low values first so the highest score wins where squares overlap
    for i in np.argsort(values, kind="stable"):
        canvas[y0[i] : y1[i], x0[i] : x1[i]] = values[i]
    return canvas


def blend(
    thumb: np.ndarray, canvas: np.ndarray, cmap: str = "viridis", alpha: float = 0.5
) -> np.ndarray:
    """RGB uint8: the colour-mapped canvas over the thumbnail where painted."""
    import matplotlib

    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"--alpha must be in [0, 1], got {alpha}")
    try:
        cm = matplotlib.colormaps[cmap]
    except KeyError as exc:
        raise ConfigError(
            f"unknown colour map {cmap!r}; any matplotlib name works, e.g. jet, viridis, coolwarm"
        ) from exc
    painted = np.isfinite(canvas)
    rgb = cm(np.nan_to_num(canvas))[..., :3] * 255.0
    out = thumb.astype(np.float64).copy()
    out[painted] = (1 - alpha) * out[painted] + alpha * rgb[painted]
    return np.clip(out, 0, 255).astype(np.uint8)


def outline_mask(mask: np.ndarray, width: int = 2) -> np.ndarray:
    """Boolean outline (``width`` px) of a binary mask's regions."""
    from scipy.ndimage import binary_dilation
    from skimage.segmentation import find_boundaries

    edge = find_boundaries(mask.astype(bool), mode="inner")
    return binary_dilation(edge, iterations=width - 1) if width > 1 else edge


def draw_outline(
    img: np.ndarray,
    scale: float,
    patch_size: int,
    *,
    positive_coords: np.ndarray | None = None,
    polygons: Sequence[np.ndarray] | None = None,
    color=(0, 0, 0),
    width: int = 2,
) -> np.ndarray:
    """Draw the tumour outline: of the union of positive patches, and/or of
    level-0 polygons (each (K, 2) x, y). Returns a new RGB array."""
    from PIL import Image, ImageDraw

    out = img.copy()
    h, w = out.shape[:2]
    if positive_coords is not None and len(positive_coords):
        mask = np.isfinite(
            paint_patches(
                (h, w),
                np.asarray(positive_coords),
                np.ones(len(positive_coords)),
                patch_size,
                scale,
            )
        )
        out[outline_mask(mask, width)] = color
    if polygons:
        pil = Image.fromarray(out)
        draw = ImageDraw.Draw(pil)
        for poly in polygons:
            pts = np.asarray(poly, dtype=np.float64).reshape(-1, 2) / scale
            if len(pts) >= 2:
                draw.line(
                    [tuple(p) for p in pts] + [tuple(pts[0])],
                    fill=tuple(int(c) for c in color),
                    width=width,
                )
        out = np.asarray(pil)
    return out


def heatmap(
    slide_path: str | os.PathLike,
    scores: PatchScores | Sequence[PatchScores],
    out_path: str | os.PathLike,
    *,
    patch_size: int | None = None,
    cmap: str = "viridis",
    alpha: float = 0.5,
    normalize: str = "minmax",
    vmin: float | None = None,
    vmax: float | None = None,
    max_size: int = 1024,
    annotation_coords: np.ndarray | None = None,
    polygons: Sequence[np.ndarray] | None = None,
    outline_color=(0, 0, 0),
    title: str | None = None,
    backend: str = "auto",
    dpi: int = 110,
) -> Path:
    """Paint per-patch scores on the slide thumbnail and save a PNG.

    Several :class:`PatchScores` (e.g. a neuron and ABMIL attention) are drawn
    side by side, each with its own colour bar. ``annotation_coords`` (level-0
    top-left corners of tumour patches) and/or ``polygons`` (level-0 vertices)
    are outlined on every panel.
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    from sae1n.wsi.slide import open_slide

    panels = [scores] if isinstance(scores, PatchScores) else list(scores)
    if not panels:
        raise ConfigError("heatmap needs at least one score vector")
    with open_slide(slide_path, backend=backend) as slide:
        thumb, scale = slide.thumbnail(max_size)
        W, H = (int(v) for v in slide.dimensions)
    ps = int(patch_size) if patch_size else infer_patch_size(panels[0].coords)
    for p in panels:
        if len(p.coords) and (
            (p.coords[:, 0] >= W).any() or (p.coords[:, 1] >= H).any() or (p.coords < 0).any()
        ):
            raise InputFileError(
                slide_path,
                f"{p.title}: patch coords fall outside the slide ({W}x{H})",
                "use the codes/scores extracted from this slide",
            )
    h, w = thumb.shape[:2]
    fig = _figure_for(len(panels), w, h, dpi)
    for i, p in enumerate(panels):
        vals, lo, hi = normalize_scores(p.scores, normalize, vmin, vmax)
        canvas = paint_patches((h, w), p.coords, vals, ps, scale)
        img = blend(thumb, canvas, cmap, alpha)
        if annotation_coords is not None or polygons:
            img = draw_outline(
                img,
                scale,
                ps,
                positive_coords=annotation_coords,
                polygons=polygons,
                color=outline_color,
            )
        ax = fig.add_subplot(1, len(panels), i + 1)
        ax.imshow(img)
        ax.set_axis_off()
        ax.set_title(p.title, fontsize=10)
        sm = ScalarMappable(norm=Normalize(lo, hi), cmap=cmap)
        cb = fig.colorbar(sm, ax=ax, fraction=0.035, pad=0.02)
        cb.ax.tick_params(labelsize=7)
        if normalize == "percentile":
            cb.set_label("percentile in slide", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=11)
    return save_figure(fig, out_path, dpi=dpi)


def _figure_for(n: int, w: int, h: int, dpi: int):
    from matplotlib.figure import Figure

    width_in = max(3.0, w / dpi) * n + 0.9 * n
    return Figure(figsize=(width_in, max(2.5, h / dpi) + 0.6), dpi=dpi, layout="constrained")


def neuron_heatmap(
    slide_path: str | os.PathLike,
    code_file: str | os.PathLike,
    unit: int,
    out_path: str | os.PathLike,
    *,
    attention_file: str | os.PathLike | None = None,
    patch_label_file: str | os.PathLike | None = None,
    label_threshold: float | None = None,
    polygons: Sequence[np.ndarray] | None = None,
    patch_size: int | None = None,
    **kw,
) -> Path:
    """Heatmap of one SAE neuron on one slide from its code file; with
    ``attention_file`` (MIL ``patch_scores/<slide>.h5``) the attention is drawn
    beside it; ``patch_label_file`` outlines the tumour patches."""
    from sae1n.datasets.patch_labels import read_patch_label_file
    from sae1n.neurons.inputs import neuron_columns, read_codes, read_patch_scores

    codes, coords, attrs = read_codes(code_file)
    if coords is None:
        raise InputFileError(
            code_file, "has no coords", "use the h5 or sparse code files (they keep coords)"
        )
    if not 0 <= int(unit) < codes.shape[1]:
        raise ConfigError(f"--unit {unit} is outside the SAE's {codes.shape[1]} neurons")
    ps = int(patch_size) if patch_size else infer_patch_size(coords, attrs)
    panels = [PatchScores(coords, neuron_columns(codes, [unit])[:, 0], f"SAE neuron {unit}")]
    if attention_file is not None:
        a_coords, a_scores = read_patch_scores(attention_file)
        panels.append(PatchScores(a_coords, a_scores, "ABMIL attention"))
    positive = None
    if patch_label_file is not None:
        l_coords, frac, thr = read_patch_label_file(patch_label_file)
        cut = label_threshold if label_threshold is not None else (thr if thr is not None else 0.5)
        positive = l_coords[frac >= cut]
    kw.setdefault("title", Path(slide_path).stem)
    return heatmap(
        slide_path,
        panels,
        out_path,
        patch_size=ps,
        annotation_coords=positive,
        polygons=polygons,
        **kw,
    )
