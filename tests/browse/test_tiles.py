"""Overlay painting and the deep-zoom grid."""

import numpy as np

from sae1n.browse.tiles import colorize, colormap_lut, paint_tile, pyramid_levels
from sae1n.viz.heatmaps import paint_patches


def test_pyramid_levels_halve_to_one_pixel():
    levels = pyramid_levels(1000, 600)
    assert levels[0] == (1, 1) and levels[-1] == (1000, 600)
    assert levels[-2] == (500, 300) and levels[-3] == (250, 150)


def test_paint_tile_vectorised_matches_the_slice_painter():
    # many small patches take the scatter path; it must paint what paint_patches paints
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:30, 0:30]
    coords = np.stack([xs.ravel() * 50 + 7, ys.ravel() * 50 + 3], 1)
    vals = rng.random(len(coords))
    fast = paint_tile(coords, vals, 50, (0.0, 0.0), 6.0, (256, 256))
    ref = paint_patches((256, 256), coords, vals, 50, 6.0)
    assert np.isnan(fast).sum() == np.isnan(ref).sum() > 0
    np.testing.assert_allclose(np.nan_to_num(fast), np.nan_to_num(ref), atol=1e-6)


def test_paint_tile_offsets_by_origin_and_highest_value_wins():
    coords = np.array([[100, 100], [120, 100]])
    canvas = paint_tile(coords, np.array([0.2, 0.9]), 40, (100.0, 100.0), 1.0, (64, 64))
    assert canvas[0, 0] == np.float32(0.2)
    assert canvas[10, 30] == np.float32(0.9)  # overlap: 0.9 wins
    assert np.isnan(canvas[50, 5])


def test_colorize_threshold_and_colour_map():
    lut = colormap_lut("viridis")
    canvas = np.array([[np.nan, 0.1], [0.5, 1.0]], np.float32)
    rgba = colorize(canvas, lut, threshold=0.3)
    assert rgba[0, 0, 3] == 0 and rgba[0, 1, 3] == 0  # empty and below threshold
    assert rgba[1, 0, 3] == 255 and tuple(rgba[1, 1, :3]) == tuple(lut[255, :3])
    assert tuple(colormap_lut("jet")[0, :3]) != tuple(lut[0, :3])
