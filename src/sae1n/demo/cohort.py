"""A small CAMELYON16-like cohort of generated slides for the demo and for tests.

``generate_cohort`` writes ``<out>/slides/{normal,tumor,test}_NNN.tif``, ASAP XML
annotations for every tumour slide in ``<out>/annotations/``, the test-set
reference CSV ``<out>/reference.csv`` (the columns of the official CAMELYON16
reference) and a manifest ``<out>/cohort.json``. Slides are painted by
:mod:`sae1n.demo.synthetic`, or, with ``tiles_dir``, assembled as mosaics of real
labelled tiles. A rerun with the same parameters skips the slides already on
disk; each slide's content depends only on (seed, name), not on cohort size.

Mosaic slides are made in :mod:`sae1n.demo.mosaic`, the manifest and the
reference CSV in :mod:`sae1n.demo.cohort_files`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sae1n.demo.cohort_files import (
    MANIFEST,
    REFERENCE_COLUMNS,
    SPLIT_CODES,
    SlidePlan,
    remove_stale_slides,
    reusable_slides,
    write_manifest,
    write_reference_csv,
)
from sae1n.demo.mosaic import (
    DEFAULT_TILE_MPP,
    TILE_EXTENSIONS,
    cached_tiles,
    generate_mosaic_slide,
    load_tiles,
    render_mosaic,
    tiles_fingerprint,
)
from sae1n.demo.synthetic import DEFAULT_SIZE, SlideInfo, generate_slide
from sae1n.errors import ConfigError

__all__ = [
    "DEFAULT_TILE_MPP", "MANIFEST", "REFERENCE_COLUMNS", "TILE_EXTENSIONS", "CohortInfo",
    "generate_cohort", "generate_mosaic_slide", "load_tiles", "render_mosaic", "write_reference_csv",
]

_GENERATOR_VERSION = 1  # bump when the painted content changes, so old cohorts regenerate


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



def _plan(n_normal: int, n_tumor: int, n_test: int, seed: int) -> list[SlidePlan]:
    """Names and per-slide seeds; half of the test slides (rounded up) carry tumour."""
    plans = []

    def slide_seed(prefix: str, i: int) -> int:
        return int(np.random.SeedSequence([seed, SPLIT_CODES[prefix], i]).generate_state(1)[0])

    plans += [
        SlidePlan(f"normal_{i:03d}", False, slide_seed("normal", i))
        for i in range(1, n_normal + 1)
    ]
    plans += [
        SlidePlan(f"tumor_{i:03d}", True, slide_seed("tumor", i)) for i in range(1, n_tumor + 1)
    ]
    test_rng = np.random.default_rng(np.random.SeedSequence([seed, 77, n_test]))
    tumor_tests = set(test_rng.permutation(n_test)[: (n_test + 1) // 2].tolist())
    plans += [
        SlidePlan(f"test_{i + 1:03d}", i in tumor_tests, slide_seed("test", i + 1))
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
        "tiles": None if tiles_dir is None else tiles_fingerprint(tiles_dir),
        "tile_mpp": float(tile_mpp) if tiles_dir is not None else None,
        "quality": int(quality),
    }
    slides_dir, ann_dir = out / "slides", out / "annotations"
    slides_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)
    plans = _plan(n_normal, n_tumor, n_test, seed)
    done = reusable_slides(out, params, plans)
    remove_stale_slides(out, slides_dir, ann_dir, plans)

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
                write_manifest(out, params, plans, infos)
    else:
        for job in progress(jobs, desc="generate slides", total=len(jobs)):
            info = _make_slide(job, tiles=tiles)
            infos[info.slide_id] = info
            write_manifest(out, params, plans, infos)
    slides = [infos[p.slide_id] for p in plans]
    write_manifest(out, params, plans, infos)
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
        tiles = cached_tiles(str(tiles_dir))
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


