import numpy as np
import pytest
from PIL import Image

from sae1n.cli import main
from sae1n.errors import ConfigError, InputFileError
from sae1n.viz.geojson import export_geojson
from sae1n.viz.heatmaps import (
    PatchScores,
    blend,
    draw_outline,
    heatmap,
    infer_patch_size,
    normalize_scores,
    paint_patches,
)
from tests.neurons import synth


def _jet_red(img: np.ndarray) -> int:
    img = img[..., :3].astype(int)
    return int(((img[..., 0] > 180) & (img[..., 1] < 40) & (img[..., 2] < 40)).sum())


def test_paint_and_blend_put_each_score_on_its_square():
    coords = np.array([[0, 0], [100, 0], [0, 100]])
    canvas = paint_patches((20, 20), coords, np.array([0.0, 1.0, 0.5]), patch_size=100, scale=10.0)
    assert canvas[5, 5] == 0.0 and canvas[5, 15] == 1.0 and canvas[15, 5] == 0.5
    assert np.isnan(canvas[15, 15])
    thumb = np.full((20, 20, 3), 255, np.uint8)
    out = blend(thumb, canvas, "jet", alpha=1.0)
    assert tuple(out[5, 15]) == (127, 0, 0)  # jet's top colour
    assert out[5, 5, 2] > 120 and out[5, 5, 0] == 0  # jet's bottom is dark blue
    assert tuple(out[15, 15]) == (255, 255, 255)  # unpainted: the thumbnail
    with pytest.raises(ConfigError, match="colour map"):
        blend(thumb, canvas, "no-such-map")


def test_outline_marks_the_tumour_border_only():
    img = np.full((40, 40, 3), 255, np.uint8)
    out = draw_outline(img, 10.0, 100, positive_coords=np.array([[100, 100], [200, 100]]), width=1)
    black = (out == 0).all(axis=2)
    assert black[10, 10:30].all() and black[19, 10:30].all()  # top and bottom edges
    assert not black[14, 15] and not black[0:9].any()  # inside and outside untouched
    poly = draw_outline(
        img, 10.0, 100, polygons=[np.array([[0, 0], [300, 0], [300, 300]])], color=(255, 0, 0)
    )
    assert (poly[0, 5] == (255, 0, 0)).all()


def test_normalisation_and_patch_size():
    v, lo, hi = normalize_scores(np.array([1.0, 3.0, 5.0]))
    np.testing.assert_allclose(v, [0.2, 0.6, 1.0])
    assert (lo, hi) == (0.0, 5.0)
    v, _, _ = normalize_scores(np.array([10.0, -1.0, 3.0]), "percentile")
    np.testing.assert_allclose(v, [1.0, 0.0, 0.5])
    with pytest.raises(ConfigError):
        normalize_scores(np.ones(3), "none")
    assert infer_patch_size(np.zeros((1, 2)), {"patch_size": 256, "downsample": [2.0, 2.0]}) == 512
    assert infer_patch_size(np.array([[0, 0], [224, 0], [448, 224]])) == 224


def test_heatmap_side_by_side_on_slide(experiment, tmp_path):
    coh = experiment.cohort
    sid = experiment.shown[0]
    slide = coh.slide_dir / f"{sid}.tif"
    act = coh.codes[sid][:, synth.TUMOR_UNIT]
    single = heatmap(
        slide, PatchScores(coh.coords[sid], act, "neuron"), tmp_path / "one.png", cmap="jet"
    )
    rng = np.random.default_rng(0)
    both = heatmap(
        slide,
        [
            PatchScores(coh.coords[sid], act, "neuron"),
            PatchScores(coh.coords[sid], rng.random(len(act)), "attention"),
        ],
        tmp_path / "two.png",
        annotation_coords=coh.coords[sid][coh.fraction[sid] >= 0.5],
        alpha=0.6,
        cmap="jet",
    )
    one, two = np.asarray(Image.open(single)), np.asarray(Image.open(both))
    assert two.shape[1] > 1.7 * one.shape[1]
    assert _jet_red(one) > 100 and _jet_red(two) > 200
    # the CLI-made heatmap of the fixture exists and shows neuron and attention
    png = experiment.exp / "figures" / "heatmaps" / f"{sid}_unit{synth.TUMOR_UNIT}.png"
    # drawn with the default, perceptually uniform viridis: yellow tops, no jet red
    img = np.asarray(Image.open(png))[..., :3].astype(int)
    yellow = int(((img[..., 0] > 200) & (img[..., 1] > 180) & (img[..., 2] < 100)).sum())
    assert png in experiment.figures["heatmaps"] and yellow > 100 and _jet_red(img) < 20


