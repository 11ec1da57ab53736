"""One PatchGeometry: every stage maps a patch to the same level-0 square."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from sae1n.datasets.patch_labels import patch_size_level0, read_coords
from sae1n.encoders.patches import read_geometry, read_patch_coords
from sae1n.errors import InputFileError
from sae1n.viz.heatmaps import infer_patch_size
from sae1n.wsi.patch_files import PatchGeometry


def _clam_file(path, downsample, patch_size=256, patch_level=1, **extra):
    """A CLAM create_patches_fp.py file: no patch_size_level0 attribute."""
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("coords", data=np.array([[0, 0], [768, 0], [0, 768]], np.int64))
        ds.attrs["patch_size"] = patch_size
        ds.attrs["patch_level"] = patch_level
        ds.attrs["downsample"] = np.array(downsample, np.float64)
        ds.attrs["level_dim"] = np.array([5000, 5000])
        ds.attrs["name"] = path.stem
        for k, v in extra.items():
            ds.attrs[k] = v
    return path


def test_clam_file_with_fractional_downsample_uses_clams_int_rule(tmp_path):
    path = _clam_file(tmp_path / "s.h5", [3.9998, 3.9998])
    coords, attrs = read_coords(path)
    geom = PatchGeometry.from_attrs(attrs, path)
    # CLAM lays the grid out with int(downsample): 256 * int(3.9998) = 768 level-0 px
    assert geom.size_level0 == (768, 768)
    assert np.diff(np.unique(coords[:, 0]))[0] == 768  # the grid step agrees
    # every stage reads the same size
    assert patch_size_level0(attrs, path=path) == (768.0, 768.0)
    assert infer_patch_size(coords, attrs) == 768
    pc = read_patch_coords(path)
    rg = read_geometry(pc, [1.0, 3.9998, 15.99])
    assert (rg.level, rg.read_w, rg.read_h) == (1, 256, 256)


def test_geometry_prefers_patch_size_level0_and_handles_physical_patches(tmp_path):
    attrs = {"patch_size": 224, "patch_level": 1, "downsample": [2.0, 2.0], "patch_size_level0": 448}
    assert PatchGeometry.from_attrs(attrs).size_level0 == (448, 448)
    phys = {**attrs, "patch_size_level0": 500, "target_mpp": 1.0}
    g = PatchGeometry.from_attrs(phys)
    assert g.read_size == (250, 250) and g.patch_size == 224
    assert PatchGeometry.from_attrs({"patch_size": 256}).size_level0 == (256, 256)
    assert PatchGeometry.from_attrs({"patch_size": 256, "patch_level": 2}, level_downsamples=[1, 2, 4.01]).size_level0 == (1024, 1024)
    with pytest.raises(InputFileError, match="target_mpp but no patch_size_level0"):
        PatchGeometry.from_attrs({"patch_size": 256, "target_mpp": 0.5}, "p.h5")
    with pytest.raises(InputFileError, match="p.h5.*patch_level 2 without a downsample"):
        PatchGeometry.from_attrs({"patch_size": 256, "patch_level": 2}, "p.h5")
