"""extract-features end to end on generated slides (handcrafted encoder)."""

from __future__ import annotations

import logging

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from sae1n.cli import main
from sae1n.encoders import extract_features, get_encoder
from sae1n.encoders.extract import STATUS_FILE
from sae1n.io import feature_paths, read_bag
from sae1n.wsi.slide import open_slide

from .conftest import grid, write_patch_h5


def _run(cohort, **kw):
    kw.setdefault("num_workers", 0)
    return extract_features(
        cohort["h5_dir"],
        cohort["slide_dir"],
        cohort["feat_dir"],
        model_name="handcrafted",
        slide_ext=".tif",
        batch_size=6,
        device="cpu",
        **kw,
    )


def test_clam_layout_coords_and_features(cohort):
    s = _run(cohort)
    assert [r.status for r in s.results] == ["extracted", "extracted"] and s.dim == 64
    paths = feature_paths(cohort["feat_dir"])
    assert set(paths) == {"slide_a", "slide_b"}
    enc = get_encoder("handcrafted", device="cpu")
    for sid in paths:
        bag = read_bag(cohort["feat_dir"] / "h5_files" / f"{sid}.h5", expected_dim=64)
        pt = read_bag(cohort["feat_dir"] / "pt_files" / f"{sid}.pt", expected_dim=64)
        with h5py.File(cohort["h5_dir"] / "patches" / f"{sid}.h5") as f:
            coords = f["coords"][()]
        np.testing.assert_array_equal(bag.coords, coords)  # one row per coordinate, same order
        np.testing.assert_array_equal(bag.features, pt.features)
        assert (
            bag.attrs["patch_size"] == 256
            and bag.attrs["patch_level"] == 0
            and bag.attrs["encoder"] == "handcrafted"
        )
        # the same numbers as encoding one read_region per patch
        with open_slide(cohort["slide_dir"] / f"{sid}.tif") as slide:
            ref = np.stack([slide.read_region((int(x), int(y)), 0, (256, 256)) for x, y in coords])
        np.testing.assert_allclose(bag.features, enc.encode_numpy(ref), rtol=1e-5, atol=1e-5)
    status = pd.read_csv(cohort["feat_dir"] / STATUS_FILE)
    assert status["status"].tolist() == ["extracted", "extracted"] and status[
        "n_patches"
    ].tolist() == [16, 16]


def test_resume_skips_valid_outputs_and_redoes_bad_ones(cohort):
    _run(cohort)
    h5 = cohort["feat_dir"] / "h5_files" / "slide_a.h5"
    before = read_bag(h5).features
    s = _run(cohort)
    assert [r.status for r in s.results] == ["skipped", "skipped"]
    h5.write_bytes(b"truncated")  # e.g. a copy that broke
    s = _run(cohort)
    assert [r.status for r in s.results] == ["extracted", "skipped"]
    np.testing.assert_array_equal(read_bag(h5).features, before)
    s = _run(cohort, auto_skip=False)
    assert [r.status for r in s.results] == ["extracted", "extracted"]
    assert not list(cohort["feat_dir"].rglob(".*tmp*"))  # no temporary leftovers


def test_worker_processes_give_identical_features(cohort):
    _run(cohort, num_workers=2, csv_path=None)
    a = read_bag(cohort["feat_dir"] / "h5_files" / "slide_b.h5").features
    _run(cohort, num_workers=0, auto_skip=False)
    np.testing.assert_array_equal(
        read_bag(cohort["feat_dir"] / "h5_files" / "slide_b.h5").features, a
    )


