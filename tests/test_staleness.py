"""The staleness suite: for each standalone stage and each setting that shapes
its output, a re-run with the setting changed refuses (nothing on disk
changes) and ``--overwrite`` recomputes."""

from __future__ import annotations

import json

import h5py
import pandas as pd
import pytest

from sae1n.cli import main
from sae1n.io.provenance import read_provenance
from sae1n.wsi.writers import write_pyramidal_tiff

from .staleness_data import make_cohort, snapshot, tissue


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return make_cohort(tmp_path_factory.mktemp("stale"))


def _patches(c, out, *extra):
    if "--preset" not in extra:
        extra = ("--preset", str(c["preset"]), *extra)
    return main(
        ["create-patches", "--source", str(c["slides"]), "--save_dir", str(out), "--seg", "--patch", "--stitch", *extra]
    )


def _refuses(capsys, folder, code, *needles):
    err = capsys.readouterr().err
    assert code == 1, err
    for n in needles:
        assert n in err, err
    return err


@pytest.mark.parametrize(
    "args, diff",
    [
        (["--patch_size", "128"], "settings.patch_size: 256 -> 128"),
        (["--step_size", "128"], "settings.step_size: null -> 128"),
        (["--patch_level", "1", "--patch_size", "128"], "settings.patch_level: 0 -> 1"),
        (["--target_mpp", "1.0", "--patch_size", "128"], "settings.target_mpp: null -> 1.0"),
        (["--preset", "PRESET2"], "settings.a_t: 0.5 -> 0.25"),
    ],
)
def test_create_patches_refuses_changed_settings_and_overwrites(cohort, tmp_path, capsys, args, diff):
    out = tmp_path / "clam"
    assert _patches(cohort, out) == 0
    before = snapshot(out)
    assert _patches(cohort, out) == 0  # unchanged settings: every slide skipped, nothing rewritten
    assert "already_exist 3" in capsys.readouterr().out
    assert {k: v for k, v in snapshot(out).items() if "process_list" not in k} == {
        k: v for k, v in before.items() if "process_list" not in k
    }
    before = snapshot(out)
    args = [str(cohort["preset2"]) if a == "PRESET2" else a for a in args]
    code = _patches(cohort, out, *args)
    _refuses(capsys, out, code, diff, "--overwrite", "nothing was changed")
    assert snapshot(out) == before
    assert _patches(cohort, out, *args, "--overwrite") == 0
    prov = read_provenance(out / "patches" / "tumor_001.h5")
    key, value = args[0].lstrip("-"), args[1]
    if key != "preset":
        assert str(prov.settings[key]) == value
    assert (out / "patches" / "tumor_001.h5").read_bytes() != before["patches/tumor_001.h5"][0]


def test_create_patches_patch_size_128_into_existing_folder(cohort, tmp_path, capsys):
    """The issue's case: 256 px files must not be kept silently for --patch_size 128."""
    out = tmp_path / "clam"
    assert _patches(cohort, out) == 0
    code = _patches(cohort, out, "--patch_size", "128")
    err = _refuses(capsys, out, code, "patches/normal_001.h5", "settings.patch_size: 256 -> 128")
    assert "Traceback" not in err
    with h5py.File(out / "patches" / "normal_001.h5") as f:
        assert f["coords"].attrs["patch_size"] == 256
    assert _patches(cohort, out, "--patch_size", "128", "--overwrite") == 0
    with h5py.File(out / "patches" / "normal_001.h5") as f:
        assert f["coords"].attrs["patch_size"] == 128
    for sub in ("masks", "stitches", "geojson"):
        assert read_provenance(next((out / sub).glob("normal_001.*[gn]"))) is not None
    assert read_provenance(out / "process_list_autogen.csv").settings["patch_size"] == 128


def _extract(c, clam, feat, *extra):
    return main(
        [
            "extract-features",
            "--data_h5_dir", str(clam),
            "--data_slide_dir", str(c["slides"]),
            "--feat_dir", str(feat),
            "--slide_ext", ".tif",
            "--model_name", "handcrafted",
            "--device", "cpu",
            "--num_workers", "0",
            "--batch_size", "64",
            *extra,
        ]
    )


