import cv2
import numpy as np
import pytest

from sae1n.wsi.segmentation import TissueContours
from sae1n.wsi.slide import open_slide
from sae1n.wsi.stitching import coverage_mask, draw_tissue, read_overview, save_jpeg, stitch_patches


def test_coverage_mask_matches_painted_rectangles():
    coords = np.array([[0, 0], [300, 100], [950, 950], [4000, 10]])
    for scale in [(1.0, 1.0), (4.0, 4.0), (3.0, 2.5)]:
        h, w = int(1000 / scale[1]), int(1000 / scale[0])
        ref = np.zeros((h, w), bool)
        for x, y in coords:
            x0, y0 = int(np.ceil(x / scale[0])), int(np.ceil(y / scale[1]))
            ref[y0 : y0 + int(np.ceil(200 / scale[1])), x0 : x0 + int(np.ceil(200 / scale[0]))] = (
                True
            )
        np.testing.assert_array_equal(coverage_mask((h, w), scale, coords, 200), ref)
    assert not coverage_mask((10, 10), (1.0, 1.0), np.zeros((0, 2)), 4).any()


def test_stitch_keeps_patch_pixels_only():
    img = np.full((100, 100, 3), 200, np.uint8)
    out = stitch_patches(img, (2.0, 2.0), np.array([[20, 20]]), 40)
    assert (out[10:30, 10:30] == 200).all() and out[30:, :].max() == 0 and out[:, :10].max() == 0


def test_draw_tissue_colours_contours_and_holes():
    img = np.full((100, 100, 3), 255, np.uint8)
    outer = np.array([[[40, 40]], [[360, 40]], [[360, 360]], [[40, 360]]], np.int32)
    hole = np.array([[[160, 160]], [[240, 160]], [[240, 240]], [[160, 240]]], np.int32)
    drawn = draw_tissue(img, (4.0, 4.0), TissueContours([outer], [[hole]]), line_thickness=8)
    assert tuple(drawn[10, 50]) == (0, 255, 0) and tuple(drawn[40, 50]) == (0, 0, 255)
    assert tuple(drawn[25, 25]) == (255, 255, 255) and (img == 255).all()  # input untouched
    np.testing.assert_array_equal(draw_tissue(img, (4.0, 4.0), None), img)


def test_read_overview_in_strips_matches_one_resize(tissue_slide):
    with open_slide(tissue_slide) as s:
        full, scale = read_overview(s, 0)
        assert full.shape == (1536, 2048, 3) and scale == (1.0, 1.0)
        ref = cv2.resize(full, (512, 384), interpolation=cv2.INTER_AREA)
        for strip_bytes in (2**26, 3 * 2048 * 100):  # one read, or strips of 100 rows
            small, scale = read_overview(s, 0, max_side=512, strip_bytes=strip_bytes)
            assert small.shape == (384, 512, 3) and scale == pytest.approx((4.0, 4.0))
            assert np.abs(small.astype(int) - ref).mean() < 1.0


def test_save_jpeg_is_atomic(tmp_path):
    save_jpeg(tmp_path / "a" / "x.jpg", np.zeros((8, 8, 3), np.uint8))
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["x.jpg"]
