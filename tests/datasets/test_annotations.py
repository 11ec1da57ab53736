import json

import numpy as np
import pytest
import shapely

from sae1n.datasets import (
    TumorMask,
    find_annotation,
    read_annotation,
    read_asap_xml,
    read_geojson,
    read_panda_mask,
    tumor_fractions,
)
from sae1n.errors import ConfigError, InputFileError

from .conftest import rect, write_asap_xml


def test_asap_tumour_groups_minus_exclusions(tmp_path):
    path = write_asap_xml(
        tmp_path / "s.xml",
        [
            ("_0", rect(0, 0, 1000, 1000)),
            ("_1", rect(2000, 0, 2500, 500)),
            ("_2", rect(250, 250, 750, 750)),
            ("None", rect(5000, 5000, 6000, 6000)),
        ],
    )
    region = read_asap_xml(path)
    assert region.area == pytest.approx(1000 * 1000 - 500 * 500 + 500 * 500)
    coords = [(0, 0), (250, 250), (875, 0), (200, 200), (2000, 0), (5000, 5000), (-250, 0)]
    fractions = tumor_fractions(coords, 250, region)
    assert fractions == pytest.approx([1.0, 0.0, 0.5, (250**2 - 200**2) / 250**2, 1.0, 0.0, 0.0])


def test_asap_self_intersecting_polygon_is_repaired(tmp_path):
    bow_tie = [(0, 0), (100, 100), (100, 0), (0, 100)]  # two triangles of area 2500
    region = read_asap_xml(write_asap_xml(tmp_path / "b.xml", [("_0", bow_tie)]))
    assert region.is_valid and region.area == pytest.approx(5000)


def test_asap_bad_files(tmp_path):
    bad = tmp_path / "bad.xml"
    bad.write_text("<ASAP_Annotations><Annotations>")
    with pytest.raises(InputFileError, match="bad.xml: not a valid ASAP XML"):
        read_asap_xml(bad)
    with pytest.raises(InputFileError, match="annotation file not found"):
        read_asap_xml(tmp_path / "none.xml")
    bomb = tmp_path / "bomb.xml"
    bomb.write_text(
        '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xx">]><ASAP_Annotations>&x;</ASAP_Annotations>'
    )
    with pytest.raises(InputFileError, match="bomb.xml"):
        read_asap_xml(bomb)
    empty = write_asap_xml(tmp_path / "empty.xml", [("None", rect(0, 0, 10, 10))])
    assert read_asap_xml(empty).is_empty


def _feature(geometry, cls):
    props = {"objectType": "annotation"}
    if cls is not None:
        props["classification"] = cls
    return {"type": "Feature", "geometry": shapely.geometry.mapping(geometry), "properties": props}


def test_geojson_classification_and_exclusion(tmp_path):
    data = {
        "type": "FeatureCollection",
        "features": [
            _feature(shapely.box(0, 0, 100, 100), {"name": "Tumor", "color": [200, 0, 0]}),
            _feature(shapely.box(200, 0, 300, 100), "tumor"),
            _feature(shapely.box(0, 0, 50, 50), {"name": "Exclusion"}),
            _feature(shapely.box(500, 500, 600, 600), {"name": "Stroma"}),
            _feature(shapely.box(700, 700, 800, 800), None),
        ],
    }
    path = tmp_path / "s.geojson"
    path.write_text(json.dumps(data))
    region = read_geojson(path)
    assert region.area == pytest.approx(2 * 100 * 100 - 50 * 50)
    assert read_geojson(path, "Stroma").area == pytest.approx(100 * 100)
    # QuPath can also export a bare list of features
    path.write_text(json.dumps(data["features"][:1]))
    assert read_annotation(path).area == pytest.approx(100 * 100)
    with pytest.raises(
        InputFileError, match=r"classifications found: \['Tumor'\].*--classification"
    ):
        read_geojson(path, "Cancer")
    path.write_text("{not json")
    with pytest.raises(InputFileError, match="s.geojson: not valid JSON"):
        read_geojson(path)


def _write_mask(path, labels, downsamples=(1, 4, 16)):
    import tifffile

    rgb = np.zeros(labels.shape + (3,), np.uint8)
    rgb[..., 0] = labels
    with tifffile.TiffWriter(path) as tif:
        for ds in downsamples:
            tif.write(
                np.ascontiguousarray(rgb[::ds, ::ds]),
                tile=(256, 256),
                photometric="rgb",
                compression="zlib",
                subfiletype=0 if ds == 1 else 1,
            )
    return path


