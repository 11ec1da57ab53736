import json
import shutil

import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from sae1n.cli import main
from sae1n.wsi.patch_files import read_patch, read_patch_file
from sae1n.wsi.patch_slides import create_patches
from sae1n.wsi.process_list import PROCESS_LIST_NAME
from sae1n.wsi.slide import open_slide

from .conftest import HEIGHT, HOLE, WIDTH, tissue_truth

CLAM_ATTRS = {
    "patch_size",
    "patch_level",
    "downsample",
    "downsampled_level_dim",
    "level_dim",
    "name",
}


@pytest.fixture
def one_slide(tmp_path, tissue_slide):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(tissue_slide, src / "tissue.svs")
    return src


def test_cmu_reproduces_clam_exactly(shared_data, tmp_path):
    src = shared_data / "wsi" / "CMU-1-Small-Region.svs"
    results = {}
    for backend in ("openslide", "tiffslide"):
        df = create_patches(
            src,
            tmp_path / backend,
            patch_size=256,
            patch_level=0,
            preset="bwh_biopsy",
            backend=backend,
        )
        assert df["status"].tolist() == ["processed"]
        coords, attrs = read_patch_file(tmp_path / backend / "patches" / "CMU-1-Small-Region.h5")
        results[backend] = coords
        assert len(coords) == 50 and coords.dtype == np.int64
        assert coords[:3].tolist() == [[320, 838], [320, 2630], [576, 1862]]
        assert (
            CLAM_ATTRS <= set(attrs)
            and attrs["patch_size"] == 256
            and attrs["name"] == "CMU-1-Small-Region"
        )
        assert list(attrs["level_dim"]) == [2220, 2967] and attrs["level0_mpp"] == pytest.approx(
            0.499
        )
        for sub in ("masks", "stitches"):
            assert Image.open(tmp_path / backend / sub / "CMU-1-Small-Region.jpg").size == (
                2220,
                2967,
            )
    np.testing.assert_array_equal(results["openslide"], results["tiffslide"])


def test_almost_empty_flat_tiff_does_not_crash(shared_data, tmp_path):
    df = create_patches(shared_data / "wsi" / "kidney-48-5.tif", tmp_path, preset="bwh_biopsy")
    assert df["status"].tolist() == ["no_tissue"] and "no tissue" in df["reason"][0]
    assert (tmp_path / "masks" / "kidney-48-5.jpg").is_file() and not (
        tmp_path / "patches" / "kidney-48-5.h5"
    ).exists()


