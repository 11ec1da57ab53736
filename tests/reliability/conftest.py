"""Fixtures of the reliability corpus: a tiny patched and extracted cohort,
and a small tmpfs where the platform allows mounting one."""

from __future__ import annotations

import subprocess
import uuid

import pytest

from sae1n.cli import main

from ..staleness_data import make_cohort


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    c = make_cohort(tmp_path_factory.mktemp("rel"))
    c["clam"] = c["root"] / "clam"
    assert (
        main(
            ["create-patches", "--source", str(c["slides"]), "--save_dir", str(c["clam"]),
             "--seg", "--patch", "--preset", str(c["preset"])]
        )
        == 0
    )
    return c


def extract_args(c, feat, *extra):
    return [
        "extract-features", "--data_h5_dir", str(c["clam"]), "--data_slide_dir", str(c["slides"]),
        "--feat_dir", str(feat), "--slide_ext", ".tif", "--model_name", "handcrafted",
        "--device", "cpu", "--num_workers", "0", "--batch_size", "64", *extra,
    ]


@pytest.fixture
def small_tmpfs(tmp_path):
    """Mount a tmpfs of the given size (and read-only flag) under tmp_path; skip where impossible."""
    mounted = []

    def make(size: str, ro: bool = False):
        point = tmp_path / f"fs-{uuid.uuid4().hex[:6]}"
        point.mkdir()
        opts = f"size={size}" + (",ro" if ro else "")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(point)], capture_output=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip()[:80]})")
        mounted.append(point)
        return point

    yield make
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)
