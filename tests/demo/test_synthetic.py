import defusedxml.ElementTree as DET
import numpy as np
import pytest
from skimage.color import rgb2hed

from sae1n.datasets.asap_writer import write_asap_xml
from sae1n.demo.paint_tools import CLASS_NAMES
from sae1n.demo.synthetic import generate_slide, render_slide, write_corrupt_slide
from sae1n.errors import ConfigError, InputFileError
from sae1n.wsi.slide import open_slide
from sae1n.wsi.writers import write_pyramidal_tiff


def _fill_mask(shape, polygons, scale):
    import cv2

    mask = np.zeros(shape, np.uint8)
    for poly in polygons:
        pts = np.round(np.asarray(poly.vertices) / scale * 16).astype(np.int32)
        cv2.fillPoly(mask, [pts], 0 if poly.is_exclusion else 1, cv2.LINE_8, 4)
    return mask.astype(bool)


def _parse_asap(path):
    root = DET.parse(path).getroot()
    assert root.tag == "ASAP_Annotations"
    groups = [g.get("Name") for g in root.find("AnnotationGroups")]
    assert groups == ["_0", "_1", "_2"]
    out = []
    for ann in root.find("Annotations"):
        assert ann.get("Type") == "Polygon"
        coords = sorted(ann.find("Coordinates"), key=lambda c: int(c.get("Order")))
        xy = np.array([[float(c.get("X")), float(c.get("Y"))] for c in coords])
        out.append((ann.get("PartOfGroup"), xy))
    return out


@pytest.fixture(scope="module")
def tumor_slide(tmp_path_factory):
    d = tmp_path_factory.mktemp("slide")
    info = generate_slide(
        d / "tumor_001.tif",
        tumor=True,
        size=(2048, 2048),
        seed=11,
        annotation_path=d / "tumor_001.xml",
    )
    return info


