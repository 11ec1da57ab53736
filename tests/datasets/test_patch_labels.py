import json
import logging
import os

import h5py
import numpy as np
import pandas as pd
import pytest

from sae1n.cli import main
from sae1n.datasets import (
    create_patch_labels,
    patch_size_level0,
    read_annotation,
    read_patch_labels,
    tumor_fractions,
)
from sae1n.errors import ConfigError, InputFileError
from sae1n.io import write_bag
from sae1n.io.provenance import StaleOutputError

from .conftest import rect, write_asap_xml, write_coords

COORDS = np.array([[0, 0], [256, 0], [512, 0], [0, 256], [896, 0]])
CLAM_ATTRS = {
    "patch_size": 128,
    "patch_level": 1,
    "downsample": np.array([2.0, 2.0]),
    "level_dim": [2000, 2000],
    "name": "x",
}


@pytest.fixture
def cohort(tmp_path):
    """create-patches output with two slides; only slide_a has an annotation."""
    write_coords(tmp_path / "run" / "patches" / "slide_a.h5", COORDS, **CLAM_ATTRS)
    write_coords(tmp_path / "run" / "patches" / "slide_b.h5", COORDS[:2], **CLAM_ATTRS)
    ann = tmp_path / "ann"
    ann.mkdir()
    # tumour x in [0, 640), y in [0, 256): patches 0,1 full, patch 2 half; exclusion cuts patch 1 by 1/4
    write_asap_xml(
        ann / "slide_a.xml", [("_0", rect(0, 0, 640, 256)), ("_2", rect(256, 0, 384, 128))]
    )
    return tmp_path


def test_patch_labels_end_to_end_and_resume(cohort, caplog):
    out = cohort / "labels"
    with caplog.at_level(logging.INFO):
        summary = create_patch_labels(cohort / "run", cohort / "ann", out, threshold=0.6)
    coords, fraction, label = read_patch_labels(out / "slide_a.h5")
    np.testing.assert_array_equal(coords, COORDS)
    assert fraction.dtype == np.float32 and label.dtype == np.uint8
    np.testing.assert_allclose(fraction, [1.0, 0.75, 0.5, 0.0, 0.0])
    assert label.tolist() == [1, 1, 0, 0, 0]
    with h5py.File(out / "slide_a.h5") as f:
        assert f.attrs["threshold"] == 0.6
        assert f["coords"].dtype == np.int64
    _, fraction_b, label_b = read_patch_labels(out / "slide_b.h5")
    assert not fraction_b.any() and not label_b.any()
    assert "slide_b: no annotation file" in caplog.text
    assert summary.set_index("slide_id")["annotation"].to_dict() == {
        "slide_a": "slide_a.xml",
        "slide_b": "",
    }
    assert pd.read_csv(out / "summary.csv")["n_tumor"].tolist() == [2, 0]

    # resume: same inputs keep the outputs; a changed annotation or threshold is
    # refused (nothing rewritten) and recomputed with overwrite
    again = create_patch_labels(cohort / "run", cohort / "ann", out, threshold=0.6)
    assert again["status"].tolist() == ["kept", "kept"]
    write_asap_xml(cohort / "ann" / "slide_a.xml", [("_0", rect(0, 0, 1280, 256))])
    os.utime(cohort / "ann" / "slide_a.xml", ns=(1, 1))
    before = (out / "slide_a.h5").read_bytes()
    with pytest.raises(StaleOutputError, match=r"slide_a\.h5[\s\S]*inputs\.annotation"):
        create_patch_labels(cohort / "run", cohort / "ann", out, threshold=0.6)
    assert (out / "slide_a.h5").read_bytes() == before
    changed = create_patch_labels(cohort / "run", cohort / "ann", out, threshold=0.6, overwrite=True)
    assert changed["status"].tolist() == ["written", "kept"]
    assert read_patch_labels(out / "slide_a.h5")[2].tolist() == [1, 1, 1, 0, 1]
    with pytest.raises(StaleOutputError, match=r"settings\.threshold: 0\.6 -> 0\.5"):
        create_patch_labels(cohort / "run", cohort / "ann", out, threshold=0.5)
    lower = create_patch_labels(cohort / "run", cohort / "ann", out, threshold=0.5, overwrite=True)
    assert lower["status"].tolist() == ["written", "written"]