@pytest.fixture
def panda_mask(tmp_path):
    labels = np.zeros((1536, 2048), np.uint8)
    labels[256:768, 512:1024] = 4  # Radboud Gleason 4
    labels[800:900, 100:400] = 2  # Karolinska cancer / Radboud benign epithelium
    labels[0:64, 0:64] = 1
    return _write_mask(tmp_path / "slide_mask.tiff", labels)


def test_panda_mask_provider_values_and_level(panda_mask):
    radboud = read_panda_mask(panda_mask, "radboud")
    assert radboud.tumor.shape == (96, 128) and radboud.scale == (16.0, 16.0)
    coords = [(512, 256), (384, 256), (1000, 256), (100, 800), (0, 0)]
    assert tumor_fractions(coords, 256, radboud) == pytest.approx([1.0, 0.5, 24 / 256, 0.0, 0.0])
    karolinska_full = read_panda_mask(panda_mask, "Karolinska", level=0)
    assert karolinska_full.scale == (1.0, 1.0)
    assert tumor_fractions(coords, 256, karolinska_full) == pytest.approx([0, 0, 0, 100 / 256, 0])
    assert read_panda_mask(panda_mask, tumor_values=(1,)).tumor.sum() == 4 * 4
    with pytest.raises(ConfigError, match="data provider"):
        read_panda_mask(panda_mask)
    with pytest.raises(ConfigError, match="level 7 does not exist"):
        read_panda_mask(panda_mask, "radboud", level=7)


def test_find_annotation_by_format(tmp_path, panda_mask):
    (tmp_path / "a.xml").touch()
    (tmp_path / "b.geojson").touch()
    assert find_annotation(tmp_path, "a").name == "a.xml"
    assert find_annotation(tmp_path, "b").name == "b.geojson"
    assert find_annotation(tmp_path, "slide").name == "slide_mask.tiff"
    assert find_annotation(tmp_path, "a", "geojson") is None
    assert find_annotation(tmp_path, "zzz") is None
    with pytest.raises(ConfigError, match="unknown annotation format"):
        find_annotation(tmp_path, "a", "svg")


def test_vector_fractions_equal_brute_force_overlay():
    rng = np.random.default_rng(0)
    angles = np.sort(rng.uniform(0, 2 * np.pi, 400))
    radius = 3000 * (1 + 0.3 * np.sin(5 * angles)) + rng.normal(0, 40, angles.size)
    blob = shapely.Polygon(np.c_[5000 + radius * np.cos(angles), 5000 + radius * np.sin(angles)])
    region = (
        shapely.make_valid(blob)
        .difference(shapely.Point(5000, 5000).buffer(800))
        .union(shapely.box(9000, 0, 9500, 400))
    )
    coords = rng.integers(0, 10000, (3000, 2))
    expected = (
        shapely.area(
            shapely.intersection(
                shapely.box(coords[:, 0], coords[:, 1], coords[:, 0] + 224, coords[:, 1] + 224),
                region,
            )
        )
        / 224**2
    )
    got = tumor_fractions(coords, 224, region)
    assert 0 < (got == 1).sum() < len(got) and ((got > 0) & (got < 1)).sum() > 20
    np.testing.assert_allclose(got, expected, atol=1e-9)
    # non-square patches (CLAM downsample per axis)
    np.testing.assert_allclose(
        tumor_fractions(coords[:50], (200, 300), region),
        shapely.area(
            shapely.intersection(
                shapely.box(
                    coords[:50, 0], coords[:50, 1], coords[:50, 0] + 200, coords[:50, 1] + 300
                ),
                region,
            )
        )
        / 60000,
        atol=1e-9,
    )


