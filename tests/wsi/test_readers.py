"""The reader registry, the one "auto" policy and the in-memory fake reader."""

import cv2
import numpy as np
import pytest

from sae1n.errors import InputFileError
from sae1n.wsi.readers import (
    AUTO_HELP,
    SlideReader,
    choose_reader,
    open_reader,
    reader_class,
    reader_names,
)
from sae1n.wsi.readers.memory import register_memory_slide, unregister_memory_slide
from sae1n.wsi.slide import Slide, open_slide

from .conftest import HEIGHT, WIDTH, tissue_image


@pytest.fixture
def memory_slide(tmp_path):
    img = tissue_image()
    path = register_memory_slide(tmp_path / "fake.svs", img, levels=4, mpp=0.5)
    yield path, img
    unregister_memory_slide(path)


def test_every_backend_is_a_slide_reader(tissue_slide, memory_slide):
    assert {"openslide", "tiffslide", "pil", "memory"} <= set(reader_names())
    for backend, path in [
        ("openslide", tissue_slide),
        ("tiffslide", tissue_slide),
        ("memory", memory_slide[0]),
    ]:
        with open_slide(path, backend) as s:
            assert isinstance(s, SlideReader) and isinstance(s, Slide)
            assert s.backend == backend and type(s) is reader_class(backend)
            assert s.dimensions == (WIDTH, HEIGHT) and s.level_count == 4
            assert s.mpp == pytest.approx(0.5)
    with Slide(tissue_slide, "tiffslide") as s:  # the old constructor still opens
        assert s.backend == "tiffslide"


def test_memory_reader_pyramid_and_reads(memory_slide):
    path, img = memory_slide
    assert not path.exists()  # no file: the fake lives in memory
    with open_slide(path) as s:  # "auto" finds the registered slide
        assert s.backend == "memory"
        assert s.level_dimensions[1] == (WIDTH // 2, HEIGHT // 2)
        assert s.level_downsamples[:3] == pytest.approx((1.0, 2.0, 4.0))
        np.testing.assert_array_equal(s.read_region((100, 40), 0, (30, 20)), img[40:60, 100:130])
        lvl1 = s.read_level(1)
        want = img[:2, :2].reshape(4, 3).mean(0)
        np.testing.assert_array_equal(lvl1[0, 0], np.rint(want).astype(np.uint8))
        edge = s.read_region((WIDTH - 10, 0), 0, (20, 5))
        np.testing.assert_array_equal(edge[:, :10], img[:5, WIDTH - 10 :])
        assert (edge[:, 10:] == 255).all()
        thumb, scale = s.thumbnail(256)
        assert thumb.shape == (192, 256, 3) and scale == pytest.approx(8.0)
        pil = s.get_thumbnail((100, 100))
        assert pil.size == (100, 75)


def test_memory_reader_drives_tissue_segmentation(memory_slide, tissue_slide):
    from sae1n.wsi.presets import load_preset
    from sae1n.wsi.segmentation import segment_tissue

    segs = []
    for path in (memory_slide[0], tissue_slide):  # the fake and the same image as a TIFF
        with open_slide(path) as s:
            segs.append(segment_tissue(s, load_preset("bwh_biopsy")))
    mem, tif = segs
    assert mem.seg_level == tif.seg_level == 3 and mem.seg_downsample == (8.0, 8.0)
    assert len(mem) == len(tif) == 2  # the ellipse and the disc
    assert sorted(len(h) for h in mem.holes) == [0, 1]  # the hole in the ellipse
    for a, b in zip(sorted(mem.contours, key=len), sorted(tif.contours, key=len)):
        box_a, box_b = cv2.boundingRect(a), cv2.boundingRect(b)
        assert np.abs(np.subtract(box_a, box_b)).max() <= 16  # 2 px at level 3


def test_unregistered_memory_slide_is_a_clear_error(tmp_path):
    with pytest.raises(InputFileError, match="register_memory_slide"):
        open_slide(tmp_path / "nothing.svs", backend="memory")


def test_auto_policy(tissue_slide, tmp_path, memory_slide):
    # unknown reads (create-patches, viz): OpenSlide first, tiffslide as fallback
    assert choose_reader(tissue_slide) == ("openslide", "tiffslide")
    # level-0 or whole-pixel reads of an Aperio-layout file: tiffslide
    assert choose_reader(tissue_slide, downsample=1.0) == ("tiffslide",)
    assert choose_reader(tissue_slide, coords=np.array([[4, 8]]), downsample=4.0) == ("tiffslide",)
    assert choose_reader(tissue_slide, coords=np.array([[4, 6]]), downsample=4.0) == (
        "openslide",
        "tiffslide",
    )
    assert choose_reader(tissue_slide, downsample=1.5) == ("openslide", "tiffslide")
    assert choose_reader(tissue_slide, "openslide", downsample=1.0) == ("openslide",)
    assert choose_reader(tmp_path / "a.PNG") == ("pil",)
    assert choose_reader(tmp_path / "a.jpg", "openslide") == ("pil",)
    assert choose_reader(memory_slide[0]) == ("memory",)
    with pytest.raises(InputFileError, match="unknown slide backend"):
        choose_reader(tissue_slide, "cucim")
    # the one help text names the same rules
    for word in ("PIL", "tiffslide", "OpenSlide", "Aperio"):
        assert word in AUTO_HELP


def test_encoder_choose_backend_uses_the_policy(tissue_slide, memory_slide):
    from sae1n.encoders.patches import choose_backend

    assert choose_backend(tissue_slide) == "tiffslide"
    assert choose_backend(tissue_slide, "auto", np.array([[1, 2]]), 2.0) == "auto"
    assert choose_backend(memory_slide[0]) == "auto"  # open_slide then picks the fake


def test_open_reader_with_reads_known(tissue_slide):
    with open_reader(tissue_slide, downsample=1.0) as s:
        assert s.backend == "tiffslide"


def test_every_backend_help_is_the_same():
    import argparse

    from sae1n.encoders.commands import configure_extract_features
    from sae1n.wsi.commands import configure_create_patches

    helps = []
    for configure in (configure_create_patches, configure_extract_features):
        p = argparse.ArgumentParser()
        configure(p)
        (act,) = [a for a in p._actions if "--backend" in a.option_strings]
        helps.append((act.help, tuple(act.choices), act.default))
    assert helps[0] == helps[1] == (AUTO_HELP, ("auto", "openslide", "tiffslide"), "auto")


def test_patch_dataset_reads_from_memory(memory_slide):
    from sae1n.encoders.patches import PatchBatchDataset, ReadGeometry, RegionRead

    path, img = memory_slide
    geom = ReadGeometry(level=0, downsample=1.0, read_w=16, read_h=16)
    region = RegionRead(200, 100, 48, 16, np.array([[0, 0], [32, 0]]), np.array([0, 1]))
    ds = PatchBatchDataset(path, geom, [[region]], backend="memory")
    item = ds[0]
    assert item["error"] == ""
    np.testing.assert_array_equal(item["patches"][1].numpy(), img[100:116, 232:248])
    ds.close()
