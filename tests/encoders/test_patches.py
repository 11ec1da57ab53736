"""Region-batched patch reading gives exactly the pixels of one read per patch."""

from __future__ import annotations

import numpy as np
import pytest

from sae1n.encoders.patches import (
    PatchBatchDataset,
    count_pixels,
    plan_batches,
    read_geometry,
    read_patch_coords,
)
from sae1n.errors import InputFileError
from sae1n.wsi.slide import open_slide

from .conftest import grid, write_patch_h5


def _check_plan(batches, n, batch_size):
    idx = np.concatenate([r.indices for b in batches for r in b])
    assert sorted(idx.tolist()) == list(range(n))  # every patch exactly once
    sizes = [sum(len(r.indices) for r in b) for b in batches]
    assert all(s == batch_size for s in sizes[:-1]) and 0 < sizes[-1] <= batch_size


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
@pytest.mark.parametrize("level", [0, 1])
def test_region_reads_equal_per_patch_reads(slide_dir, tmp_path, backend, level):
    path = slide_dir / "slide_a.tif"
    d = 2**level
    coords = grid(1024, 128 * d, start=0)
    # two interleaved grids; at level 1 the second is off by an odd number of
    # level-0 pixels, so it must not share regions with the first
    coords = np.concatenate([coords[::2], coords[1::2] + ([1, 3] if level else [2, 6])])
    pc = read_patch_coords(
        write_patch_h5(tmp_path / "p.h5", coords, patch_size=128, patch_level=level)
    )
    with open_slide(path, backend=backend) as slide:
        geom = read_geometry(pc, slide.level_downsamples)
        batches = plan_batches(pc.coords, geom, batch_size=7, max_region=512)
        _check_plan(batches, len(coords), 7)
        assert sum(len(b) for b in batches) < len(coords) / 2  # far fewer reads than patches
        ds = PatchBatchDataset(path, geom, batches, backend=backend)
        for i in range(len(ds)):
            item = ds[i]
            assert item["error"] == ""
            for j, patch in zip(item["indices"].tolist(), item["patches"].numpy()):
                x, y = coords[j]
                np.testing.assert_array_equal(
                    patch, slide.read_region((int(x), int(y)), level, (128, 128))
                )
        ds.close()


def test_sparse_cells_are_split_and_order_is_kept():
    from sae1n.encoders.patches import ReadGeometry

    geom = ReadGeometry(level=0, downsample=1.0, read_w=256, read_h=256)
    coords = np.array([[0, 0], [1792, 1792], [256, 0], [0, 256]])
    batches = plan_batches(coords, geom, batch_size=16, max_region=2048)
    _check_plan(batches, 4, 16)
    # the far corner patch is read alone instead of a 2048x2048 bounding box
    assert count_pixels(batches) <= 4 * 256 * 256 * 2
    per_patch = plan_batches(coords, geom, batch_size=3, grouped=False)
    assert [r.indices.tolist() for b in per_patch for r in b] == [[0], [1], [2], [3]]


def test_physical_patch_geometry_reads_level_pixels(tmp_path):
    # 20x slide, 10x target: 512 level-0 px read as 256 px at level 1
    pc = read_patch_coords(
        write_patch_h5(
            tmp_path / "p.h5",
            [[0, 0]],
            patch_size=256,
            patch_level=1,
            patch_size_level0=512,
            target_mpp=1.0,
            downsample=np.array([2.0, 2.0]),
        )
    )
    geom = read_geometry(pc, (1.0, 2.0, 4.0))
    assert (geom.level, geom.read_w, geom.read_h) == (1, 256, 256)
    # same target on a level-2 read (e.g. 40x scan): 512 / 4 = 128 px, resized by the encoder
    pc.attrs.update(patch_level=2, downsample=np.array([4.0, 4.0]))
    assert read_geometry(pc, (1.0, 2.0, 4.0)).read_w == 128


def test_patch_file_errors_name_the_file(tmp_path):
    with pytest.raises(InputFileError, match="not found"):
        read_patch_coords(tmp_path / "missing.h5")
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"garbage")
    with pytest.raises(InputFileError, match="bad.h5"):
        read_patch_coords(bad)
    import h5py

    with h5py.File(tmp_path / "noattr.h5", "w") as f:
        f.create_dataset("coords", data=np.zeros((2, 2), np.int64))
    with pytest.raises(InputFileError, match="patch_size"):
        read_patch_coords(tmp_path / "noattr.h5")
    pc = read_patch_coords(write_patch_h5(tmp_path / "lvl.h5", [[0, 0]], patch_level=5))
    with pytest.raises(InputFileError, match="patch_level 5"):
        read_geometry(pc, (1.0, 2.0))


def test_failed_read_is_retried_then_reported(slide_dir, monkeypatch):
    from sae1n.wsi import slide as slide_mod

    coords = grid(512, 256)
    geom = read_geometry(
        type("PC", (), {"attrs": {"patch_size": 256, "patch_level": 0}, "path": "x"})(), (1.0,)
    )
    ds = PatchBatchDataset(slide_dir / "slide_a.tif", geom, plan_batches(coords, geom, 4))
    calls = {"n": 0}
    real = slide_mod.Slide.read_region

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError("transient I/O error")
        return real(self, *a, **k)

    monkeypatch.setattr(slide_mod.Slide, "read_region", flaky)
    assert ds[0]["error"] == "" and len(ds[0]["indices"]) == 4  # retried once, then fine

    def broken(self, *a, **k):
        raise OSError("bad tile")

    monkeypatch.setattr(slide_mod.Slide, "read_region", broken)
    item = ds[0]
    assert (
        "failed twice" in item["error"]
        and "bad tile" in item["error"]
        and len(item["indices"]) == 0
    )


def _same_pixels_both_readers(path):
    with open_slide(path, "openslide") as a, open_slide(path, "tiffslide") as b:
        for level in range(a.level_count):
            d = round(a.level_downsamples[level])
            region = ((36 * d, 90 * d), level, (700 // d, 500 // d))  # whole level pixels
            np.testing.assert_array_equal(a.read_region(*region), b.read_region(*region))


def test_auto_backend_reads_the_same_pixels_as_openslide(slide_dir):
    from sae1n.encoders.patches import choose_backend

    path = slide_dir / "slide_a.tif"
    assert choose_backend(path, "auto") == "tiffslide"
    assert choose_backend(path, "openslide") == "openslide"
    _same_pixels_both_readers(path)
    # CLAM's odd level-0 origins at level 1 are sub-pixel there: OpenSlide renders those
    coords = np.array([[0, 0], [37, 91]])
    assert choose_backend(path, "auto", coords[:1] * 2, 2.0) == "tiffslide"
    assert choose_backend(path, "auto", coords, 2.0) == "auto"


def test_auto_backend_on_real_slides(shared_data):
    from sae1n.encoders.patches import choose_backend

    svs = shared_data / "wsi" / "CMU-1-Small-Region.svs"
    assert choose_backend(svs, "auto") == "tiffslide"
    _same_pixels_both_readers(svs)
    flat = shared_data / "wsi" / "kidney-48-5.tif"  # a strip TIFF OpenSlide does not know as a WSI
    assert choose_backend(flat, "auto") == "auto"