def test_failures_are_recorded_and_the_batch_goes_on(cohort, caplog, tmp_path):
    patches = cohort["h5_dir"] / "patches"
    write_patch_h5(patches / "no_slide.h5", grid(512, 256))
    (patches / "corrupt.h5").write_bytes(b"not hdf5")
    write_patch_h5(patches / "empty.h5", np.zeros((0, 2)))
    # a slide whose JPEG tiles are damaged
    import tifffile

    data = bytearray((cohort["slide_dir"] / "slide_a.tif").read_bytes())
    with tifffile.TiffFile(cohort["slide_dir"] / "slide_a.tif") as t:
        off, cnt = t.pages[0].dataoffsets[5], t.pages[0].databytecounts[5]
    data[off + 100 : off + cnt - 10] = bytes(cnt - 110)
    slide_dir = tmp_path / "slides2"
    slide_dir.mkdir()
    (slide_dir / "damaged.tif").write_bytes(bytes(data))
    for name in ("slide_b", "empty"):
        (slide_dir / f"{name}.tif").symlink_to(cohort["slide_dir"] / "slide_b.tif")
    write_patch_h5(patches / "damaged.h5", grid(1024, 256))
    cohort = {**cohort, "slide_dir": slide_dir}
    with caplog.at_level(logging.WARNING):
        s = _run(cohort)
    got = {r.slide_id: r for r in s.results}
    assert got["slide_b"].status == "extracted"
    assert got["empty"].status == "empty" and "no patches" in caplog.text
    empty = read_bag(cohort["feat_dir"] / "h5_files" / "empty.h5", allow_empty=True)
    assert empty.features.shape == (0, 64) and empty.coords.shape == (0, 2)
    assert got["no_slide"].status == "failed" and "slide file not found" in got["no_slide"].reason
    assert got["corrupt"].status == "failed" and "corrupt.h5" in got["corrupt"].reason
    assert got["damaged"].status == "failed" and "failed twice" in got["damaged"].reason
    assert got["slide_a"].status == "failed"  # its slide is not in this folder
    assert not (cohort["feat_dir"] / "h5_files" / "damaged.h5").exists()
    status = pd.read_csv(cohort["feat_dir"] / STATUS_FILE, keep_default_na=False).set_index(
        "slide_id"
    )
    assert (
        status.loc["damaged", "status"] == "failed"
        and "failed twice" in status.loc["damaged", "reason"]
    )


def test_clam_process_list_csv_and_shards(cohort, tmp_path):
    csv = tmp_path / "process_list_autogen.csv"
    pd.DataFrame(
        {
            "slide_id": ["slide_b.tif", "gone.tif"],
            "process": [1, 1],
            "status": ["processed", "no_tissue"],
        }
    ).to_csv(csv, index=False)
    s = _run(cohort, csv_path=csv)
    assert [(r.slide_id, r.status) for r in s.results] == [
        ("slide_b", "extracted"),
        ("gone", "no_patches"),
    ]
    feat0, feat1 = tmp_path / "f0", tmp_path / "f1"
    s0 = _run({**cohort, "feat_dir": feat0}, shard=(0, 2))
    s1 = _run({**cohort, "feat_dir": feat1}, shard=(1, 2))
    assert sorted(r.slide_id for r in s0.results + s1.results) == ["slide_a", "slide_b"]
    assert (feat0 / "extraction_status.rank0-of-2.csv").is_file()


def test_custom_registry_entry_is_one_small_entry(cohort, monkeypatch):
    from sae1n.encoders import EncoderSpec, register_encoder, registry
    from sae1n.encoders.base import EncoderModel

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # undone after the test

    class MeanColour(EncoderModel):
        dim = 3

        def forward(self, x):
            return x.mean(dim=(2, 3))

    register_encoder(
        EncoderSpec(
            name="test_mean_colour",
            dim=3,
            input_size=32,
            mean=None,
            std=None,
            builder=lambda spec, w, arch: MeanColour(),
            needs_weights=False,
        ),
        replace=True,
    )
    s = extract_features(
        cohort["h5_dir"],
        cohort["slide_dir"],
        cohort["feat_dir"],
        model_name="test_mean_colour",
        slide_ext=".tif",
        num_workers=0,
    )
    f = read_bag(cohort["feat_dir"] / "h5_files" / "slide_a.h5").features
    assert s.dim == 3 and f.shape == (16, 3) and ((f > 0) & (f < 1)).all()