def test_generated_slide_patches_cover_tissue_and_skip_hole(one_slide, tmp_path):
    out = tmp_path / "out"
    df = create_patches(one_slide, out, patch_size=128, preset="bwh_biopsy")
    row = df.iloc[0]
    assert (row["status"], row["n_contours"], row["seg_level"]) == ("processed", 2, 3)
    coords, attrs = read_patch_file(out / "patches" / "tissue.h5")
    assert row["n_patches"] == len(coords) and attrs["patch_size_level0"] == 128
    tissue, hole = tissue_truth()
    # every point well inside the tissue (and away from the hole) lies in some patch
    inner = tissue.copy()
    inner[[0, -1], :] = inner[:, [0, -1]] = False
    dist = _distance(inner)
    hole_dist = _distance(~hole)
    ys, xs = np.nonzero((dist > 110) & (hole_dist > 200))
    pick = np.random.default_rng(0).choice(len(xs), 500, replace=False)
    pts = np.stack([xs[pick], ys[pick]], 1)
    inside_patch = (
        ((pts[:, None, :] >= coords[None]) & (pts[:, None, :] < coords[None] + 128)).all(-1).any(1)
    )
    assert inside_patch.all()
    # no patch centre inside the (slightly shrunk) hole, no patch far from tissue
    centres = coords + 64
    assert not (_distance(hole)[centres[:, 1], centres[:, 0]] > 16).any()
    near = _distance(~tissue)  # distance to tissue
    assert (
        near[np.clip(centres[:, 1], 0, HEIGHT - 1), np.clip(centres[:, 0], 0, WIDTH - 1)]
        < 64 * 1.5 + 24
    ).all()
    assert 0.8 < len(coords) * 128**2 / tissue.sum() < 1.6
    gj = json.loads((out / "geojson" / "tissue.geojson").read_text())
    assert len(gj["features"]) == 2
    assert Image.open(out / "stitches" / "tissue.jpg").size == (WIDTH // 8, HEIGHT // 8)
    assert Image.open(out / "masks" / "tissue.jpg").size == (WIDTH // 8, HEIGHT // 8)
    assert (out / PROCESS_LIST_NAME).is_file()


def _distance(mask):
    import cv2

    return cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)


def test_backends_give_identical_coordinates(one_slide, tmp_path):
    got = {}
    for backend in ("openslide", "tiffslide"):
        create_patches(
            one_slide,
            tmp_path / backend,
            patch_size=96,
            preset="bwh_biopsy",
            backend=backend,
            stitch=False,
        )
        got[backend] = read_patch_file(tmp_path / backend / "patches" / "tissue.h5")[0]
    assert len(got["openslide"]) > 50
    np.testing.assert_array_equal(got["openslide"], got["tiffslide"])


def test_patch_level_and_physical_scale_agree(one_slide, tmp_path):
    create_patches(
        one_slide,
        tmp_path / "lvl",
        patch_size=128,
        patch_level=1,
        preset="bwh_biopsy",
        stitch=False,
    )
    by_level, a = read_patch_file(tmp_path / "lvl" / "patches" / "tissue.h5")
    assert (a["patch_level"], a["patch_size"], a["patch_size_level0"], list(a["downsample"])) == (
        1,
        128,
        256,
        [2.0, 2.0],
    )
    assert "target_mpp" not in a
    for kw in (
        {"target_mpp": 1.0},
        {"magnification": 10},
        {"target_mpp": 0.99},
    ):  # 0.99 snaps to 2x
        out = tmp_path / str(kw)
        create_patches(one_slide, out, patch_size=128, preset="bwh_biopsy", stitch=False, **kw)
        coords, b = read_patch_file(out / "patches" / "tissue.h5")
        np.testing.assert_array_equal(coords, by_level)
        assert (b["patch_level"], b["patch_size"], b["patch_size_level0"], b["level0_mpp"]) == (
            1,
            128,
            256,
            0.5,
        )
        assert b["target_mpp"] == pytest.approx(kw.get("target_mpp", 1.0))
    # a physical scale between levels: 0.75 um/px -> 192 level-0 pixels read at level 0, resized to 128
    create_patches(
        one_slide,
        tmp_path / "mid",
        patch_size=128,
        preset="bwh_biopsy",
        target_mpp=0.75,
        stitch=False,
    )
    coords, c = read_patch_file(tmp_path / "mid" / "patches" / "tissue.h5")
    assert (c["patch_level"], c["patch_size_level0"]) == (0, 192)
    assert (
        len(np.unique(coords[:, 0] % 192)) <= 2 and len(np.unique(coords[:, 1] % 192)) <= 2
    )  # one grid per contour
    with open_slide(one_slide / "tissue.svs") as s:
        patch = read_patch(s, coords[0], c)
        assert patch.shape == (128, 128, 3) and patch.dtype == np.uint8
        lvl_patch = read_patch(s, by_level[0], a)
        np.testing.assert_array_equal(lvl_patch, s.read_region(tuple(by_level[0]), 1, (128, 128)))


def test_failures_are_recorded_and_batch_continues(slide_dir, tmp_path):
    df = create_patches(slide_dir, tmp_path, preset="bwh_biopsy", target_mpp=0.5)
    status = dict(zip(df["slide_id"], df["status"]))
    reason = dict(zip(df["slide_id"], df["reason"]))
    assert status == {
        "blank.svs": "no_tissue",
        "corrupt.svs": "failed",
        "nompp.svs": "failed",
        "tissue.svs": "processed",
        "truncated.tif": "failed",
    }
    assert "corrupt.svs" in reason["corrupt.svs"] and "truncated.tif" in reason["truncated.tif"]
    assert "nompp.svs" in reason["nompp.svs"] and "--patch_level" in reason["nompp.svs"]
    assert (tmp_path / "patches" / "tissue.h5").is_file() and not (
        tmp_path / "patches" / "blank.h5"
    ).exists()
    written = pd.read_csv(tmp_path / PROCESS_LIST_NAME)
    assert written["status"].tolist() == df["status"].tolist() and (written["process"] == 0).all()


def test_too_large_segmentation_level_is_failed_seg(one_slide, tmp_path, monkeypatch):
    import sae1n.wsi.patch_slides as cp

    monkeypatch.setattr(cp, "MAX_SEG_PIXELS", 1000)
    df = create_patches(one_slide, tmp_path)
    assert df["status"].tolist() == ["failed_seg"] and "too large" in df["reason"][0]


def test_resume_skip_redo_and_corrupt_output(one_slide, tmp_path):
    df = create_patches(one_slide, tmp_path, preset="bwh_biopsy")
    n = int(df["n_patches"][0])
    h5 = tmp_path / "patches" / "tissue.h5"
    mtime = h5.stat().st_mtime_ns
    df = create_patches(one_slide, tmp_path, preset="bwh_biopsy")
    assert (
        df["status"].tolist() == ["already_exist"]
        and int(df["n_patches"][0]) == n
        and h5.stat().st_mtime_ns == mtime
    )
    df = create_patches(one_slide, tmp_path, preset="bwh_biopsy", auto_skip=False)
    assert df["status"].tolist() == ["processed"]
    h5.write_bytes(b"not hdf5")  # a broken output is redone, not trusted
    df = create_patches(one_slide, tmp_path, preset="bwh_biopsy")
    assert df["status"].tolist() == ["processed"] and len(read_patch_file(h5)[0]) == n
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]