def test_patch_size_comes_from_attributes_or_the_flag(cohort):
    assert patch_size_level0(CLAM_ATTRS) == (256.0, 256.0)
    assert patch_size_level0({"patch_size_level0": 512, **CLAM_ATTRS}) == (512.0, 512.0)
    assert patch_size_level0({"patch_size": 224, "patch_level": 0}) == (224.0, 224.0)
    assert patch_size_level0({}, override=100) == (100.0, 100.0)
    with pytest.raises(InputFileError, match="pass --patch_size"):
        patch_size_level0({"patch_size": 256, "patch_level": 2}, path="p.h5")
    out = cohort / "labels"
    create_patch_labels(
        cohort / "run" / "patches" / "slide_a.h5", cohort / "ann", out, patch_size=128
    )
    # patch 1 is now exactly the excluded square
    np.testing.assert_allclose(read_patch_labels(out / "slide_a.h5")[1], [1, 0, 1, 0, 0])


def test_feature_folders_and_geojson_work_too(tmp_path):
    write_bag(
        tmp_path / "feats",
        "s1",
        np.zeros((3, 4), np.float32),
        COORDS[:3],
        {"patch_size_level0": 256},
        formats=("h5",),
    )
    ann = tmp_path / "ann"
    ann.mkdir()
    feature = {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [rect(0, 0, 384, 256) + [(0, 0)]]},
        "properties": {"classification": {"name": "Cancer"}},
    }
    (ann / "s1.geojson").write_text(
        json.dumps({"type": "FeatureCollection", "features": [feature]})
    )
    create_patch_labels(tmp_path / "feats", ann, tmp_path / "out", classification="Cancer")
    np.testing.assert_allclose(read_patch_labels(tmp_path / "out" / "s1.h5")[1], [1, 0.5, 0])


def test_bad_inputs_are_clear_errors(cohort, tmp_path):
    with pytest.raises(ConfigError, match="threshold"):
        create_patch_labels(cohort / "run", cohort / "ann", tmp_path / "o", threshold=0)
    with pytest.raises(InputFileError, match="annotation folder does not exist"):
        create_patch_labels(cohort / "run", tmp_path / "nope", tmp_path / "o")
    with pytest.raises(InputFileError, match="coords folder does not exist"):
        create_patch_labels(tmp_path / "nope", cohort / "ann", tmp_path / "o")
    write_coords(tmp_path / "empty" / "e.h5", np.zeros((0, 2)), **CLAM_ATTRS)
    with pytest.raises(InputFileError, match="e.h5: the slide has no patches"):
        create_patch_labels(tmp_path / "empty", cohort / "ann", tmp_path / "o")
    write_coords(tmp_path / "noattr" / "n.h5", COORDS)
    with pytest.raises(InputFileError, match="n.h5: no patch size attributes"):
        create_patch_labels(tmp_path / "noattr", cohort / "ann", tmp_path / "o")
    (tmp_path / "trunc").mkdir()
    (tmp_path / "trunc" / "t.h5").write_bytes(b"not hdf5")
    with pytest.raises(InputFileError, match="t.h5: cannot be read as HDF5"):
        create_patch_labels(tmp_path / "trunc", cohort / "ann", tmp_path / "o")
    with h5py.File(tmp_path / "bad_labels.h5", "w") as f:
        f["coords"] = COORDS
        f["tumor_fraction"] = np.full(5, np.nan, np.float32)
        f["label"] = np.zeros(5, np.uint8)
    with pytest.raises(InputFileError, match="outside"):
        read_patch_labels(tmp_path / "bad_labels.h5")


