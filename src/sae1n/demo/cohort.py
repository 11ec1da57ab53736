"""A small CAMELYON16-like cohort of generated slides for the demo and for tests.

``generate_cohort`` writes ``<out>/slides/{normal,tumor,test}_NNN.tif``, ASAP XML
annotations for every tumour slide in ``<out>/annotations/``, the test-set
reference CSV ``<out>/reference.csv`` (the columns of the official CAMELYON16
reference) and a manifest ``<out>/cohort.json``. Slides are painted by
:mod:`sae1n.demo.synthetic`, or, with ``tiles_dir``, assembled as mosaics of real
labelled tiles. A rerun with the same parameters skips the slides already on
disk; each slide's content depends only on (seed, name), not on cohort size.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sae1n.datasets.annotations import AnnotationPolygon, write_asap_xml
from sae1n.demo.synthetic import (
    DEFAULT_MAGNIFICATION,
    DEFAULT_MPP,
    DEFAULT_SIZE,
    SlideInfo,
    generate_slide,
)
from sae1n.errors import ConfigError, InputFileError
from sae1n.io.atomic import atomic_write_csv, atomic_write_json
from sae1n.wsi.writers import write_pyramidal_tiff

MANIFEST = "cohort.json"
REFERENCE_COLUMNS = ("slide_name", "is_tumor", "category_1", "category_2", "truth")
TILE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
DEFAULT_TILE_MPP = 0.25  # CAMELYON16 level-0 tiles are ~0.243 um/px (40x)
_GENERATOR_VERSION = 1  # bump when the painted content changes, so old cohorts regenerate
_SPLIT_CODES = {"normal": 0, "tumor": 1, "test": 2}


@dataclass
class CohortInfo:
    """A generated cohort: where everything is and what each slide holds."""

    out_dir: Path
    slides_dir: Path
    annotations_dir: Path
    reference_csv: Path
    manifest: Path
    slides: list[SlideInfo]

    def slide_ids(self, label: str | None = None, split: str | None = None) -> list[str]:
        """Slide ids, optionally only one label (tumor/normal) or split (train/test)."""
        return [
            s.slide_id
            for s in self.slides
            if (label is None or s.label == label)
            and (split is None or _split_of(s.slide_id) == split)
        ]

    def slide(self, slide_id: str) -> SlideInfo:
        for s in self.slides:
            if s.slide_id == slide_id:
                return s
        raise KeyError(slide_id)


def _split_of(slide_id: str) -> str:
    return "test" if slide_id.startswith("test_") else "train"


@dataclass(frozen=True)
class _SlidePlan:
    slide_id: str
    tumor: bool
    seed: int


def _plan(n_normal: int, n_tumor: int, n_test: int, seed: int) -> list[_SlidePlan]:
    """Names and per-slide seeds; half of the test slides (rounded up) carry tumour."""
    plans = []

    def slide_seed(prefix: str, i: int) -> int:
        return int(np.random.SeedSequence([seed, _SPLIT_CODES[prefix], i]).generate_state(1)[0])

    plans += [
        _SlidePlan(f"normal_{i:03d}", False, slide_seed("normal", i))
        for i in range(1, n_normal + 1)
    ]
    plans += [
        _SlidePlan(f"tumor_{i:03d}", True, slide_seed("tumor", i)) for i in range(1, n_tumor + 1)
    ]
    test_rng = np.random.default_rng(np.random.SeedSequence([seed, 77, n_test]))
    tumor_tests = set(test_rng.permutation(n_test)[: (n_test + 1) // 2].tolist())
    plans += [
        _SlidePlan(f"test_{i + 1:03d}", i in tumor_tests, slide_seed("test", i + 1))
        for i in range(n_test)
    ]
    return plans


def generate_cohort(
    out_dir: str | os.PathLike,
    n_normal: int = 12,
    n_tumor: int = 12,
    n_test: int = 8,
    size: tuple[int, int] = DEFAULT_SIZE,
    seed: int = 0,
    tiles_dir: str | os.PathLike | None = None,
    *,
    tile_mpp: float = DEFAULT_TILE_MPP,
    workers: int = 1,
    quality: int = 90,
) -> CohortInfo:
    """Generate (or complete) a CAMELYON16-style cohort in ``out_dir``.

    Synthetic H&E slides by default; with ``tiles_dir`` (``tumor/`` and
    ``normal/`` subfolders of image tiles) mosaic slides of those real tiles,
    declared at ``tile_mpp``. ``workers`` > 1 paints slides in parallel
    processes (same output). Deterministic for a given ``seed``.
    """
    out = Path(out_dir)
    counts = {"n_normal": n_normal, "n_tumor": n_tumor, "n_test": n_test}
    for name, value in counts.items():
        if not isinstance(value, int | np.integer) or value < 0:
            raise ConfigError(f"{name} must be a whole number >= 0, got {value!r}")
    if n_normal + n_tumor + n_test == 0:
        raise ConfigError(
            "the cohort is empty: ask for at least one slide (n_normal, n_tumor or n_test)"
        )
    if not 1 <= int(quality) <= 100:
        raise ConfigError(f"JPEG quality must be between 1 and 100, got {quality}")
    if int(workers) < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    width, height = (int(v) for v in size)
    if tiles_dir is None and min(width, height) < 256:
        raise ConfigError(f"slide size must be at least 256x256 pixels, got {width}x{height}")
    tiles = None
    if tiles_dir is not None:
        tiles = load_tiles(tiles_dir)
        tile = tiles["normal"].shape[1]
        if width < 2 * tile or height < 2 * tile:
            raise ConfigError(
                f"mosaic slides must be at least 2x2 tiles ({2 * tile} px); got {width}x{height}"
            )
    params = {
        "version": _GENERATOR_VERSION,
        **counts,
        "size": [width, height],
        "seed": int(seed),
        "tiles": None if tiles_dir is None else _tiles_fingerprint(tiles_dir),
        "tile_mpp": float(tile_mpp) if tiles_dir is not None else None,
        "quality": int(quality),
    }
    slides_dir, ann_dir = out / "slides", out / "annotations"
    slides_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)
    plans = _plan(n_normal, n_tumor, n_test, seed)
    done = _reusable_slides(out, params, plans)
    _remove_stale(out, slides_dir, ann_dir, plans)

    todo = [p for p in plans if p.slide_id not in done]
    jobs = [(p, slides_dir, ann_dir, (width, height), tiles_dir, tile_mpp, quality) for p in todo]
    infos = dict(done)
    from sae1n.utils import progress

    if workers > 1 and len(jobs) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
            results = pool.map(_make_slide, jobs)
            for info in progress(results, desc="generate slides", total=len(jobs)):
                infos[info.slide_id] = info
                _write_manifest(out, params, plans, infos)
    else:
        for job in progress(jobs, desc="generate slides", total=len(jobs)):
            info = _make_slide(job, tiles=tiles)
            infos[info.slide_id] = info
            _write_manifest(out, params, plans, infos)
    slides = [infos[p.slide_id] for p in plans]
    _write_manifest(out, params, plans, infos)
    reference = write_reference_csv(
        out / "reference.csv", [s for s in slides if _split_of(s.slide_id) == "test"]
    )
    return CohortInfo(out, slides_dir, ann_dir, reference, out / MANIFEST, slides)


def _make_slide(job, tiles=None) -> SlideInfo:
    plan, slides_dir, ann_dir, size, tiles_dir, tile_mpp, quality = job
    path = slides_dir / f"{plan.slide_id}.tif"
    ann = ann_dir / f"{plan.slide_id}.xml"
    if tiles_dir is None:
        return generate_slide(
            path, tumor=plan.tumor, size=size, seed=plan.seed, annotation_path=ann, quality=quality
        )
    if tiles is None:
        tiles = _tiles_cached(str(tiles_dir))
    return generate_mosaic_slide(
        path,
        tiles,
        tumor=plan.tumor,
        size=size,
        seed=plan.seed,
        annotation_path=ann,
        mpp=tile_mpp,
        quality=quality,
    )


def _tiles_fingerprint(tiles_dir: str | os.PathLike) -> str:
    """Changes when the tile folder's files (names, sizes, times) change."""
    from sae1n.io.provenance import fingerprint_of

    files = [
        (f"{f.parent.name}/{f.name}", f.stat().st_size, f.stat().st_mtime_ns)
        for f in sorted(Path(tiles_dir).glob("*/*"))
        if f.suffix.lower() in TILE_EXTENSIONS
    ]
    return f"{Path(tiles_dir).resolve()}#{fingerprint_of(files)}"


