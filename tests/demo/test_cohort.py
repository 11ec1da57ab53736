import defusedxml.ElementTree as DET
import numpy as np
import pandas as pd
import pytest

from sae1n.demo.cohort import generate_cohort
from sae1n.demo.cohort_files import REFERENCE_COLUMNS
from sae1n.demo.mosaic import load_tiles, render_mosaic
from sae1n.errors import ConfigError, InputFileError
from sae1n.wsi.slide import open_slide

SIZE = (768, 768)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort")
    return generate_cohort(out, n_normal=2, n_tumor=2, n_test=3, size=SIZE, seed=7)


def test_cohort_layout_names_and_annotations(cohort):
    ids = [s.slide_id for s in cohort.slides]
    assert ids == [
        "normal_001",
        "normal_002",
        "tumor_001",
        "tumor_002",
        "test_001",
        "test_002",
        "test_003",
    ]
    assert sorted(p.stem for p in cohort.slides_dir.glob("*.tif")) == sorted(ids)
    tumour_ids = {s.slide_id for s in cohort.slides if s.label == "tumor"}
    assert {"tumor_001", "tumor_002"} <= tumour_ids and not tumour_ids & {
        "normal_001",
        "normal_002",
    }
    assert len(tumour_ids & {"test_001", "test_002", "test_003"}) == 2  # half, rounded up
    # an annotation exactly for each tumour slide (test ones too, as in CAMELYON16)
    assert {p.stem for p in cohort.annotations_dir.glob("*.xml")} == tumour_ids
    for sid in tumour_ids:
        root = DET.parse(cohort.annotations_dir / f"{sid}.xml").getroot()
        assert root.find("Annotations/Annotation/Coordinates/Coordinate") is not None
    assert cohort.slide_ids(label="tumor", split="train") == ["tumor_001", "tumor_002"]
    assert len(cohort.slide_ids(split="test")) == 3
    for s in cohort.slides:
        with open_slide(s.path) as slide:
            assert slide.dimensions == SIZE and slide.level_count >= 3


def test_reference_csv_matches_the_labels(cohort):
    ref = pd.read_csv(cohort.reference_csv)
    assert list(ref.columns[-len(REFERENCE_COLUMNS) :]) == list(REFERENCE_COLUMNS)
    assert list(ref["slide_name"]) == ["test_001", "test_002", "test_003"]
    for row in ref.itertuples():
        info = cohort.slide(row.slide_name)
        assert row.is_tumor == ("Tumor" if info.label == "tumor" else "Normal")
        assert row.truth == int(info.label == "tumor")
        assert (row.category_2 in ("Macro", "Micro", "ITC")) == (info.label == "tumor")


def test_reference_csv_has_the_official_layout(cohort, shared_data):
    real = pd.read_csv(
        shared_data / "metadata/camelyon16/didsr_test_reference_with_preds.csv", nrows=2
    )
    ours = pd.read_csv(cohort.reference_csv)
    assert list(ours.columns) == list(real.columns[: len(ours.columns)])
    assert set(ours["is_tumor"]) <= set(
        pd.read_csv(shared_data / "metadata/camelyon16/didsr_test_reference_with_preds.csv")[
            "is_tumor"
        ]
    )


def test_rerun_skips_existing_and_repairs(cohort):
    out = cohort.out_dir
    mtimes = {s.slide_id: s.path.stat().st_mtime_ns for s in cohort.slides}
    original = (out / "slides/tumor_002.tif").read_bytes()
    (out / "slides/tumor_002.tif").write_bytes(b"garbage")  # corrupted: must be redone
    (out / "slides/normal_001.tif").unlink()  # missing: must be redone
    again = generate_cohort(out, n_normal=2, n_tumor=2, n_test=3, size=SIZE, seed=7)
    assert (out / "slides/tumor_002.tif").read_bytes() == original
    assert (out / "slides/normal_001.tif").is_file()
    for s in again.slides:
        if s.slide_id not in ("tumor_002", "normal_001"):
            assert s.path.stat().st_mtime_ns == mtimes[s.slide_id], s.slide_id
    assert [p.group for p in again.slide("tumor_001").polygons] == [
        p.group for p in cohort.slide("tumor_001").polygons
    ]


def test_smaller_cohort_removes_stale_slides(tmp_path):
    generate_cohort(tmp_path, n_normal=2, n_tumor=1, n_test=0, size=(512, 512), seed=1)
    before = (tmp_path / "slides/normal_001.tif").read_bytes()
    info = generate_cohort(tmp_path, n_normal=1, n_tumor=0, n_test=0, size=(512, 512), seed=1)
    assert sorted(p.name for p in (tmp_path / "slides").iterdir()) == ["normal_001.tif"]
    assert not list((tmp_path / "annotations").iterdir())
    assert [s.slide_id for s in info.slides] == ["normal_001"]
    # a slide's content depends on (seed, name) only, not on the cohort size
    assert (tmp_path / "slides/normal_001.tif").read_bytes() == before