def test_cli_runs_all_three_commands(cohort, capsys):
    rc = main(
        [
            "patch-labels",
            "--coords_dir",
            str(cohort / "run"),
            "--annotation-dir",
            str(cohort / "ann"),
            "--output_dir",
            str(cohort / "labels"),
            "--threshold",
            "0.7",
        ]
    )
    assert rc == 0 and "labelled 2 slide(s)" in capsys.readouterr().out
    assert read_patch_labels(cohort / "labels" / "slide_a.h5")[2].tolist() == [1, 1, 0, 0, 0]

    feats = cohort / "feats" / "h5_files"
    feats.mkdir(parents=True)
    for sid in [
        "normal_001",
        "normal_002",
        "normal_003",
        "tumor_001",
        "tumor_002",
        "tumor_003",
        "test_001",
    ]:
        (feats / f"{sid}.h5").touch()
    rc = main(
        [
            "create-metadata",
            "--task",
            "camelyon16",
            "--feature_dir",
            str(feats),
            "--annotation_dir",
            str(cohort / "ann"),
            "--output_dir",
            str(cohort / "csv"),
            "--output_filename",
            "c16.csv",
        ]
    )
    assert rc == 0 and "7 slides" in capsys.readouterr().out
    rc = main(
        [
            "create-splits",
            "--metadata_path",
            str(cohort / "csv" / "c16.csv"),
            "--output_dir",
            str(cohort / "splits"),
            "--k",
            "3",
            "--seed",
            "42",
            "--task",
            "camelyon16",
        ]
    )
    assert rc == 0 and "splits_2.csv: train 4, val 2, test 1" in capsys.readouterr().out
    assert (
        main(
            [
                "create-splits",
                "--metadata_path",
                str(cohort / "nope.csv"),
                "--output_dir",
                str(cohort),
            ]
        )
        == 1
    )
    assert "nope.csv: file not found" in capsys.readouterr().err


def _tile_coords(folder, slide):
    tiles = sorted(folder.glob(f"{slide}_*.png"))
    assert tiles, f"no tiles of {slide} in {folder}"
    return np.array([[int(v) for v in t.stem.rsplit("_", 2)[1:]] for t in tiles])


def test_real_camelyon16_tumour_tiles_are_tumour(shared_data):
    region = read_annotation(shared_data / "annotations" / "camelyon16_asap_xml" / "tumor_001.xml")
    coords = _tile_coords(shared_data / "tiles" / "camelyon16_didsr_256" / "tumor", "tumor_001")
    fractions = tumor_fractions(coords, 256, region)
    assert fractions.min() >= 0.69, dict(zip(map(tuple, coords), fractions))


def test_real_camelyon16_normal_tiles_have_no_tumour(shared_data):
    region = read_annotation(shared_data / "annotations" / "camelyon16_asap_xml" / "tumor_004.xml")
    coords = _tile_coords(shared_data / "tiles" / "camelyon16_didsr_256" / "normal", "tumor_004")
    assert not region.is_empty
    assert np.all(tumor_fractions(coords, 256, region) == 0)


def test_panda_masks_use_each_slides_provider(tmp_path):
    from PIL import Image

    labels = np.zeros((512, 512, 3), np.uint8)
    labels[0:256, 0:256, 0] = 2  # tumour for Karolinska, benign epithelium for Radboud
    labels[0:256, 256:512, 0] = 5  # Gleason 5 for Radboud
    ann = tmp_path / "masks"
    ann.mkdir()
    for sid in ("rad", "kar"):
        Image.fromarray(labels).save(ann / f"{sid}_mask.png")
        write_coords(
            tmp_path / "patches" / f"{sid}.h5", [[0, 0], [256, 0], [0, 256]], patch_size_level0=256
        )
    providers = tmp_path / "train.csv"
    pd.DataFrame(
        {
            "image_id": ["rad", "kar"],
            "data_provider": ["radboud", "karolinska"],
            "isup_grade": [5, 1],
        }
    ).to_csv(providers, index=False)
    create_patch_labels(tmp_path / "patches", ann, tmp_path / "out", panda_csv=providers)
    assert read_patch_labels(tmp_path / "out" / "rad.h5")[1].tolist() == [0, 1, 0]
    assert read_patch_labels(tmp_path / "out" / "kar.h5")[1].tolist() == [1, 0, 0]
    with pytest.raises(ConfigError, match="data provider"):
        create_patch_labels(tmp_path / "patches", ann, tmp_path / "out2")