@functools.lru_cache(maxsize=2)
def _tiles_cached(tiles_dir: str) -> dict[str, np.ndarray]:
    # one read per worker process, however many slides it makes
    return load_tiles(tiles_dir)


# --------------------------------------------------------------------------- manifest / resume
def _write_manifest(
    out: Path, params: dict, plans: list[_SlidePlan], infos: dict[str, SlideInfo]
) -> None:
    slides = []
    for p in plans:
        if p.slide_id in infos:
            info = infos[p.slide_id]
            entry = info.to_json()
            entry["path"] = (
                str(Path(info.path).relative_to(out))
                if Path(info.path).is_relative_to(out)
                else str(info.path)
            )
            if info.annotation is not None and Path(info.annotation).is_relative_to(out):
                entry["annotation"] = str(Path(info.annotation).relative_to(out))
            entry["polygons"] = [
                {"group": q.group, "vertices": np.round(q.vertices, 1).tolist()}
                for q in info.polygons
            ]
            slides.append(entry)
    atomic_write_json(out / MANIFEST, {"params": params, "slides": slides})


def _reusable_slides(out: Path, params: dict, plans: list[_SlidePlan]) -> dict[str, SlideInfo]:
    """Slides from an earlier run with the same parameters whose files are intact."""
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    old = manifest.get("params", {})
    counts = ("n_normal", "n_tumor", "n_test")
    if {k: v for k, v in old.items() if k not in counts} != {
        k: v for k, v in params.items() if k not in counts
    }:
        return {}
    wanted = {p.slide_id: p for p in plans}
    done = {}
    for entry in manifest.get("slides", []):
        sid = entry.get("slide_id")
        plan = wanted.get(sid)
        if plan is None or (entry.get("label") == "tumor") != plan.tumor:
            continue
        if sid.startswith("test_") and old.get("n_test") != params["n_test"]:
            continue  # which test slides carry tumour depends on n_test
        info = _info_from_entry(out, entry)
        if info is not None and _slide_file_ok(info):
            done[sid] = info
    return done


