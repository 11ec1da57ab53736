"""Patch grids inside tissue contours, with CLAM's semantics
(``WholeSlideImage.process_contour``), vectorised.

For each contour, candidates are the grid ``range(x, x + w, step)`` x
``range(y, y + h, step)`` over its bounding box (with ``use_padding=False``
the grid stops where a patch would leave the slide). A candidate is kept when
the contour check passes and its centre is not strictly inside a hole:

- ``four_pt``: any of 4 points at centre +- ``int(patch//2 * 0.5)`` is inside
  or on the contour; ``four_pt_hard``: all 4 are;
- ``center``: the centre (``patch//2``) is; ``basic``: the top-left corner is.

Coordinates are level-0 top-left corners, emitted contour by contour in
CLAM's order (x-major, then y), and, as CLAM does, a contour that yields a
single patch contributes none.
"""

from __future__ import annotations

import numpy as np

from sae1n.wsi.geometry import lattice_polygon_test
from sae1n.wsi.presets import CONTOUR_FNS
from sae1n.wsi.segmentation import TissueContours

CLAM_MIN_PATCHES_PER_CONTOUR = 2  # process_contour keeps results only when len(results) > 1


def check_offsets(contour_fn: str, patch_size_level0: int) -> list[tuple[int, int]]:
    """The (dx, dy) offsets from a patch's top-left corner tested by ``contour_fn``."""
    if contour_fn not in CONTOUR_FNS:
        raise ValueError(f"contour_fn must be one of {CONTOUR_FNS}, got {contour_fn!r}")
    half = patch_size_level0 // 2
    if contour_fn == "basic":
        return [(0, 0)]
    if contour_fn == "center":
        return [(half, half)]
    shift = int(half * 0.5)
    if shift <= 0:
        return [(half, half)]
    return [
        (half - shift, half - shift),
        (half + shift, half + shift),
        (half + shift, half - shift),
        (half - shift, half + shift),
    ]


def contour_patch_coords(
    contour: np.ndarray,
    holes: list[np.ndarray],
    patch_size_level0: int | tuple[int, int],
    step_level0: int | tuple[int, int],
    slide_dimensions: tuple[int, int],
    contour_fn: str = "four_pt",
    use_padding: bool = True,
    min_patches: int = CLAM_MIN_PATCHES_PER_CONTOUR,
) -> np.ndarray:
    """Level-0 top-left (x, y) int64 (N, 2) of the patches of one contour."""
    ref_x, ref_y = _pair(patch_size_level0)
    step_x, step_y = _pair(step_level0)
    pts = np.asarray(contour).reshape(-1, 2)
    start_x, start_y = int(pts[:, 0].min()), int(pts[:, 1].min())
    stop_x, stop_y = int(pts[:, 0].max()) + 1, int(pts[:, 1].max()) + 1
    if not use_padding:
        width, height = slide_dimensions
        stop_x = min(stop_x, width - ref_x + 1)
        stop_y = min(stop_y, height - ref_y + 1)
    nx = max(0, -(-(stop_x - start_x) // step_x))
    ny = max(0, -(-(stop_y - start_y) // step_y))
    if nx == 0 or ny == 0:
        return np.zeros((0, 2), np.int64)

    offsets = check_offsets(contour_fn, ref_x)
    tests = [
        lattice_polygon_test(contour, start_x + dx, start_y + dy, nx, ny, step_x, step_y) >= 0
        for dx, dy in offsets
    ]
    keep = (
        np.logical_and.reduce(tests)
        if contour_fn == "four_pt_hard"
        else np.logical_or.reduce(tests)
    )
    for hole in holes:
        if not keep.any():
            break
        centre = start_x + ref_x / 2, start_y + ref_x / 2
        keep &= lattice_polygon_test(hole, centre[0], centre[1], nx, ny, step_x, step_y) <= 0

    ii, jj = np.nonzero(keep)  # row-major over (x, y): CLAM's meshgrid(indexing="ij") order
    if len(ii) < min_patches:
        return np.zeros((0, 2), np.int64)
    return np.stack(
        [start_x + ii.astype(np.int64) * step_x, start_y + jj.astype(np.int64) * step_y], axis=1
    )


def tissue_patch_coords(
    tissue: TissueContours,
    patch_size_level0: int | tuple[int, int],
    step_level0: int | tuple[int, int],
    slide_dimensions: tuple[int, int],
    contour_fn: str = "four_pt",
    use_padding: bool = True,
    min_patches: int = CLAM_MIN_PATCHES_PER_CONTOUR,
) -> tuple[np.ndarray, np.ndarray]:
    """Patches of every contour, concatenated in contour order:
    ((N, 2) int64 level-0 coords, (N,) int32 contour index)."""
    coords, owner = [], []
    for idx, (contour, holes) in enumerate(zip(tissue.contours, tissue.holes)):
        c = contour_patch_coords(
            contour,
            holes,
            patch_size_level0,
            step_level0,
            slide_dimensions,
            contour_fn,
            use_padding,
            min_patches,
        )
        coords.append(c)
        owner.append(np.full(len(c), idx, np.int32))
    if not coords:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.int32)
    return np.concatenate(coords), np.concatenate(owner)


def whole_slide_region(slide_dimensions: tuple[int, int]) -> TissueContours:
    """One rectangular "contour" covering the slide (patching without segmentation)."""
    w, h = slide_dimensions
    rect = np.array([[[0, 0]], [[w - 1, 0]], [[w - 1, h - 1]], [[0, h - 1]]], np.int32)
    return TissueContours([rect], [[]], 0, (1.0, 1.0))


def _pair(v) -> tuple[int, int]:
    if isinstance(v, (tuple, list, np.ndarray)):
        return int(v[0]), int(v[1])
    return int(v), int(v)