def test_extract_features_refuses_changed_input_size_and_patches(cohort, tmp_path, capsys):
    clam, feat = tmp_path / "clam", tmp_path / "feat"
    assert _patches(cohort, clam) == 0
    assert _extract(cohort, clam, feat) == 0
    capsys.readouterr()
    before = snapshot(feat)
    assert _extract(cohort, clam, feat) == 0  # current: skipped, extraction_info.json untouched
    assert "0 extracted, 3 skipped" in capsys.readouterr().out
    assert {k: v for k, v in snapshot(feat).items() if "status" not in k} == {
        k: v for k, v in before.items() if "status" not in k
    }
    before = snapshot(feat)
    code = _extract(cohort, clam, feat, "--target_patch_size", "64")
    _refuses(capsys, feat, code, "h5_files/normal_001.h5", "settings.input_size: 128 -> 64")
    assert snapshot(feat) == before  # the issue: info must not be rewritten to say 64
    assert _extract(cohort, clam, feat, "--target_patch_size", "64", "--overwrite") == 0
    # a changed slide file makes its features stale too (small files: by content hash)
    slide = cohort["slides"] / "test_001.tif"
    original = slide.read_bytes()
    write_pyramidal_tiff(slide, tissue(9), mpp=0.5, levels=2, tile=256)
    try:
        before = snapshot(feat)
        code = _extract(cohort, clam, feat, "--target_patch_size", "64")
        _refuses(capsys, feat, code, "test_001.h5", "inputs.slide.sha256")
        assert snapshot(feat) == before
    finally:
        slide.write_bytes(original)
    info = json.loads((feat / "extraction_info.json").read_text())
    assert info["input_size"] == 64
    assert read_provenance(feat / "pt_files" / "tumor_001.pt").settings["input_size"] == 64
    # new patches upstream make the features stale too
    assert _patches(cohort, clam, "--patch_size", "128", "--overwrite") == 0
    before = snapshot(feat)
    code = _extract(cohort, clam, feat, "--target_patch_size", "64")
    _refuses(capsys, feat, code, "h5_files/", "inputs.patches.sha256")
    assert snapshot(feat) == before
    assert _extract(cohort, clam, feat, "--target_patch_size", "64", "--overwrite") == 0
    with h5py.File(feat / "h5_files" / "tumor_001.h5") as f:
        assert f["coords"].attrs["patch_size"] == 128


@pytest.fixture(scope="module")
def features(cohort, tmp_path_factory):
    root = tmp_path_factory.mktemp("feat")
    assert _patches(cohort, root / "clam") == 0
    assert _extract(cohort, root / "clam", root / "feat") == 0
    return root


def test_create_metadata_splits_and_labels_refuse_then_overwrite(cohort, features, tmp_path, capsys):
    meta_dir = tmp_path / "meta"
    meta = meta_dir / "camelyon16_metadata.csv"
    md = ["create-metadata", "--task", "camelyon16", "--feature_dir", str(features / "feat"), "--output_dir", str(meta_dir)]
    assert main([*md, "--reference_csv", str(cohort["reference"])]) == 0
    before = snapshot(meta_dir)
    assert main([*md, "--reference_csv", str(cohort["reference"])]) == 0
    assert snapshot(meta_dir) == before  # current: not rewritten
    ref2 = tmp_path / "ref2.csv"
    ref2.write_text("image,type\ntest_001,Normal\n")
    capsys.readouterr()
    _refuses(capsys, meta_dir, main([*md, "--reference_csv", str(ref2)]), "camelyon16_metadata.csv", "inputs.reference_csv")
    _refuses(capsys, meta_dir, main([*md, "--annotation_dir", str(cohort["ann"])]), "inputs.annotations")
    assert snapshot(meta_dir) == before
    assert main([*md, "--reference_csv", str(ref2), "--overwrite"]) == 0
    assert pd.read_csv(meta).set_index("slide_id").loc["test_001", "label"] == "normal"
    assert main([*md, "--reference_csv", str(cohort["reference"]), "--overwrite"]) == 0

    # splits (on a larger metadata table): k and the metadata's content are recorded
    meta = tmp_path / "m.csv"
    rows = [f"{lab}_{i:03d},{lab}_{i:03d},{lab},train" for lab in ("normal", "tumor") for i in range(6)]
    meta.write_text("case_id,slide_id,label,split\n" + "\n".join(rows) + "\ntest_001,test_001,tumor,test\n")
    sp = ["create-splits", "--metadata_path", str(meta), "--output_dir", str(tmp_path / "splits"), "--seed", "7"]
    assert main([*sp, "--k", "2"]) == 0
    split_dir = tmp_path / "splits" / "camelyon16_7"
    before = snapshot(split_dir)
    assert main([*sp, "--k", "2"]) == 0
    assert snapshot(split_dir) == before
    capsys.readouterr()
    _refuses(capsys, split_dir, main([*sp, "--k", "3"]), "camelyon16_7", "settings.k: 2 -> 3")
    assert snapshot(split_dir) == before
    assert main([*sp, "--k", "3", "--overwrite"]) == 0
    assert sorted(p.name for p in split_dir.glob("splits_?.csv")) == ["splits_0.csv", "splits_1.csv", "splits_2.csv"]
    assert main([*sp, "--k", "2", "--overwrite"]) == 0  # fewer folds: the old third fold goes
    assert not (split_dir / "splits_2.csv").exists()
    # a changed metadata CSV makes the splits stale
    meta.write_text(meta.read_text().replace("test_001,tumor", "test_001,normal"))
    capsys.readouterr()
    _refuses(capsys, split_dir, main([*sp, "--k", "2"]), "inputs.metadata.sha256")

    # patch labels: threshold, patch size and annotation
    labels = tmp_path / "labels"
    pl = ["patch-labels", "--coords_dir", str(features / "clam"), "--annotation_dir", str(cohort["ann"]), "--output_dir", str(labels)]
    assert main(pl) == 0
    before = snapshot(labels)
    assert main(pl) == 0
    assert {k: v for k, v in snapshot(labels).items() if k != "summary.csv"} == {
        k: v for k, v in before.items() if k != "summary.csv"
    }
    capsys.readouterr()
    before = snapshot(labels)
    for extra, diff in (
        (["--threshold", "0.3"], "settings.threshold: 0.5 -> 0.3"),
        (["--patch_size", "128"], "settings.patch_size_level0: [256.0, 256.0] -> [128.0, 128.0]"),
        (["--annotation_format", "asap"], None),  # same format resolved: current, not stale
    ):
        code = main([*pl, *extra])
        if diff is None:
            assert code == 0
            continue
        _refuses(capsys, labels, code, "tumor_001.h5", diff)
        assert {k: v for k, v in snapshot(labels).items() if k != "summary.csv"} == {
            k: v for k, v in before.items() if k != "summary.csv"
        }
    (cohort["ann"] / "extra_copy.txt").write_text("unrelated")
    from .staleness_data import write_asap

    write_asap(cohort["ann"] / "tumor_001.xml", [[(0, 0), (768, 0), (768, 768), (0, 768)]])
    try:
        capsys.readouterr()
        _refuses(capsys, labels, main(pl), "tumor_001.h5", "inputs.annotation.sha256")
        assert main([*pl, "--overwrite"]) == 0
        with h5py.File(labels / "tumor_001.h5") as f:
            assert f["label"][()].all()
    finally:
        write_asap(cohort["ann"] / "tumor_001.xml", [[(200, 200), (500, 200), (500, 500), (200, 500)]])