def _info_from_entry(out: Path, entry: dict) -> SlideInfo | None:
    try:
        ann = entry.get("annotation")
        return SlideInfo(
            slide_id=entry["slide_id"],
            path=out / entry["path"],
            label=entry["label"],
            annotation=None if ann is None else out / ann,
            size=tuple(entry["size"]),
            polygons=[
                AnnotationPolygon(np.asarray(q["vertices"], float), q["group"])
                for q in entry["polygons"]
            ],
            tissue_fraction=float(entry["tissue_fraction"]),
            tumor_fraction=float(entry["tumor_fraction"]),
            kind=entry.get("kind", "synthetic"),
            mpp=float(entry.get("mpp", DEFAULT_MPP)),
        )
    except (KeyError, TypeError, ValueError):
        return None


def _slide_file_ok(info: SlideInfo) -> bool:
    """The TIFF is readable with the expected level-0 size, and the tumour XML is there."""
    import tifffile

    if info.label == "tumor" and (info.annotation is None or not Path(info.annotation).is_file()):
        return False
    try:
        with tifffile.TiffFile(info.path) as tif:
            page = tif.pages[0]
            return (page.imagewidth, page.imagelength) == tuple(info.size) and len(tif.pages) >= 3
    except Exception:  # any unreadable file is simply regenerated
        return False


def _remove_stale(out: Path, slides_dir: Path, ann_dir: Path, plans: list[_SlidePlan]) -> None:
    """Drop generated files that the new plan does not contain (fewer slides, or a
    test slide that is now normal), so later stages never see a stale slide."""
    wanted = {p.slide_id: p for p in plans}
    prefixes = tuple(f"{k}_" for k in _SPLIT_CODES)
    for f in slides_dir.glob("*.tif"):
        if f.stem.startswith(prefixes) and f.stem not in wanted:
            f.unlink()
    for f in ann_dir.glob("*.xml"):
        if f.stem.startswith(prefixes) and (f.stem not in wanted or not wanted[f.stem].tumor):
            f.unlink()