def test_parallel_workers_give_the_same_files(tmp_path):
    a = generate_cohort(tmp_path / "a", n_normal=1, n_tumor=1, n_test=0, size=(512, 512), seed=3)
    b = generate_cohort(
        tmp_path / "b", n_normal=1, n_tumor=1, n_test=0, size=(512, 512), seed=3, workers=2
    )
    for sa, sb in zip(a.slides, b.slides, strict=True):
        assert sa.path.read_bytes() == sb.path.read_bytes()


def test_bad_arguments(tmp_path):
    with pytest.raises(ConfigError, match="n_normal"):
        generate_cohort(tmp_path, n_normal=-1)
    with pytest.raises(ConfigError, match="empty"):
        generate_cohort(tmp_path, n_normal=0, n_tumor=0, n_test=0)
    (tmp_path / "tiles/normal").mkdir(parents=True)
    with pytest.raises(InputFileError, match="normal"):
        load_tiles(tmp_path / "tiles")


def _small(img):
    """8x8-block means: robust to JPEG, cheap to compare."""
    h, w = img.shape[0] // 8, img.shape[1] // 8
    return img[: h * 8, : w * 8].reshape(h, 8, w, 8, 3).mean((1, 3))


def _variants(stack):
    """Every tile in every 90-degree turn and flip, block-averaged: (N*8, 32, 32, 3)."""
    out = []
    for small in map(_small, stack.astype(float)):  # block means commute with turns and flips
        for k in range(4):
            r = np.rot90(small, k)
            out += [r, r[:, ::-1]]
    return np.stack(out)


def test_mosaic_of_real_tiles(tmp_path, shared_data):
    tiles_dir = shared_data / "tiles/camelyon16_didsr_256"
    tiles = load_tiles(tiles_dir)
    assert tiles["tumor"].shape[1:] == (256, 256, 3) and len(tiles["normal"]) > 10
    info = generate_cohort(
        tmp_path, n_normal=1, n_tumor=1, n_test=0, size=(1536, 1536), seed=2, tiles_dir=tiles_dir
    )
    tumour, normal = info.slide("tumor_001"), info.slide("normal_001")
    assert tumour.kind == "mosaic" and tumour.mpp == pytest.approx(0.25)
    assert normal.annotation is None and tumour.annotation.is_file()
    with open_slide(tumour.path) as slide:
        assert slide.mpp == pytest.approx(0.25)
        img = slide.read_level(0).astype(int)
    rects = [p.vertices for p in tumour.polygons]
    assert rects and all(len(r) == 4 for r in rects)
    inside = np.zeros((6, 6), bool)
    for r in rects:
        (x0, y0), (x1, y1) = r.min(0).astype(int) // 256, r.max(0).astype(int) // 256
        inside[y0:y1, x0:x1] = True
    variants = {label: _variants(stack) for label, stack in tiles.items()}
    n_tissue = 0
    for cy in range(6):
        for cx in range(6):
            cell = img[cy * 256 : (cy + 1) * 256, cx * 256 : (cx + 1) * 256]
            if cell.min() > 230:
                assert not inside[cy, cx]  # glass cell
                continue
            n_tissue += 1
            # every tissue cell is one of the real tiles (JPEG-close), of the right class
            small = _small(cell)
            own, other = ("tumor", "normal") if inside[cy, cx] else ("normal", "tumor")
            best_own = np.abs(variants[own] - small).mean((1, 2, 3)).min()
            assert best_own < 3
            assert best_own < np.abs(variants[other] - small).mean((1, 2, 3)).min()
    assert n_tissue >= inside.sum() + 4


def test_mosaic_is_deterministic_and_fits_small_slides(shared_data):
    tiles = load_tiles(shared_data / "tiles/camelyon16_didsr_256")
    rgb, polys, tissue, frac = render_mosaic(tiles, (1024, 1024), tumor=True, seed=0)
    again, polys_again, _, _ = render_mosaic(tiles, (1024, 1024), tumor=True, seed=0)
    np.testing.assert_array_equal(rgb, again)
    assert [p.vertices.tolist() for p in polys] == [p.vertices.tolist() for p in polys_again]
    assert rgb.shape == (1024, 1024, 3) and polys and 0 < frac < 1 and 0 < tissue < 1
    normal, none, _, zero = render_mosaic(tiles, (1024, 1024), tumor=False, seed=0)
    assert none == [] and zero == 0
