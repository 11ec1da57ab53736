"""Point-in-polygon tests on regular point lattices, vectorised.

``lattice_polygon_test`` gives, for every point of a lattice, exactly what
``cv2.pointPolygonTest(polygon, point, measureDist=False)`` returns (+1
inside, 0 on the boundary, -1 outside), with one scanline pass per polygon
instead of one call per point: patch grids are lattices, so the crossings of
each polygon edge with each lattice row are counted with integer arithmetic.
"""

from __future__ import annotations

import numpy as np

INSIDE, ON_EDGE, OUTSIDE = 1, 0, -1


def _ceil_div(num: np.ndarray, den) -> np.ndarray:
    return -((-num) // den)


def _as_doubled_int(value, what: str) -> int:
    """``2 * value`` as an int; lattice origins may sit on half pixels."""
    doubled = float(value) * 2.0
    if doubled != round(doubled):
        raise ValueError(f"{what}={value} must be a multiple of 0.5")
    return int(round(doubled))


def lattice_polygon_test(
    polygon: np.ndarray,
    x0: float,
    y0: float,
    nx: int,
    ny: int,
    step_x: int,
    step_y: int,
) -> np.ndarray:
    """``cv2.pointPolygonTest`` results for the points ``(x0 + i*step_x, y0 + j*step_y)``.

    ``polygon``: (K, 2) or (K, 1, 2) integer vertices (an OpenCV contour).
    ``x0``/``y0`` may be half-integers. Returns int8 (nx, ny), indexed [i, j].
    """
    out = np.full((nx, ny), OUTSIDE, np.int8)
    pts = np.asarray(polygon).reshape(-1, 2).astype(np.int64) * 2
    if nx <= 0 or ny <= 0 or len(pts) == 0:
        return out
    if step_x <= 0 or step_y <= 0:
        raise ValueError("lattice steps must be positive")
    sx, sy = 2 * int(step_x), 2 * int(step_y)
    ox, oy = _as_doubled_int(x0, "x0"), _as_doubled_int(y0, "y0")

    # Only lattice points inside the polygon's bounding box can be inside or on it.
    i_lo = max(0, int(_ceil_div(np.int64(pts[:, 0].min() - ox), sx)))
    i_hi = min(nx - 1, int((pts[:, 0].max() - ox) // sx))
    j_lo = max(0, int(_ceil_div(np.int64(pts[:, 1].min() - oy), sy)))
    j_hi = min(ny - 1, int((pts[:, 1].max() - oy) // sy))
    if i_lo > i_hi or j_lo > j_hi:
        return out
    ox, oy = ox + i_lo * sx, oy + j_lo * sy
    mx, my = i_hi - i_lo + 1, j_hi - j_lo + 1

    start = np.roll(pts, 1, axis=0)  # edge k runs from vertex k-1 to vertex k, as OpenCV walks it
    xa, ya, xb, yb = start[:, 0], start[:, 1], pts[:, 0], pts[:, 1]
    crossings = np.zeros((my, mx + 1), np.int64)
    boundary = np.zeros((my, mx), bool)

    # Non-horizontal edges cross lattice row y when min(ya, yb) <= y < max(ya, yb).
    slanted = ya != yb
    if slanted.any():
        flip = yb < ya
        xs = np.where(flip, xb, xa)[slanted]
        ys = np.where(flip, yb, ya)[slanted]
        xe = np.where(flip, xa, xb)[slanted]
        ye = np.where(flip, ya, yb)[slanted]
        r_from = np.maximum(_ceil_div(ys - oy, sy), 0)
        r_to = np.minimum(_ceil_div(ye - oy, sy) - 1, my - 1)
        counts = np.maximum(r_to - r_from + 1, 0)
        total = int(counts.sum())
        if total:
            edge = np.repeat(np.arange(len(xs)), counts)
            first = np.repeat(np.cumsum(counts) - counts, counts)
            row = r_from[edge] + (np.arange(total) - first)
            y = oy + row * sy
            dy = (ye - ys)[edge]
            # Crossing x = num / dy; lattice point i lies left of it iff i < rem / (sx * dy).
            num = xs[edge] * dy + (y - ys[edge]) * (xe - xs)[edge]
            rem = num - ox * dy
            den = sx * dy
            n_left = np.clip(_ceil_div(rem, den), 0, mx)
            np.add.at(crossings, (row, n_left), 1)
            exact = (rem % den == 0) & (rem >= 0) & (rem // den < mx)
            boundary[row[exact], (rem // den)[exact]] = True

    # Horizontal edges: every lattice point on the segment is on the boundary.
    flat = ~slanted
    if flat.any():
        yh = ya[flat]
        on_row = (yh - oy) % sy == 0
        rowh = (yh - oy) // sy
        lo = np.maximum(_ceil_div(np.minimum(xa, xb)[flat] - ox, sx), 0)
        hi = np.minimum((np.maximum(xa, xb)[flat] - ox) // sx, mx - 1)
        keep = on_row & (rowh >= 0) & (rowh < my) & (lo <= hi)
        if keep.any():
            marks = np.zeros((my, mx + 1), np.int64)
            np.add.at(marks, (rowh[keep], lo[keep]), 1)
            np.add.at(marks, (rowh[keep], hi[keep] + 1), -1)
            boundary |= np.cumsum(marks, axis=1)[:, :mx] > 0

    # Vertices (a local y-maximum vertex is on no counted edge row).
    vx, vy = pts[:, 0], pts[:, 1]
    hit = ((vx - ox) % sx == 0) & ((vy - oy) % sy == 0)
    ci, cj = (vx - ox) // sx, (vy - oy) // sy
    hit &= (ci >= 0) & (ci < mx) & (cj >= 0) & (cj < my)
    boundary[cj[hit], ci[hit]] = True

    # Points left of an odd number of crossings are inside (ray cast towards +x).
    right_of = np.cumsum(crossings[:, ::-1], axis=1)[:, ::-1][:, 1:]
    sub = np.where(boundary, ON_EDGE, np.where(right_of % 2 == 1, INSIDE, OUTSIDE)).astype(np.int8)
    out[i_lo : i_hi + 1, j_lo : j_hi + 1] = sub.T
    return out