# --------------------------------------------------------------------------- reference CSV
def write_reference_csv(path: str | os.PathLike, test_slides: list[SlideInfo]) -> Path:
    """The test-set reference in the layout of CAMELYON16's official reference
    (index, ``Unnamed: 0``, slide_name, is_tumor Tumor/Normal, category_1,
    category_2 Macro/Micro/ITC/None, truth 1/0)."""
    import pandas as pd

    rows = []
    for s in test_slides:
        tumor = s.label == "tumor"
        rows.append(
            {
                "slide_name": s.slide_id,
                "is_tumor": "Tumor" if tumor else "Normal",
                "category_1": "synthetic" if s.kind != "mosaic" else "mosaic",
                "category_2": _metastasis_size(s) if tumor else "None",
                "truth": int(tumor),
            }
        )
    frame = pd.DataFrame(rows, columns=list(REFERENCE_COLUMNS))
    frame.insert(0, "Unnamed: 0", range(len(frame)))
    return atomic_write_csv(path, frame, index=True)


def _metastasis_size(slide: SlideInfo) -> str:
    """CAMELYON's size classes from the largest lesion's longest extent."""
    extents = [np.ptp(p.vertices, axis=0).max() for p in slide.polygons if not p.is_exclusion]
    if not extents:
        return "None"
    microns = max(extents) * slide.mpp
    return "Macro" if microns > 2000 else "Micro" if microns > 200 else "ITC"