def test_process_list_gives_per_slide_parameters(slide_dir, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("tissue.svs", "blank.svs"):
        shutil.copy(slide_dir / name, src / name)
    create_patches(src, tmp_path / "a", patch_size=128, preset="bwh_biopsy")
    full = read_patch_file(tmp_path / "a" / "patches" / "tissue.h5")[0]
    plist = pd.read_csv(tmp_path / "a" / PROCESS_LIST_NAME)
    plist["process"] = [0, 1]  # blank.svs is not re-run, tissue.svs is, with one contour excluded
    plist.loc[plist["slide_id"] == "tissue.svs", "exclude_ids"] = "1"
    plist = plist[
        ["slide_id", "process", "exclude_ids", "status"]
    ]  # other columns come from the preset
    (tmp_path / "b").mkdir()
    plist.to_csv(tmp_path / "b" / "mine.csv", index=False)
    df = create_patches(
        src, tmp_path / "b", patch_size=128, preset="bwh_biopsy", process_list="mine.csv"
    )
    assert df.set_index("slide_id")["status"].to_dict() == {
        "blank.svs": "no_tissue",
        "tissue.svs": "processed",
    }
    assert int(df.set_index("slide_id")["n_contours"]["tissue.svs"]) == 1
    fewer = read_patch_file(tmp_path / "b" / "patches" / "tissue.h5")[0]
    assert 0 < len(fewer) < len(full) and {tuple(c) for c in fewer.tolist()} <= {
        tuple(c) for c in full.tolist()
    }
    assert not (tmp_path / "b" / "masks" / "blank.jpg").exists()
    missing = pd.DataFrame({"slide_id": ["gone.svs"]})
    df = create_patches(src, tmp_path / "c", process_list=missing)
    assert df["status"].tolist() == ["failed"] and "not found" in df["reason"][0]


def test_seg_only_and_patch_without_seg(one_slide, tmp_path):
    df = create_patches(one_slide, tmp_path / "seg", patch=False, stitch=False, preset="bwh_biopsy")
    assert df["status"].tolist() == ["processed"] and not (tmp_path / "seg" / "patches").exists()
    assert (tmp_path / "seg" / "masks" / "tissue.jpg").is_file()
    df = create_patches(one_slide, tmp_path / "grid", seg=False, patch_size=512, stitch=False)
    coords, _ = read_patch_file(tmp_path / "grid" / "patches" / "tissue.h5")
    assert len(coords) == (WIDTH // 512) * (HEIGHT // 512)


def test_cli_create_patches(one_slide, tmp_path, capsys):
    rc = main(
        [
            "create-patches",
            "--source",
            str(one_slide),
            "--save_dir",
            str(tmp_path),
            "--patch_size",
            "256",
            "--patch_level",
            "0",
            "--preset",
            "/elsewhere/CLAM/presets/bwh_biopsy.csv",
            "--seg",
            "--patch",
            "--stitch",
        ]
    )
    assert rc == 0
    assert "processed 1" in capsys.readouterr().out
    with h5py.File(tmp_path / "patches" / "tissue.h5") as f:
        assert f["coords"].shape[1] == 2 and f["coords"].attrs["patch_size"] == 256
    rc = main(
        [
            "create-patches",
            "--source",
            str(one_slide),
            "--save-dir",
            str(tmp_path),
            "--seg",
            "--patch",
            "--no-auto-skip",
            "--target-mpp",
            "1",
            "--preset",
            "bwh_biopsy",
        ]
    )
    assert rc == 0 and "processed 1" in capsys.readouterr().out
    with h5py.File(tmp_path / "patches" / "tissue.h5") as f:
        assert f["coords"].attrs["target_mpp"] == 1.0
    # a redo that finds no tissue (CLAM's default a_t=100 is too large here) removes the stale patch file
    assert (
        main(
            [
                "create-patches",
                "--source",
                str(one_slide),
                "--save_dir",
                str(tmp_path),
                "--seg",
                "--patch",
                "--no_auto_skip",
            ]
        )
        == 0
    )
    assert (
        "no_tissue" in capsys.readouterr().out and not (tmp_path / "patches" / "tissue.h5").exists()
    )
    assert (
        main(
            [
                "create-patches",
                "--source",
                str(one_slide),
                "--save_dir",
                str(tmp_path),
                "--target_mpp",
                "1",
                "--magnification",
                "20",
            ]
        )
        == 1
    )
    assert "not both" in capsys.readouterr().err
    assert (
        main(["create-patches", "--source", str(tmp_path / "nowhere"), "--save_dir", str(tmp_path)])
        == 1
    )
    assert "nowhere" in capsys.readouterr().err
    # a slide that fails: reason printed, exit status 1 when nothing succeeded
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.svs").write_bytes(b"junk")
    assert (
        main(
            [
                "create-patches",
                "--source",
                str(tmp_path / "bad"),
                "--save_dir",
                str(tmp_path / "bad_out"),
                "--seg",
                "--patch",
            ]
        )
        == 1
    )
    assert "x.svs: failed" in capsys.readouterr().out


def test_hole_is_in_geojson(one_slide, tmp_path):
    create_patches(one_slide, tmp_path, preset="bwh_biopsy", stitch=False)
    gj = json.loads((tmp_path / "geojson" / "tissue.geojson").read_text())
    rings = [f["geometry"]["coordinates"] for f in gj["features"]]
    assert sorted(len(r) for r in rings) == [1, 2]
    hole_ring = np.array([r for r in rings if len(r) == 2][0][1])
    assert np.abs(np.hypot(*(hole_ring - HOLE[0]).T) - HOLE[1]).max() < 24