def test_cli_flags_and_exit_codes(cohort, capsys):
    args = [
        "extract-features",
        "--data_h5_dir",
        str(cohort["h5_dir"]),
        "--data_slide_dir",
        str(cohort["slide_dir"]),
        "--feat-dir",
        str(cohort["feat_dir"]),
        "--slide_ext",
        ".tif",
        "--model_name",
        "handcrafted",
        "--batch_size",
        "8",
        "--num_workers",
        "0",
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    assert "2 extracted" in capsys.readouterr().out
    assert main([*args, "--no_auto_skip", "--shard", "0/2"]) == 0
    assert "1 extracted" in capsys.readouterr().out
    assert main([*args, "--model_name", "uni_v1"]) == 1  # no weights: one clear error
    err = capsys.readouterr().err
    assert "UNI_CKPT_PATH" in err and "--checkpoint" in err
    write_patch_h5(cohort["h5_dir"] / "patches" / "missing_slide.h5", grid(512, 256))
    assert main(args) == 1
    assert "failed missing_slide" in capsys.readouterr().out


def test_missing_weights_and_bad_inputs_raise_one_clear_error(cohort, tmp_path, monkeypatch):
    from sae1n.errors import ConfigError, InputFileError, Sae1nError

    with pytest.raises(Sae1nError, match="CONCH_CKPT_PATH"):
        get_encoder("conch_v1")
    monkeypatch.setenv("UNI_CKPT_PATH", str(tmp_path / "uni.bin"))
    with pytest.raises(InputFileError, match=r"uni\.bin.*UNI_CKPT_PATH"):
        get_encoder("uni_v1")
    with pytest.raises(ConfigError, match="available: clip_vit_b16"):
        get_encoder("nope")
    with pytest.raises(InputFileError, match="slide folder does not exist"):
        extract_features(
            cohort["h5_dir"], tmp_path / "none", tmp_path / "f", model_name="handcrafted"
        )
    with pytest.raises(InputFileError, match="patches/"):
        extract_features(tmp_path, cohort["slide_dir"], tmp_path / "f", model_name="handcrafted")


def test_cmu_slide_create_patches_then_extract(shared_data, tmp_path):
    """The issue's chain on the real OpenSlide test slide."""
    svs = shared_data / "wsi" / "CMU-1-Small-Region.svs"
    if not svs.is_file():
        pytest.skip(f"{svs} not found")
    src = tmp_path / "src"
    src.mkdir()
    (src / svs.name).symlink_to(svs)
    out = tmp_path / "clam"
    assert (
        main(
            [
                "create-patches",
                "--source",
                str(src),
                "--save_dir",
                str(out),
                "--patch_size",
                "256",
                "--patch_level",
                "0",
                "--preset",
                "bwh_biopsy",
                "--seg",
                "--patch",
            ]
        )
        == 0
    )
    feat = out / "features_handcrafted"
    assert (
        main(
            [
                "extract-features",
                "--data_h5_dir",
                str(out),
                "--data_slide_dir",
                str(src),
                "--csv_path",
                str(out / "process_list_autogen.csv"),
                "--feat_dir",
                str(feat),
                "--model_name",
                "handcrafted",
                "--batch_size",
                "32",
                "--num_workers",
                "0",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    with h5py.File(out / "patches" / "CMU-1-Small-Region.h5") as f:
        coords = f["coords"][()]
    for ft in ("h5", "pt"):
        bag = read_bag(feature_paths(feat, ft)["CMU-1-Small-Region"], expected_dim=64)
        assert bag.n == len(coords) > 0
    np.testing.assert_array_equal(
        read_bag(feat / "h5_files" / "CMU-1-Small-Region.h5").coords, coords
    )
    assert torch.load(feat / "pt_files" / "CMU-1-Small-Region.pt", weights_only=True).shape == (
        len(coords),
        64,
    )
