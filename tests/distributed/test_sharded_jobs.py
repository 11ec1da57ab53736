"""extract-features and save-sae-features with 2 processes (the CLI, with
torchrun's environment variables): every slide exactly once, the same files
as one process."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pandas as pd
import pytest

from sae1n.cli import main
from sae1n.io import read_bag
from sae1n.wsi.writers import write_pyramidal_tiff

from .conftest import run_ranks, sae_config

SLIDES = ("s_a", "s_b", "s_c")


def _cli(rank, argv):
    return main(argv)


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    """Three small generated slides with four 128 px patches each."""
    root = tmp_path_factory.mktemp("wsi")
    rng = np.random.default_rng(0)
    coords = np.array([(0, 0), (128, 0), (0, 128), (128, 128)], np.int64)
    for sid in SLIDES:
        img = rng.integers(0, 255, size=(256, 256, 3), dtype=np.uint8)
        write_pyramidal_tiff(root / "slides" / f"{sid}.tif", img, levels=2, tile=128)
        path = root / "patching" / "patches" / f"{sid}.h5"
        path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(path, "w") as f:
            ds = f.create_dataset("coords", data=coords)
            ds.attrs.update(patch_size=128, patch_level=0, name=sid)
    return root


def _extract_argv(root, feat_dir):
    return [
        "extract-features",
        f"--data_h5_dir={root / 'patching'}",
        f"--data_slide_dir={root / 'slides'}",
        f"--feat_dir={feat_dir}",
        "--slide_ext=.tif",
        "--model_name=handcrafted",
        "--num_workers=0",
        "--batch_size=4",
        "--device=cpu",
    ]


def test_sharded_extraction_covers_every_slide_once(slides, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SAE1N_NO_HUB", "1")
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(_extract_argv(slides, one)) == 0
    capsys.readouterr()
    assert run_ranks(tmp_path / "launch", _cli, _extract_argv(slides, two), via_env=True) == [0, 0]
    status = pd.read_csv(two / "extraction_status.csv")
    assert status["slide_id"].tolist() == list(SLIDES)  # each once, in slide order
    assert set(status["status"]) == {"extracted"}
    # the ranks split sorted(slides)[rank::2] between them
    per_rank = [pd.read_csv(two / f"extraction_status.rank{r}-of-2.csv") for r in (0, 1)]
    assert [p["slide_id"].tolist() for p in per_rank] == [["s_a", "s_c"], ["s_b"]]
    for sid in SLIDES:
        for kind, ext in (("h5_files", "h5"), ("pt_files", "pt")):
            a = read_bag(one / kind / f"{sid}.{ext}", expected_dim=64)
            b = read_bag(two / kind / f"{sid}.{ext}", expected_dim=64)
            np.testing.assert_array_equal(a.features, b.features)
    # a re-run skips everything
    assert run_ranks(tmp_path / "again", _cli, _extract_argv(slides, two), via_env=True) == [0, 0]
    assert set(pd.read_csv(two / "extraction_status.csv")["status"]) == {"skipped"}


def test_sharded_encoding_covers_every_slide_once(one_process, cohort, tmp_path):
    from sae1n.sae.encode import save_sae_features

    ref = save_sae_features(one_process, out_dir=tmp_path / "one", device="cpu")
    out = tmp_path / "two"
    # one slide already done (and valid): it is skipped, not encoded again
    done = sorted(ref.encoded)[3]
    for kind in ("h5_files", "pt_files", "sparse_files"):
        src = tmp_path / "one" / kind
        (out / kind).mkdir(parents=True)
        ext = "pt" if kind == "pt_files" else "h5"
        shutil.copy(src / f"{done}.{ext}", out / kind / f"{done}.{ext}")
    shutil.copy(tmp_path / "one" / "codes.provenance.json", out)  # its provenance record
    argv = ["save-sae-features", str(one_process), f"--out_dir={out}", "--device=cpu"]
    assert run_ranks(tmp_path / "launch", _cli, argv, via_env=True) == [0, 0]
    assert json.loads((out / "encoding.json").read_text())["n_slides"] == len(cohort.slide_ids)
    for sid in cohort.slide_ids:
        for kind, ext in (("h5_files", "h5"), ("pt_files", "pt"), ("sparse_files", "h5")):
            a = read_bag(tmp_path / "one" / kind / f"{sid}.{ext}")
            b = read_bag(out / kind / f"{sid}.{ext}")
            np.testing.assert_array_equal(a.features, b.features)
            np.testing.assert_array_equal(a.coords, b.coords)


def _train_then_encode(rank, cohort, out):
    from sae1n.sae.encode import save_sae_features
    from sae1n.sae.train import train_sae

    exp = train_sae(sae_config(cohort, out, "training.num_epochs=1"))
    s = save_sae_features(exp, out_dir=out / "codes", device="cpu")
    return s.encoded, s.skipped


def test_two_stages_in_one_torchrun_process(cohort, tmp_path):
    """Like a pipeline: the group made for training serves the encoding too,
    and every rank gets the merged summary."""
    res = run_ranks(tmp_path / "launch", _train_then_encode, cohort, tmp_path, via_env=True)
    assert res[0] == res[1]
    encoded, skipped = res[0]
    assert encoded == sorted(cohort.slide_ids) and skipped == []