def test_heatmap_input_errors(experiment, tmp_path):
    coh = experiment.cohort
    sid = experiment.shown[0]
    with pytest.raises(InputFileError, match="outside the slide"):
        heatmap(
            coh.slide_dir / f"{sid}.tif",
            PatchScores(coh.coords[sid] + 10_000, np.ones(len(coh.coords[sid]))),
            tmp_path / "x.png",
        )
    with pytest.raises(InputFileError, match="slide file not found"):
        heatmap(
            tmp_path / "none.tif",
            PatchScores(coh.coords[sid], np.ones(len(coh.coords[sid]))),
            tmp_path / "x.png",
        )
    with pytest.raises(ConfigError, match="scores for"):
        PatchScores(np.zeros((3, 2)), np.ones(2))


def test_cli_heatmap_resumes(experiment, tmp_path, capsys):
    coh = experiment.cohort
    sid = coh.split["test"][-1]  # a normal slide
    ann = tmp_path / "ann"
    export_geojson(
        np.array([[64, 64]]), np.ones(1), ann / f"{sid}.geojson", 128
    )  # a square to outline
    args = [
        "heatmap",
        "--feature_dir",
        str(coh.enc_dir),
        "--data_slide_dir",
        str(coh.slide_dir),
        "--slide_ids",
        sid,
        "--exp_dir",
        str(experiment.exp),
        "--output_dir",
        str(tmp_path),
        "--geojson",
        "--gallery",
        "4",
        "--rank",
        "2",
        "--annotation_dir",
        str(ann),
        "--cmap",
        "viridis",
    ]
    assert main(args) == 0
    assert "neuron 5: 1 heatmap" in capsys.readouterr().out  # rank 2 is the normal neuron
    png = tmp_path / "heatmaps" / f"{sid}_unit5.png"
    first = png.stat().st_mtime_ns
    assert (tmp_path / "geojson" / f"{sid}_unit5.geojson").is_file()
    assert (tmp_path / "galleries" / "unit5_top4.png").is_file()
    assert main(args) == 0
    assert png.stat().st_mtime_ns == first  # kept, not redrawn
    assert (
        main(["heatmap", "--feature_dir", str(coh.enc_dir), "--data_slide_dir", str(coh.slide_dir)])
        == 1
    )
    assert "--output_dir or --exp_dir" in capsys.readouterr().err


def test_pictures_carry_provenance_and_stale_ones_are_refused(experiment, tmp_path, capsys):
    from sae1n.io.provenance import read_provenance

    coh = experiment.cohort
    sid = coh.split["test"][0]
    base = [
        "heatmap", "--feature_dir", str(coh.enc_dir), "--data_slide_dir", str(coh.slide_dir),
        "--slide_ids", sid, "--unit", str(synth.TUMOR_UNIT), "--output_dir", str(tmp_path),
        "--gallery", "4",
    ]
    assert main(base) == 0
    png = tmp_path / "heatmaps" / f"{sid}_unit{synth.TUMOR_UNIT}.png"
    prov = read_provenance(png)
    assert prov.kind == "heatmap" and prov.settings["unit"] == synth.TUMOR_UNIT
    assert prov.settings["slide_id"] == sid and prov.settings["settings"]["cmap"] == "viridis"
    assert read_provenance(tmp_path / "galleries" / f"unit{synth.TUMOR_UNIT}_top4.png").kind == "gallery"
    first = png.stat().st_mtime_ns
    assert main(base) == 0 and png.stat().st_mtime_ns == first  # current: kept
    capsys.readouterr()
    # another setting: refused, nothing redrawn, the difference named
    assert main([*base, "--cmap", "jet"]) == 1
    err = capsys.readouterr().err
    assert "settings.settings.cmap" in err and "--overwrite" in err
    assert png.stat().st_mtime_ns == first
    assert main([*base, "--cmap", "jet", "--overwrite"]) == 0
    assert read_provenance(png).settings["settings"]["cmap"] == "jet"
