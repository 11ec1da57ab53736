import cv2
import numpy as np
import pytest

from sae1n.wsi.patching import (
    check_offsets,
    contour_patch_coords,
    tissue_patch_coords,
    whole_slide_region,
)
from sae1n.wsi.segmentation import TissueContours, find_tissue_contours


def clam_reference(contour, holes, ref, step, dims, contour_fn, use_padding):
    """CLAM's process_contour, written the slow way (one pointPolygonTest per point)."""
    x, y, w, h = cv2.boundingRect(contour)
    stop_x, stop_y = x + w, y + h
    if not use_padding:
        stop_x, stop_y = min(stop_x, dims[0] - ref + 1), min(stop_y, dims[1] - ref + 1)
    half, shift = ref // 2, int(ref // 2 * 0.5)
    out = []
    for px in range(x, stop_x, step):
        for py in range(y, stop_y, step):
            if contour_fn == "basic":
                ok = cv2.pointPolygonTest(contour, (px, py), False) >= 0
            elif contour_fn == "center" or shift == 0:
                ok = cv2.pointPolygonTest(contour, (px + half, py + half), False) >= 0
            else:
                c = (px + half, py + half)
                pts = [
                    (c[0] - shift, c[1] - shift),
                    (c[0] + shift, c[1] + shift),
                    (c[0] + shift, c[1] - shift),
                    (c[0] - shift, c[1] + shift),
                ]
                inside = [cv2.pointPolygonTest(contour, p, False) >= 0 for p in pts]
                ok = all(inside) if contour_fn == "four_pt_hard" else any(inside)
            if ok and not any(
                cv2.pointPolygonTest(hole, (px + ref / 2, py + ref / 2), False) > 0
                for hole in holes
            ):
                out.append((px, py))
    return np.array(out, np.int64).reshape(-1, 2) if len(out) > 1 else np.zeros((0, 2), np.int64)


def random_tissue(seed):
    rng = np.random.default_rng(seed)
    m = np.zeros((120, 160), np.uint8)
    for _ in range(4):
        c = (int(rng.integers(10, 150)), int(rng.integers(10, 110)))
        cv2.ellipse(
            m,
            c,
            (int(rng.integers(8, 40)), int(rng.integers(8, 40))),
            float(rng.uniform(0, 180)),
            0,
            360,
            255,
            -1,
        )
        cv2.circle(m, c, int(rng.integers(2, 8)), 0, -1)
    m = cv2.medianBlur(m, 3)
    contours, holes = find_tissue_contours(
        m, downsample=(4.0, 4.0), a_t=0.01, a_h=0.001, max_n_holes=3
    )
    return contours, holes, (640, 480)


@pytest.mark.parametrize("contour_fn", ["four_pt", "four_pt_hard", "center", "basic"])
@pytest.mark.parametrize("use_padding", [True, False])
def test_matches_clam_reference_exactly(contour_fn, use_padding):
    checked = 0
    for seed in range(3):
        contours, holes, dims = random_tissue(seed)
        for ref, step in [(64, 64), (48, 32), (33, 33)]:
            for cont, hs in zip(contours, holes):
                got = contour_patch_coords(cont, hs, ref, step, dims, contour_fn, use_padding)
                want = clam_reference(cont, hs, ref, step, dims, contour_fn, use_padding)
                np.testing.assert_array_equal(got, want)  # same set, same order
                checked += len(want)
    assert checked > 100


def test_order_is_x_major_per_contour_and_dtype():
    contours, holes, dims = random_tissue(4)
    tissue = TissueContours(contours, holes)
    coords, owner = tissue_patch_coords(tissue, 32, 32, dims)
    assert coords.dtype == np.int64 and owner.dtype == np.int32 and len(coords) > 10
    for k in np.unique(owner):
        c = coords[owner == k]
        assert np.all(np.diff(owner) >= 0)
        order = np.lexsort((c[:, 1], c[:, 0]))
        np.testing.assert_array_equal(order, np.arange(len(c)))


def test_single_patch_contour_is_dropped_like_clam():
    square = np.array([[[10, 10]], [[40, 10]], [[40, 40]], [[10, 40]]], np.int32)
    assert len(contour_patch_coords(square, [], 64, 64, (200, 200))) == 0  # one candidate only
    assert len(contour_patch_coords(square, [], 64, 64, (200, 200), min_patches=1)) == 1
    assert len(contour_patch_coords(square, [], 16, 16, (200, 200))) == 4


def test_hole_excludes_by_centre_only():
    block = np.array([[[0, 0]], [[99, 0]], [[99, 99]], [[0, 99]]], np.int32)
    hole = np.array([[[40, 40]], [[60, 40]], [[60, 60]], [[40, 60]]], np.int32)
    got = {
        tuple(c)
        for c in contour_patch_coords(block, [hole], 20, 20, (100, 100), "four_pt_hard").tolist()
    }
    assert (40, 40) not in got  # centre (50, 50) inside the hole
    assert (20, 40) in got and (60, 40) in got  # centres (30, 50) / (70, 50) outside
    assert len(got) == 24


def test_check_offsets():
    assert check_offsets("four_pt", 256) == [(64, 64), (192, 192), (192, 64), (64, 192)]
    assert check_offsets("center", 256) == [(128, 128)] and check_offsets("basic", 256) == [(0, 0)]
    assert check_offsets("four_pt", 2) == [(1, 1)]  # shift 0: the centre alone
    with pytest.raises(ValueError):
        check_offsets("triangle", 256)


def test_whole_slide_region_grid():
    region = whole_slide_region((1000, 600))
    coords, _ = tissue_patch_coords(region, 256, 256, (1000, 600), "four_pt", use_padding=True)
    assert len(coords) == 4 * 3 and coords.max(0).tolist() == [768, 512]
    coords, _ = tissue_patch_coords(region, 256, 256, (1000, 600), "four_pt", use_padding=False)
    assert len(coords) == 3 * 2 and (coords + 256 <= [1000, 600]).all()