def test_same_seed_same_pixels_and_bytes(tmp_path):
    a, layout_a = render_slide((768, 640), tumor=True, seed=5)
    b, layout_b = render_slide((768, 640), tumor=True, seed=5)
    c, _ = render_slide((768, 640), tumor=True, seed=6)
    assert a.shape == (640, 768, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert len(layout_a.polygons) == len(layout_b.polygons)
    for p, q in zip(layout_a.polygons, layout_b.polygons, strict=True):
        np.testing.assert_array_equal(p.vertices, q.vertices)
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 5

    kw = {"tumor": True, "size": (768, 640), "seed": 5}
    generate_slide(tmp_path / "a.tif", annotation_path=tmp_path / "a.xml", **kw)
    generate_slide(tmp_path / "b.tif", annotation_path=tmp_path / "b.xml", **kw)
    assert (tmp_path / "a.tif").read_bytes() == (tmp_path / "b.tif").read_bytes()
    assert (tmp_path / "a.xml").read_bytes() == (tmp_path / "b.xml").read_bytes()


def test_both_backends_open_with_same_levels_and_pixels(tumor_slide):
    with (
        open_slide(tumor_slide.path, backend="openslide") as osl,
        open_slide(tumor_slide.path, backend="tiffslide") as tsl,
    ):
        assert (
            osl.level_dimensions == tsl.level_dimensions == ((2048, 2048), (1024, 1024), (512, 512))
        )
        assert osl.level_downsamples == tsl.level_downsamples == (1.0, 2.0, 4.0)
        for s in (osl, tsl):
            assert s.mpp == pytest.approx(0.5) and s.magnification == pytest.approx(20.0)
        np.testing.assert_array_equal(osl.read_level(2), tsl.read_level(2))
        np.testing.assert_array_equal(
            osl.read_region((700, 900), 0, (300, 200)), tsl.read_region((700, 900), 0, (300, 200))
        )


def test_annotation_matches_the_painted_tumour(tumor_slide):
    info = tumor_slide
    assert info.label == "tumor" and info.annotation is not None
    parsed = _parse_asap(info.annotation)
    assert [g for g, _ in parsed] == [p.group for p in info.polygons]
    assert parsed[0][0] == "_0" and all(g in ("_0", "_1", "_2") for g, _ in parsed)
    for (_, xy), poly in zip(parsed, info.polygons, strict=True):
        np.testing.assert_allclose(xy, poly.vertices, atol=0.06)  # 1-decimal coordinates

    with open_slide(info.path) as slide:
        img = slide.read_level(2)  # downsample 4
    tumour = _fill_mask(img.shape[:2], info.polygons, 4.0)
    glass = (img.min(-1) > 225) & (np.ptp(img.astype(int), axis=-1) < 12)
    normal_tissue = ~glass & ~tumour
    assert tumour.sum() > 500 and normal_tissue.sum() > 5000
    # the lesion lies wholly on tissue
    assert glass[tumour].mean() < 0.01
    h = rgb2hed(img)[..., 0]
    assert h[tumour].mean() > 1.5 * h[normal_tissue].mean()  # haematoxylin-rich
    rgb_t, rgb_n = img[tumour].astype(float), img[normal_tissue].astype(float)
    assert rgb_t.mean() < rgb_n.mean() - 20  # darker
    # less pink, more purple: blue gains on red
    assert (rgb_t[:, 2] - rgb_t[:, 0]).mean() > (rgb_n[:, 2] - rgb_n[:, 0]).mean() + 5


def test_polygons_are_exactly_the_painted_tumour():
    groups = set()
    for seed in (7, 9):  # seed 7 has an exclusion (_2) hole in its largest lesion
        _, layout = render_slide((1536, 1536), tumor=True, seed=seed)
        groups |= {p.group for p in layout.polygons}
        painted = layout.label_map == CLASS_NAMES.index("tumor")
        drawn = _fill_mask(painted.shape, layout.polygons, 1.0)
        iou = (painted & drawn).sum() / (painted | drawn).sum()
        assert iou > 0.995
        assert layout.tumor_fraction == pytest.approx(
            painted.sum() / (layout.label_map > 0).sum(), abs=0.01
        )
    assert groups == {"_0", "_1", "_2"}


def test_layout_fractions_are_plausible():
    for seed in range(3):
        _, normal = render_slide((1536, 1536), tumor=False, seed=seed)
        assert not normal.polygons and normal.tumor_fraction == 0
        assert 0.25 < normal.tissue_fraction < 0.7
        assert set(normal.class_fractions) == set(CLASS_NAMES[1:])
        assert normal.class_fractions["lymph"] + normal.class_fractions["germinal_centre"] > 0.03
        assert normal.class_fractions["fat"] > 0.01
        _, tumour = render_slide((1536, 1536), tumor=True, seed=seed)
        assert 0.005 < tumour.tumor_fraction < 0.6
        assert any(not p.is_exclusion for p in tumour.polygons)


def test_normal_slide_writes_no_annotation(tmp_path):
    info = generate_slide(
        tmp_path / "normal_001.tif",
        size=(512, 512),
        seed=1,
        annotation_path=tmp_path / "normal_001.xml",
    )
    assert info.label == "normal" and info.annotation is None and info.polygons == []
    assert not (tmp_path / "normal_001.xml").exists()
    assert info.path.is_file()


def test_empty_slide_is_all_glass(tmp_path):
    info = generate_slide(tmp_path / "empty.tif", size=(512, 384), empty=True)
    assert info.kind == "empty" and info.tissue_fraction == 0
    with open_slide(info.path) as slide:
        img = slide.read_level(0)
        assert slide.dimensions == (512, 384)
    assert img.min() > 235 and np.ptp(img.astype(int), axis=-1).max() < 8
    with pytest.raises(ConfigError):
        render_slide((512, 512), tumor=True, empty=True)


def test_corrupt_slide_is_rejected_by_both_backends(tmp_path):
    path = write_corrupt_slide(tmp_path / "broken.tif")
    assert 0 < path.stat().st_size <= 200
    for backend in ("openslide", "tiffslide"):
        with pytest.raises(InputFileError, match="broken.tif"):
            open_slide(path, backend=backend)


def test_bad_sizes_and_xml_round_trip(tmp_path):
    with pytest.raises(ConfigError, match="256"):
        render_slide((100, 4000))
    _, layout = render_slide((1024, 1024), tumor=True, seed=2)
    path = write_asap_xml(tmp_path / "x.xml", layout.polygons)
    assert [g for g, _ in _parse_asap(path)] == [p.group for p in layout.polygons]
    # the writer still takes any RGB image
    img = np.full((300, 400, 3), 200, np.uint8)
    out = write_pyramidal_tiff(tmp_path / "flat.tif", img, levels=3)
    with open_slide(out) as slide:
        assert slide.level_dimensions[0] == (400, 300) and slide.level_count == 3
