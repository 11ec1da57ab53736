import json

import numpy as np
import pytest
from PIL import Image
from shapely.geometry import shape

from sae1n.errors import ConfigError, InputFileError
from sae1n.viz.galleries import GalleryTile, gallery, read_patch, top_tiles
from sae1n.viz.geojson import export_geojson, read_polygons
from sae1n.wsi.slide import open_slide
from tests.neurons import synth


def test_top_tiles_across_slides():
    scores = {
        "b": (np.array([[0, 0], [64, 0]]), np.array([0.5, 3.0])),
        "a": (np.array([[0, 64], [64, 64], [128, 64]]), np.array([2.0, 0.1, 1.0])),
    }
    tiles = top_tiles(scores, 3)
    assert [(t.slide_id, t.x, t.y, t.score) for t in tiles] == [
        ("b", 64, 0, 3.0),
        ("a", 0, 64, 2.0),
        ("a", 128, 64, 1.0),
    ]
    with pytest.raises(ConfigError):
        top_tiles(scores, 0)


def test_gallery_shows_the_slide_pixels_of_the_top_patches(experiment, tmp_path):
    coh = experiment.cohort
    sid = experiment.shown[0]
    slide_path = coh.slide_dir / f"{sid}.tif"
    png = experiment.figures["gallery"]
    sheet = np.asarray(Image.open(png))
    assert sheet.shape[0] > 128 and sheet.shape[1] > 8 * 128
    # the tumour neuron's top patches are the purple tumour squares of the slides
    first_tile = sheet[22 + 4 + 40 : 22 + 4 + 90, 4 + 40 : 4 + 90].reshape(-1, 3).mean(axis=0)
    np.testing.assert_allclose(first_tile, (90, 40, 140), atol=25)
    with open_slide(slide_path) as slide:
        patch = read_patch(slide, 0, 0, synth.PATCH, 32)
        assert patch.shape == (32, 32, 3)
    tiles = [GalleryTile(sid, 0, 0, 1.0)]
    out = gallery(
        tiles, {sid: slide_path}, tmp_path / "g.png", patch_size=synth.PATCH, tile_px=64, title=None
    )
    img = np.asarray(Image.open(out))
    with open_slide(slide_path) as slide:
        want = slide.read_region((0, 0), 0, (64, 64))
    np.testing.assert_allclose(img[4:68, 4:68].astype(int), want.astype(int), atol=2)
    with pytest.raises(InputFileError, match="no slide file"):
        gallery(
            [GalleryTile("zz", 0, 0, 1.0)], {sid: slide_path}, tmp_path / "h.png", patch_size=64
        )


def test_geojson_export_is_qupath_layout(tmp_path):
    coords = np.array([[0, 0], [256, 0], [512, 768]])
    scores = np.array([0.1, 2.5, 0.7])
    path = export_geojson(
        coords, scores, tmp_path / "s.geojson", 256, measurement="SAE neuron 3", threshold=1.0
    )
    obj = json.loads(path.read_text())
    assert obj["type"] == "FeatureCollection" and len(obj["features"]) == 3
    for f, (x, y), s in zip(obj["features"], coords, scores):
        poly = shape(f["geometry"])
        assert poly.is_valid and poly.area == 256 * 256 and poly.bounds == (x, y, x + 256, y + 256)
        assert f["properties"]["objectType"] == "tile"
        assert f["properties"]["measurements"]["SAE neuron 3"] == pytest.approx(s)
    assert [("classification" in f["properties"]) for f in obj["features"]] == [False, True, False]
    again = export_geojson(
        coords, scores, tmp_path / "t.geojson", 256, measurement="SAE neuron 3", threshold=1.0
    )
    assert again.read_text() == path.read_text()  # stable ids
    rings = read_polygons(path)
    assert len(rings) == 3 and rings[1].tolist()[0] == [256, 0]
    with pytest.raises(ConfigError, match="NaN"):
        export_geojson(coords, np.array([1, np.nan, 2]), tmp_path / "n.geojson", 256)
    (tmp_path / "bad.geojson").write_text("{nope")
    with pytest.raises(InputFileError, match="not valid JSON"):
        read_polygons(tmp_path / "bad.geojson")


def test_fixture_geojson_matches_codes(experiment):
    coh = experiment.cohort
    sid = experiment.shown[0]
    obj = json.loads(experiment.figures["geojson"][0].read_text())
    vals = [
        f["properties"]["measurements"][f"SAE neuron {synth.TUMOR_UNIT}"] for f in obj["features"]
    ]
    np.testing.assert_allclose(vals, coh.codes[sid][:, synth.TUMOR_UNIT], rtol=1e-6)
