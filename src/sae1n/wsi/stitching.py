"""Low-resolution previews: the tissue mask drawn on the slide
(``masks/<slide>.jpg``) and the patches stitched on black
(``stitches/<slide>.jpg``), as CLAM's ``visWSI`` / ``StitchCoords`` draw them."""

from __future__ import annotations

import math

import cv2
import numpy as np

from sae1n.wsi.segmentation import TissueContours

MAX_PREVIEW_SIDE = 10000  # larger levels are read in strips and shrunk
TISSUE_COLOR, HOLE_COLOR = (0, 255, 0), (0, 0, 255)


def read_overview(
    slide,
    level: int,
    max_side: int = MAX_PREVIEW_SIDE,
    level_rgb: np.ndarray | None = None,
    strip_bytes: int = 2**26,
) -> tuple[np.ndarray, tuple[float, float]]:
    """RGB image of ``level`` (shrunk to at most ``max_side`` pixels, reading
    strips of about ``strip_bytes`` so a huge single-level slide never sits in
    memory whole) and its per-axis scale in level-0 pixels per image pixel.
    ``level_rgb``: the level's image when already read."""
    w, h = slide.level_dimensions[level]
    factor = max(w, h) / max_side
    if factor <= 1:
        img = slide.read_level(level) if level_rgb is None else level_rgb
    else:
        out_w, out_h = max(1, round(w / factor)), max(1, round(h / factor))
        img = np.empty((out_h, out_w, 3), np.uint8)
        out_rows = max(1, int(max(1, strip_bytes // (3 * w)) * out_h / h))
        level_ds = slide.level_scale(level)[1]
        for top in range(0, out_h, out_rows):
            bottom = min(out_h, top + out_rows)
            src_top, src_bottom = int(top * h / out_h), min(h, math.ceil(bottom * h / out_h))
            strip = slide.read_region(
                (0, math.ceil(src_top * level_ds)), level, (w, src_bottom - src_top)
            )
            img[top:bottom] = cv2.resize(strip, (out_w, bottom - top), interpolation=cv2.INTER_AREA)
    w0, h0 = slide.dimensions
    return img, (w0 / img.shape[1], h0 / img.shape[0])


def draw_tissue(
    overview: np.ndarray,
    scale: tuple[float, float],
    tissue: TissueContours | None,
    line_thickness: int = 250,
) -> np.ndarray:
    """Contours (green) and holes (blue) drawn on the overview; the line
    thickness is given in level-0 pixels, as in CLAM."""
    img = np.ascontiguousarray(overview.copy())
    if tissue is None or not len(tissue):
        return img
    inv = np.array([1.0 / scale[0], 1.0 / scale[1]])
    thickness = max(1, int(line_thickness * math.sqrt(inv[0] * inv[1])))
    contours = [np.array(c * inv, dtype=np.int32) for c in tissue.contours]
    cv2.drawContours(img, contours, -1, TISSUE_COLOR, thickness, lineType=cv2.LINE_8)
    holes = [np.array(h * inv, dtype=np.int32) for hs in tissue.holes for h in hs]
    if holes:
        cv2.drawContours(img, holes, -1, HOLE_COLOR, thickness, lineType=cv2.LINE_8)
    return img


def coverage_mask(
    shape: tuple[int, int], scale: tuple[float, float], coords: np.ndarray, patch_size_level0: int
) -> np.ndarray:
    """Boolean (h, w) image of the pixels covered by patches: patch corners
    dilated by the patch footprint (no per-patch loop)."""
    h, w = shape
    corners = np.zeros((h, w), np.uint8)
    if len(coords):
        coords = np.asarray(coords, np.float64)
        x0 = np.ceil(coords[:, 0] / scale[0]).astype(np.int64)
        y0 = np.ceil(coords[:, 1] / scale[1]).astype(np.int64)
        ok = (x0 >= 0) & (x0 < w) & (y0 >= 0) & (y0 < h)
        corners[y0[ok], x0[ok]] = 1
    pw = max(1, math.ceil(patch_size_level0 / scale[0]))
    ph = max(1, math.ceil(patch_size_level0 / scale[1]))
    kernel = np.ones((ph, pw), np.uint8)
    return (
        cv2.dilate(
            corners, kernel, anchor=(pw - 1, ph - 1), borderType=cv2.BORDER_CONSTANT, borderValue=0
        )
        > 0
    )


def stitch_patches(
    overview: np.ndarray, scale: tuple[float, float], coords: np.ndarray, patch_size_level0: int
) -> np.ndarray:
    """The slide where patches are, black elsewhere (CLAM's stitch preview)."""
    covered = coverage_mask(overview.shape[:2], scale, coords, patch_size_level0)
    out = np.zeros_like(overview)
    out[covered] = overview[covered]
    return out


def save_jpeg(path, rgb: np.ndarray, quality: int = 90) -> None:
    """Write an RGB image as JPEG, atomically."""
    from PIL import Image

    from sae1n.io import atomic_path

    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp, format="JPEG", quality=quality)