def test_raster_fractions_equal_pixel_counts():
    rng = np.random.default_rng(1)
    tumor = rng.random((60, 80)) < 0.4
    mask = TumorMask(tumor, (8.0, 8.0))
    cells = rng.integers(-2, 78, (200, 2))  # mask-pixel corners, some hanging off the mask
    coords = cells * 8
    padded = np.zeros((70, 90), bool)
    padded[:60, :80] = tumor
    expected = [padded[max(r, 0) : r + 4, max(c, 0) : c + 4].sum() / 16 for c, r in cells]
    np.testing.assert_allclose(tumor_fractions(coords, 32, mask), expected, atol=1e-12)
    with pytest.raises(TypeError):
        tumor_fractions(coords, 32, "not an annotation")
    with pytest.raises(ConfigError, match="patch size"):
        tumor_fractions(coords, -1, mask)


def test_labels_1e5_patches_against_thousands_of_vertices_quickly():
    import time

    angles = np.linspace(0, 2 * np.pi, 5000, endpoint=False)
    radius = 20000 * (1 + 0.1 * np.sin(7 * angles))
    region = shapely.Polygon(
        np.c_[50000 + radius * np.cos(angles), 50000 + radius * np.sin(angles)]
    )
    grid = np.arange(0, 100000, 316)
    coords = np.stack(np.meshgrid(grid, grid), -1).reshape(-1, 2)
    assert len(coords) > 100_000
    start = time.perf_counter()
    fractions = tumor_fractions(coords, 256, region)
    elapsed = time.perf_counter() - start
    # patches cover (256/316)^2 of each grid cell: the covered area scales the same way
    covered = fractions.sum() * 256**2
    assert covered == pytest.approx(region.area * (256 / 316) ** 2, rel=0.02)
    assert elapsed < 15, f"{elapsed:.1f} s for {len(coords)} patches"


# ------------------------------------------------------------ one reader for labels and outlines

from sae1n.datasets.annotations import annotation_outlines  # noqa: E402


def test_outlines_are_the_labelled_region_with_exclusions_as_holes(tmp_path):
    """Heatmap outlines and patch labels come from the same region: an ``_2``
    exclusion inside a tumour is a hole of the outline, not ignored."""
    path = write_asap_xml(
        tmp_path / "s.xml",
        [("_0", rect(0, 0, 1000, 1000)), ("_2", rect(250, 250, 750, 750)), ("_1", rect(2000, 0, 2500, 500))],
    )
    rings = annotation_outlines(path)
    assert len(rings) == 3  # two tumour exteriors + the exclusion hole
    polys = shapely.polygons([shapely.linearrings(r) for r in rings])
    areas = sorted(float(a) for a in shapely.area(polys))
    assert areas == pytest.approx([500 * 500, 500 * 500, 1000 * 1000])
    region = read_asap_xml(path)
    hole = next(r for r in rings if shapely.Polygon(r).area == pytest.approx(250000) and r.min() >= 250)
    assert not region.contains(shapely.Point(hole.mean(axis=0)))
    assert annotation_outlines(tmp_path / "x_mask.tiff", "panda_mask") == []


def test_real_camelyon16_outlines_cover_the_ncrf_polygons(shared_data):
    xml = shared_data / "annotations" / "camelyon16_asap_xml" / "tumor_004.xml"
    ncrf = json.loads(
        (shared_data / "annotations" / "camelyon16_ncrf_json" / "Tumor_004.json").read_text()
    )
    region = read_asap_xml(xml)
    outline = shapely.union_all(
        [shapely.Polygon(r) for r in annotation_outlines(xml) if shapely.Polygon(r).is_valid]
    )
    for p in ncrf["positive"]:
        poly = shapely.make_valid(shapely.Polygon(p["vertices"]))
        # every NCRF tumour polygon lies in the region the labels and the outline share
        assert region.buffer(1).contains(poly.buffer(-1))
        assert outline.buffer(1).contains(poly.buffer(-1))


def test_self_intersecting_geojson_polygon_is_repaired_with_a_warning(tmp_path, caplog):
    import logging

    bow_tie = [[0, 0], [100, 100], [100, 0], [0, 100], [0, 0]]
    path = tmp_path / "s.geojson"
    path.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "geometry": {"type": "Polygon", "coordinates": [bow_tie]},
                        "properties": {"classification": {"name": "Tumor"}},
                    }
                ],
            }
        )
    )
    with caplog.at_level(logging.WARNING):
        region = read_geojson(path)
    assert region.is_valid and region.area == pytest.approx(5000)
    assert "Self-intersection" in caplog.text and "repaired" in caplog.text and "s.geojson" in caplog.text