# --------------------------------------------------------------------------- tile mosaics
def load_tiles(tiles_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read ``tiles_dir/tumor/*`` and ``tiles_dir/normal/*`` image tiles as RGB
    uint8 stacks ``(N, T, T, 3)`` (transparent pixels over white, all resized
    to the first tile's square size), in sorted file order."""
    from PIL import Image, UnidentifiedImageError

    root = Path(tiles_dir)
    out = {}
    size = None
    for label in ("normal", "tumor"):
        folder = root / label
        files = (
            sorted(f for f in folder.glob("*") if f.suffix.lower() in TILE_EXTENSIONS)
            if folder.is_dir()
            else []
        )
        if not files:
            raise InputFileError(
                folder,
                f"no {label} tiles found",
                f"put {label} image tiles ({', '.join(TILE_EXTENSIONS)}) in {folder}",
            )
        stack = []
        for f in files:
            try:
                with Image.open(f) as im:
                    im = im.convert("RGBA")
                    if size is None:
                        size = min(im.size)
                    if im.size != (size, size):
                        im = im.resize((size, size), Image.BILINEAR)
                    rgba = np.asarray(im)
            except (OSError, UnidentifiedImageError) as exc:
                raise InputFileError(
                    f, f"cannot be read as an image tile ({exc})", "remove or re-export this tile"
                ) from exc
            alpha = rgba[..., 3:].astype(np.uint16)
            if alpha.min() == 255:
                stack.append(rgba[..., :3])
            else:  # transparent pixels over white
                rgb = (rgba[..., :3] * alpha + 255 * (255 - alpha) + 127) // 255
                stack.append(rgb.astype(np.uint8))
        out[label] = np.stack(stack)
    return out


def render_mosaic(
    tiles: dict[str, np.ndarray],
    size: tuple[int, int] = DEFAULT_SIZE,
    *,
    tumor: bool = False,
    seed: int = 0,
) -> tuple[np.ndarray, list[AnnotationPolygon], float, float]:
    """A slide made of real tiles on white: an irregular tissue piece of normal
    tiles, plus, for a tumour slide, one or two rectangular blocks of tumour
    tiles. Returns ``(rgb, tumour rectangles, tissue_fraction, tumour fraction
    of the tissue)``. Tiles are placed on a grid aligned to level-0 multiples
    of the tile size, with random 90-degree turns and flips."""
    from sae1n.demo.synthetic import _od_to_rgb, _smooth_noise

    rng = np.random.default_rng(seed)
    t = tiles["normal"].shape[1]
    width, height = (int(v) for v in size)
    gw, gh = width // t, height // t
    # tissue cells: a blob around the centre with a noisy outline, 40-60% of the grid
    yy, xx = np.mgrid[0:gh, 0:gw]
    r = np.hypot((xx - (gw - 1) / 2) / max(gw / 2, 1), (yy - (gh - 1) / 2) / max(gh / 2, 1))
    score = -r + 0.35 * _smooth_noise(rng, (gh, gw), 1.2)
    if gw >= 6 and gh >= 6:  # a glass margin of one tile around the tissue
        score[[0, -1], :] = score[:, [0, -1]] = -np.inf
    n_tissue = max(4, int(round(rng.uniform(0.4, 0.55) * gw * gh)))
    n_tissue = min(n_tissue, int(np.isfinite(score).sum()))
    order = np.argsort(-score.ravel(), kind="stable")
    cell_class = np.zeros(gw * gh, np.uint8)  # 0 background, 1 normal, 2 tumour
    cell_class[order[:n_tissue]] = 1
    cell_class = cell_class.reshape(gh, gw)

    rects: list[tuple[int, int, int, int]] = []  # (cx0, cy0, cx1, cy1) in cells, exclusive end
    if tumor:
        n_blocks = int(rng.choice([1, 1, 2]))
        for b in range(n_blocks):
            longest = max(3, min(gw, gh) // 3)
            bw, bh = (
                (int(rng.integers(2, longest + 1)), int(rng.integers(2, longest + 1)))
                if b == 0
                else (1, int(rng.integers(1, 3)))
            )
            spot = None
            while spot is None and bw * bh >= 1:
                bw, bh = min(bw, gw), min(bh, gh)
                spot = _tissue_block(cell_class, bw, bh, rng)
                if spot is None:  # shrink the block until it fits in the tissue
                    bw, bh = (bw - 1, bh) if bw >= bh else (bw, bh - 1)
            if spot is None:
                continue
            cx, cy = spot
            cell_class[cy : cy + bh, cx : cx + bw] = 2
            rects.append((cx, cy, cx + bw, cy + bh))
        if not rects:
            raise ConfigError(
                f"no room for a tumour block on a {gw}x{gh}-tile mosaic; use a larger size"
            )

    rgb = np.empty((height, width, 3), np.uint8)
    rgb[:] = _od_to_rgb(np.zeros(3))
    for cy, cx in zip(*np.nonzero(cell_class), strict=True):
        stack = tiles["tumor" if cell_class[cy, cx] == 2 else "normal"]
        tile = stack[int(rng.integers(len(stack)))]
        tile = np.rot90(tile, int(rng.integers(4)))
        if rng.random() < 0.5:
            tile = tile[:, ::-1]
        rgb[cy * t : (cy + 1) * t, cx * t : (cx + 1) * t] = tile
    polygons = [
        AnnotationPolygon(np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float) * t, "_0")
        for x0, y0, x1, y1 in rects
    ]
    n_cells = np.count_nonzero(cell_class)
    tissue_fraction = n_cells * t * t / (width * height)
    return rgb, polygons, tissue_fraction, float(np.count_nonzero(cell_class == 2) / n_cells)


def _tissue_block(
    cell_class: np.ndarray, bw: int, bh: int, rng: np.random.Generator
) -> tuple[int, int] | None:
    """Top-left cell of a bw x bh block of normal tissue cells (random among all)."""
    gh, gw = cell_class.shape
    normal = (cell_class == 1).astype(np.int32)
    # summed-area table: count of normal cells in every bw x bh window
    sat = np.pad(normal, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    win = sat[bh:, bw:] - sat[:-bh, bw:] - sat[bh:, :-bw] + sat[:-bh, :-bw]
    ys, xs = np.nonzero(win == bw * bh)
    if not len(xs):
        return None
    j = int(rng.integers(len(xs)))
    return int(xs[j]), int(ys[j])


def generate_mosaic_slide(
    path: str | os.PathLike,
    tiles: dict[str, np.ndarray],
    *,
    tumor: bool = False,
    size: tuple[int, int] = DEFAULT_SIZE,
    seed: int = 0,
    annotation_path: str | os.PathLike | None = None,
    mpp: float = DEFAULT_TILE_MPP,
    quality: int = 90,
) -> SlideInfo:
    """Write one mosaic slide (pyramidal TIFF) and, for a tumour slide, its ASAP XML."""
    path = Path(path)
    rgb, polygons, tissue_fraction, tumor_fraction = render_mosaic(
        tiles, size, tumor=tumor, seed=seed
    )
    magnification = round(DEFAULT_MAGNIFICATION * DEFAULT_MPP / mpp, 1)
    write_pyramidal_tiff(path, rgb, mpp=mpp, magnification=magnification, quality=quality)
    ann = (
        write_asap_xml(annotation_path, polygons)
        if polygons and annotation_path is not None
        else None
    )
    return SlideInfo(
        slide_id=path.stem,
        path=path,
        label="tumor" if tumor else "normal",
        annotation=ann,
        size=(int(size[0]), int(size[1])),
        polygons=polygons,
        tissue_fraction=float(tissue_fraction),
        tumor_fraction=tumor_fraction,
        kind="mosaic",
        mpp=mpp,
    )
