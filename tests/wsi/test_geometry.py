import cv2
import numpy as np
import pytest

from sae1n.wsi.geometry import lattice_polygon_test


def reference(poly, x0, y0, nx, ny, sx, sy):
    return np.array(
        [
            [
                int(np.sign(cv2.pointPolygonTest(poly, (x0 + i * sx, y0 + j * sy), False)))
                for j in range(ny)
            ]
            for i in range(nx)
        ],
        dtype=np.int8,
    )


def random_contours(rng, approx):
    m = np.zeros((40, 40), np.uint8)
    for _ in range(rng.integers(1, 5)):
        c = rng.integers(4, 36, 2)
        cv2.circle(m, (int(c[0]), int(c[1])), int(rng.integers(2, 10)), 255, -1)
    m[rng.random((40, 40)) < 0.06] = 0
    contours, _ = cv2.findContours(m, cv2.RETR_CCOMP, approx)
    return contours


@pytest.mark.parametrize("approx", [cv2.CHAIN_APPROX_NONE, cv2.CHAIN_APPROX_SIMPLE])
def test_matches_opencv_on_segmentation_contours(approx):
    rng = np.random.default_rng(int(approx))
    checked = 0
    for _ in range(8):
        for c in random_contours(rng, approx):
            scale = int(rng.integers(1, 3))
            c = (c * scale).astype(np.int32)
            half = 0.5 * int(rng.integers(0, 2))
            x0, y0 = float(rng.integers(-3, 3)) + half, float(rng.integers(-3, 3)) + half
            sx, sy = int(rng.integers(1, 4)), int(rng.integers(1, 4))
            nx, ny = 44 * scale // sx, 44 * scale // sy
            got = lattice_polygon_test(c, x0, y0, nx, ny, sx, sy)
            np.testing.assert_array_equal(got, reference(c, x0, y0, nx, ny, sx, sy))
            checked += 1
    assert checked > 8


def test_matches_opencv_on_self_intersecting_polygons():
    rng = np.random.default_rng(7)
    for _ in range(30):
        poly = rng.integers(0, 30, (int(rng.integers(3, 10)), 1, 2)).astype(np.int32)
        got = lattice_polygon_test(poly, -1, 0, 33, 31, 1, 1)
        np.testing.assert_array_equal(got, reference(poly, -1, 0, 33, 31, 1, 1))


def test_square_inside_edge_outside():
    sq = np.array([[10, 10], [20, 10], [20, 20], [10, 20]], np.int32)
    res = lattice_polygon_test(sq, 0, 0, 30, 30, 1, 1)
    assert (
        res[15, 15] == 1
        and res[10, 15] == 0
        and res[20, 20] == 0
        and res[21, 15] == -1
        and res[5, 5] == -1
    )
    assert (res == 1).sum() == 9 * 9 and (res == 0).sum() == 40


def test_empty_and_out_of_bbox_lattices():
    sq = np.array([[10, 10], [20, 10], [20, 20], [10, 20]], np.int32)
    assert lattice_polygon_test(sq, 100, 100, 5, 5, 1, 1).tolist() == [[-1] * 5] * 5
    assert lattice_polygon_test(sq, 0, 0, 0, 5, 1, 1).shape == (0, 5)
    assert (lattice_polygon_test(np.zeros((0, 2), np.int32), 0, 0, 3, 3, 1, 1) == -1).all()
    with pytest.raises(ValueError):
        lattice_polygon_test(sq, 0.25, 0, 3, 3, 1, 1)
