"""How much of each patch an annotation covers: exact polygon overlap (shapely,
prepared predicates first, overlay only on boundary patches) or the area
integral of a raster mask (summed-area table)."""

from __future__ import annotations

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from sae1n.datasets.annotations import Annotation, TumorMask
from sae1n.errors import ConfigError


def tumor_fractions(coords, patch_size_level0, annotation: Annotation) -> np.ndarray:
    """Fraction (N,) float64 in [0, 1] of each patch covered by tumour.

    ``coords`` are level-0 top-left corners (N, 2); ``patch_size_level0`` is
    the patch side in level-0 pixels (a number, or (width, height));
    ``annotation`` is a shapely geometry or a :class:`TumorMask`.
    """
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    width, height = patch_size_pair(patch_size_level0)
    if isinstance(annotation, TumorMask):
        return _raster_fractions(coords, width, height, annotation)
    if isinstance(annotation, BaseGeometry):
        return _vector_fractions(coords, width, height, annotation)
    raise TypeError(
        f"annotation must be a shapely geometry or TumorMask, not {type(annotation).__name__}"
    )


def _vector_fractions(coords, width, height, region: BaseGeometry) -> np.ndarray:
    fractions = np.zeros(len(coords))
    if region.is_empty or len(coords) == 0:
        return fractions
    x, y = coords[:, 0], coords[:, 1]
    boxes = shapely.box(x, y, x + width, y + height)
    shapely.prepare(region)
    # Prepared predicates settle almost every patch (wholly in or out) cheaply;
    # exact overlay runs only on boundary patches, each against the polygon
    # parts it touches.
    hit = np.flatnonzero(shapely.intersects(region, boxes))
    if hit.size == 0:
        return fractions
    inside = shapely.contains_properly(region, boxes[hit])
    fractions[hit[inside]] = 1.0
    edge = hit[~inside]
    if edge.size:
        parts = shapely.get_parts(region)
        tree = shapely.STRtree(parts)
        box_idx, part_idx = tree.query(boxes[edge], predicate="intersects")
        areas = shapely.area(shapely.intersection(boxes[edge][box_idx], parts[part_idx]))
        covered = np.zeros(edge.size)
        np.add.at(covered, box_idx, areas)
        fractions[edge] = covered / (width * height)
    return np.clip(fractions, 0.0, 1.0)


def _raster_fractions(coords, width, height, mask: TumorMask) -> np.ndarray:
    tumor = np.asarray(mask.tumor, dtype=bool)
    rows, cols = tumor.shape
    # Summed-area table; bilinear interpolation of it at fractional corners is
    # the exact area integral of the piecewise-constant mask.
    table = np.zeros((rows + 1, cols + 1))
    table[1:, 1:] = np.cumsum(np.cumsum(tumor, axis=0, dtype=np.float64), axis=1)
    sx, sy = mask.scale
    x0, y0 = coords[:, 0] / sx, coords[:, 1] / sy
    x1, y1 = (coords[:, 0] + width) / sx, (coords[:, 1] + height) / sy

    def integral(xs, ys):
        xs = np.clip(xs, 0, cols)
        ys = np.clip(ys, 0, rows)
        c0 = np.minimum(np.floor(xs).astype(np.int64), cols - 1)
        r0 = np.minimum(np.floor(ys).astype(np.int64), rows - 1)
        fx, fy = xs - c0, ys - r0
        return (
            table[r0, c0] * (1 - fx) * (1 - fy)
            + table[r0, c0 + 1] * fx * (1 - fy)
            + table[r0 + 1, c0] * (1 - fx) * fy
            + table[r0 + 1, c0 + 1] * fx * fy
        )

    covered = integral(x1, y1) - integral(x0, y1) - integral(x1, y0) + integral(x0, y0)
    return np.clip(covered / ((x1 - x0) * (y1 - y0)), 0.0, 1.0)


def patch_size_pair(size) -> tuple[float, float]:
    values = np.atleast_1d(np.asarray(size, dtype=np.float64)).ravel()
    if values.size == 1:
        values = np.repeat(values, 2)
    if values.size != 2 or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ConfigError(f"patch size must be a positive number or (width, height), got {size!r}")
    return float(values[0]), float(values[1])
