import numpy as np
import pytest
from PIL import Image

from sae1n.errors import InputFileError
from sae1n.wsi.slide import open_slide

from .conftest import HEIGHT, WIDTH


@pytest.mark.parametrize("backend", ["openslide", "tiffslide", "auto"])
def test_levels_mpp_magnification(tissue_slide, backend):
    with open_slide(tissue_slide, backend=backend) as s:
        assert s.level_count == 4
        assert s.dimensions == (WIDTH, HEIGHT)
        assert s.level_dimensions[1] == (WIDTH // 2, HEIGHT // 2)
        assert s.level_downsamples[:3] == pytest.approx((1.0, 2.0, 4.0))
        assert s.level_scale(3) == (WIDTH / (WIDTH // 8), HEIGHT / (HEIGHT // 8))
        assert s.mpp == pytest.approx(0.5)
        assert s.magnification == 20
        assert s.best_level_for_downsample(64) == 3
        assert s.best_level_for_downsample(3.9) == 1
        assert s.best_level_for_downsample(0.5) == 0


def test_backends_read_identical_pixels(tissue_slide):
    a = open_slide(tissue_slide, backend="openslide")
    b = open_slide(tissue_slide, backend="tiffslide")
    assert (a.backend, b.backend) == ("openslide", "tiffslide")
    for level in range(a.level_count):
        np.testing.assert_array_equal(a.read_level(level), b.read_level(level))
    # level-aligned regions, including one hanging over the slide edge (white)
    for loc, level, size in [
        ((512, 256), 0, (300, 200)),
        ((1024, 512), 1, (128, 96)),
        ((WIDTH - 100, 0), 0, (200, 50)),
    ]:
        ra, rb = a.read_region(loc, level, size), b.read_region(loc, level, size)
        assert ra.shape == (size[1], size[0], 3) and ra.dtype == np.uint8
        np.testing.assert_array_equal(ra, rb)
    assert (a.read_region((WIDTH - 100, 0), 0, (200, 50))[:, 150:] == 255).all()


def test_no_mpp_is_none(slide_dir):
    with open_slide(slide_dir / "nompp.svs") as s:
        assert s.mpp is None and s.magnification is None


@pytest.mark.parametrize("name", ["corrupt.svs", "truncated.tif", "missing.svs"])
def test_bad_files_raise_input_file_error(slide_dir, name):
    with pytest.raises(InputFileError) as err:
        with open_slide(slide_dir / name) as s:
            s.read_level(0)
    assert name in str(err.value)


def test_unknown_backend(tissue_slide):
    with pytest.raises(InputFileError, match="backend"):
        open_slide(tissue_slide, backend="bioformats")


def test_flat_png_is_one_level(tmp_path):
    img = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "flat.png")
    with open_slide(tmp_path / "flat.png") as s:
        assert s.level_count == 1 and s.dimensions == (70, 50) and s.mpp is None
        np.testing.assert_array_equal(s.read_level(0), img)
        thumb, scale = s.thumbnail(35)
        assert thumb.shape[1] == 35 and scale == pytest.approx(2.0)


def test_real_svs_and_flat_tiff(shared_data):
    with open_slide(shared_data / "wsi" / "CMU-1-Small-Region.svs") as s:
        assert (
            s.dimensions == (2220, 2967) and s.mpp == pytest.approx(0.499) and s.magnification == 20
        )
    with open_slide(
        shared_data / "wsi" / "kidney-48-5.tif"
    ) as s:  # flat strip TIFF: OpenSlide refuses, tiffslide reads
        assert s.backend == "tiffslide" and s.level_count == 1 and s.dimensions == (1493, 901)
