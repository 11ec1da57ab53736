"""Two processes on one output folder share the slides: every slide is done
exactly once (per-slide lock files), the status CSVs merge, and a killed
run's temporary files are removed at the next start."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pandas as pd
import pytest

from sae1n.wsi.writers import write_pyramidal_tiff

from .staleness_data import tissue

N = 6


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    root = tmp_path_factory.mktemp("conc")
    d = root / "slides"
    d.mkdir()
    for i in range(N):
        write_pyramidal_tiff(d / f"s{i}.tif", tissue(i), mpp=0.5, levels=2, tile=256)
    (root / "preset.csv").write_text("a_t,a_h,line_thickness\n0.5,0.5,20\n")
    return root


def _two(cmd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "sae1n", *cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, out + err
    return [o for o, _ in outs]


def _count(pattern, text):
    m = re.search(pattern, text)
    return int(m.group(1)) if m else 0


def test_two_create_patches_share_the_slides(slides):
    save = slides / "clam"
    save.mkdir()
    leftover = save / "patches" / ".s0.tmp-999999999-0123abcd.h5"  # a killed run's temp file
    leftover.parent.mkdir()
    leftover.write_bytes(b"half")
    cmd = ["create-patches", "--source", str(slides / "slides"), "--save_dir", str(save), "--seg", "--patch", "--preset", str(slides / "preset.csv")]
    outs = _two(cmd)
    status = pd.read_csv(save / "process_list_autogen.csv")
    assert sorted(status["slide_id"]) == [f"s{i}.tif" for i in range(N)]  # one row per slide
    assert (status["status"] == "processed").all()
    # each slide was processed by exactly one of the two processes
    assert sum(_count(r"processed (\d+)", o) for o in outs) == N, outs
    assert not leftover.exists()
    assert not list(save.glob(".*.lock"))


def test_two_extract_features_share_the_slides(slides):
    save = slides / "clam"
    if not (save / "patches").is_dir():
        pytest.skip("needs the create-patches test's output")
    feat = slides / "feat"
    cmd = [
        "extract-features", "--data_h5_dir", str(save), "--data_slide_dir", str(slides / "slides"),
        "--feat_dir", str(feat), "--slide_ext", ".tif", "--model_name", "handcrafted",
        "--device", "cpu", "--num_workers", "0", "--batch_size", "64",
    ]
    outs = _two(cmd)
    status = pd.read_csv(feat / "extraction_status.csv")
    assert sorted(status["slide_id"]) == [f"s{i}" for i in range(N)]
    assert (status["status"] == "extracted").all()
    assert sum(_count(r"(\d+) extracted", o) for o in outs) == N, outs
    assert len(list((feat / "h5_files").glob("*.h5"))) == N
    assert not list(feat.glob(".*.lock"))


def test_status_csv_merge_keeps_other_processes_rows(tmp_path):
    from sae1n.io.tables import merge_status_csv

    path = tmp_path / "status.csv"
    a = pd.DataFrame({"slide_id": ["x", "y", "z"], "status": ["extracted", "busy", "busy"]})
    b = pd.DataFrame({"slide_id": ["x", "y", "z"], "status": ["skipped", "extracted", "busy"]})
    merge_status_csv(path, a, strong=["x"], weak_statuses=("",))
    merged = merge_status_csv(path, b, strong=["y"], weak_statuses=("",))
    assert merged.set_index("slide_id")["status"].to_dict() == {"x": "extracted", "y": "extracted", "z": "busy"}
    assert pd.read_csv(path).set_index("slide_id")["status"].to_dict()["x"] == "extracted"