# ------------------------------------------------------------------ the pipeline

EARLY = ["create_patches", "extract_features", "create_metadata", "patch_labels"]


def _pipeline(cohort, work, overrides=()):
    from sae1n.pipeline import Pipeline, load_pipeline_config

    base = {
        "work_dir": str(work),
        "slides": {"dir": str(cohort["slides"]), "ext": ".tif"},
        "annotations": {"dir": str(cohort["ann"]), "format": "asap"},
        "reference_csv": str(cohort["reference"]),
        "patching": {"patch_size": 256, "patch_level": 0, "preset": str(cohort["preset"])},
        "encoder": {"name": "handcrafted", "batch_size": 64, "num_workers": 0, "device": "cpu"},
    }
    ran = []
    pipe = Pipeline(load_pipeline_config(None, overrides, base=base), echo=ran.append)
    results = pipe.run(EARLY)
    return pipe, [n for n, r in results.items() if r.status == "done"]


def _arrays(pipe):
    from sae1n.io import feature_paths, read_bag

    p = pipe.paths
    out = {}
    for sid, path in feature_paths(p.feat_dir, "h5").items():
        bag = read_bag(path)
        out[f"feat/{sid}"] = (bag.features, bag.coords)
    for path in sorted(p.patch_label_dir.glob("*.h5")):
        with h5py.File(path) as f:
            out[f"labels/{path.stem}"] = (f["tumor_fraction"][()], f["coords"][()])
    out["metadata"] = pd.read_csv(p.metadata_csv).to_numpy()
    return out


def test_pipeline_patch_size_change_reruns_downstream_and_equals_a_fresh_run(cohort, tmp_path):
    import numpy as np

    work = tmp_path / "work"
    _, ran = _pipeline(cohort, work)
    assert ran == EARLY
    _, ran = _pipeline(cohort, work)
    assert ran == []
    pipe, ran = _pipeline(cohort, work, ["patching.patch_size=192"])
    assert ran == EARLY  # every stage reads the patches
    fresh, _ = _pipeline(cohort, tmp_path / "fresh", ["patching.patch_size=192"])
    got, want = _arrays(pipe), _arrays(fresh)
    assert got.keys() == want.keys() and len(got) == 7
    for key in want:
        for a, b in zip(got[key], want[key]):
            np.testing.assert_array_equal(a, b, err_msg=key)
    with h5py.File(pipe.paths.clam_dir / "patches" / "tumor_001.h5") as f:
        assert f["coords"].attrs["patch_size"] == 192
    # a changed threshold reruns patch_labels only (of these stages)
    _, ran = _pipeline(cohort, work, ["patching.patch_size=192", "annotations.threshold=0.9"])
    assert ran == ["patch_labels"]
