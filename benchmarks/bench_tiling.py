"""Benchmark: tissue segmentation + patch tiling on a large generated slide.

Writes an Aperio-style pyramidal JPEG TIFF (default 60,000 x 60,000 pixels,
2x levels down to ~1k, tissue islands with holes), tile by tile from a
generator so memory stays low (uniform tiles are JPEG-encoded once and
reused). Then, in a fresh child process so peak memory is its own, times
``segment_tissue`` + ``tissue_patch_coords`` (and the whole ``create_patches``
with previews), and compares the vectorised contour check with CLAM's
per-candidate ``cv2.pointPolygonTest`` loop on a sample of candidates.

    .venv/bin/python benchmarks/bench_tiling.py            # 60k x 60k
    .venv/bin/python benchmarks/bench_tiling.py --size 20000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TILE = 256
BLOCK = 64  # level-0 pixels per cell of the tissue map


def tissue_map(size: int, seed: int) -> np.ndarray:
    """Boolean tissue map, one cell per BLOCK x BLOCK level-0 pixels:
    elliptical islands, some with holes."""
    import cv2

    n = -(-size // BLOCK)
    rng = np.random.default_rng(seed)
    m = np.zeros((n, n), np.uint8)
    for _ in range(40):
        c = (int(rng.integers(0, n)), int(rng.integers(0, n)))
        axes = (int(rng.integers(n // 40, n // 8)), int(rng.integers(n // 40, n // 8)))
        cv2.ellipse(m, c, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        if rng.random() < 0.5:
            cv2.ellipse(m, c, (max(2, axes[0] // 4), max(2, axes[1] // 4)), 0, 0, 360, 0, -1)
    return m.astype(bool)


def write_slide(path: Path, size: int, seed: int = 0, mpp: float = 0.25) -> dict:
    """Write the pyramid; return timing and tile statistics."""
    import cv2
    import imagecodecs
    import tifffile

    t0 = time.perf_counter()
    tmap = tissue_map(size, seed)
    rng = np.random.default_rng(seed + 1)
    texture = np.clip(
        np.array([200, 110, 170]) + rng.normal(0, 25, (TILE, TILE, 3)), 0, 255
    ).astype(np.uint8)
    white = np.full((TILE, TILE, 3), 242, np.uint8)

    def encode(rgb: np.ndarray) -> bytes:
        return imagecodecs.jpeg8_encode(
            rgb, level=85, colorspace="RGB", outcolorspace="YCBCR", subsampling=(2, 2)
        )

    uniform = {True: encode(texture), False: encode(white)}
    stats = {"tiles": 0, "mixed_tiles": 0}

    def tiles(width: int, height: int, ds: int):
        cells = TILE * ds / BLOCK  # tissue-map cells per tile side at this level
        for ty in range(-(-height // TILE)):
            for tx in range(-(-width // TILE)):
                stats["tiles"] += 1
                y0, x0 = int(ty * cells), int(tx * cells)
                y1, x1 = max(y0 + 1, int((ty + 1) * cells)), max(x0 + 1, int((tx + 1) * cells))
                cell = tmap[y0:y1, x0:x1]
                if cell.size == 0 or cell.all() or not cell.any():
                    yield uniform[bool(cell.size and cell.all())]
                    continue
                stats["mixed_tiles"] += 1
                pattern = np.zeros((TILE, TILE), bool)
                ph, pw = (
                    min(TILE, round(cell.shape[0] * TILE / cells)),
                    min(TILE, round(cell.shape[1] * TILE / cells)),
                )
                pattern[:ph, :pw] = cv2.resize(
                    cell.astype(np.uint8), (pw, ph), interpolation=cv2.INTER_NEAREST
                )
                yield encode(np.where(pattern[..., None], texture, white))

    desc = f"Aperio Image Library sae1n-bench\r\n{size}x{size} [0,0 {size}x{size}] ({TILE}x{TILE}) JPEG/RGB Q=85|AppMag = {10 / mpp:g}|MPP = {mpp}"
    common = dict(
        dtype=np.uint8,
        tile=(TILE, TILE),
        photometric="rgb",
        compression="jpeg",
        subsampling=(2, 2),
        metadata=None,
    )
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        ds = 1
        while True:
            w = h = -(-size // ds)
            tif.write(
                tiles(w, h, ds),
                shape=(h, w, 3),
                description=desc if ds == 1 else desc.replace(f"{size}x{size} [", f"{w}x{h} -> ["),
                **common,
            )
            if ds == 1:  # Aperio layout: a stripped thumbnail page after the base level
                thumb = cv2.resize(tmap.astype(np.uint8) * 255, (256, 256))
                tif.write(
                    np.repeat(thumb[..., None], 3, axis=2),
                    photometric="rgb",
                    description=desc,
                    metadata=None,
                )
            if max(w, h) <= 1024:
                break
            ds *= 2
    stats["seconds"] = time.perf_counter() - t0
    stats["bytes"] = path.stat().st_size
    stats["tissue_fraction"] = float(tmap.mean())
    return stats


def clam_style_check(contour, holes, coords, ref) -> np.ndarray:
    """CLAM's per-candidate check (four_pt + hole centre) with cv2.pointPolygonTest."""
    import cv2

    half, shift = ref // 2, int(ref // 2 * 0.5)
    keep = np.zeros(len(coords), bool)
    for n, (x, y) in enumerate(coords.tolist()):
        cx, cy = x + half, y + half
        pts = [
            (cx - shift, cy - shift),
            (cx + shift, cy + shift),
            (cx + shift, cy - shift),
            (cx - shift, cy + shift),
        ]
        if any(cv2.pointPolygonTest(contour, p, False) >= 0 for p in pts):
            keep[n] = not any(
                cv2.pointPolygonTest(h, (x + ref / 2, y + ref / 2), False) > 0 for h in holes
            )
    return keep


def measure(
    slide_path: Path, out_dir: Path, patch_size: int, preset: str, backend: str, sample: int
) -> dict:
    """Runs in the child process: time the stages on an existing slide."""
    from sae1n.wsi.geometry import lattice_polygon_test
    from sae1n.wsi.patch_slides import create_patches
    from sae1n.wsi.patching import check_offsets, tissue_patch_coords
    from sae1n.wsi.presets import load_preset
    from sae1n.wsi.segmentation import segment_tissue
    from sae1n.wsi.slide import open_slide

    params = load_preset(preset)
    res = {}
    with open_slide(slide_path, backend=backend) as slide:
        t0 = time.perf_counter()
        tissue = segment_tissue(slide, params)
        t1 = time.perf_counter()
        coords, owner = tissue_patch_coords(
            tissue, patch_size, patch_size, slide.dimensions, params.contour_fn, params.use_padding
        )
        t2 = time.perf_counter()
        res.update(
            seg_s=t1 - t0,
            tiling_s=t2 - t1,
            n_patches=int(len(coords)),
            n_contours=len(tissue),
            seg_level=tissue.seg_level,
        )

        # CLAM-style loop vs the lattice test, on the candidates of the largest contour.
        big = int(np.argmax([cv2_area(c) for c in tissue.contours])) if len(tissue) else None
        if big is not None:
            c, hs = tissue.contours[big], tissue.holes[big]
            pts = c.reshape(-1, 2)
            xs = np.arange(pts[:, 0].min(), pts[:, 0].max() + 1, patch_size)
            ys = np.arange(pts[:, 1].min(), pts[:, 1].max() + 1, patch_size)
            cand = np.stack(np.meshgrid(xs, ys, indexing="ij"), -1).reshape(-1, 2)
            pick = np.random.default_rng(0).choice(len(cand), min(sample, len(cand)), replace=False)
            t3 = time.perf_counter()
            ref_keep = clam_style_check(c, hs, cand[pick], patch_size)
            loop_s = (time.perf_counter() - t3) / len(pick) * len(cand)
            t4 = time.perf_counter()
            tests = [
                lattice_polygon_test(
                    c, xs[0] + dx, ys[0] + dy, len(xs), len(ys), patch_size, patch_size
                )
                >= 0
                for dx, dy in check_offsets("four_pt", patch_size)
            ]
            keep = np.logical_or.reduce(tests)
            for h in hs:
                keep &= (
                    lattice_polygon_test(
                        h,
                        xs[0] + patch_size / 2,
                        ys[0] + patch_size / 2,
                        len(xs),
                        len(ys),
                        patch_size,
                        patch_size,
                    )
                    <= 0
                )
            vec_s = time.perf_counter() - t4
            res.update(
                largest_contour_candidates=int(len(cand)),
                clam_loop_s_extrapolated=loop_s,
                vectorised_s=vec_s,
                sample_agrees=bool(np.array_equal(keep.reshape(-1)[pick], ref_keep)),
            )

    t5 = time.perf_counter()
    df = create_patches(
        slide_path,
        out_dir,
        patch_size=patch_size,
        preset=preset,
        seg=True,
        patch=True,
        stitch=True,
        auto_skip=False,
        backend=backend,
    )
    res["create_patches_s"] = time.perf_counter() - t5
    res["create_patches_status"] = str(df["status"].iloc[0])
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return res


def cv2_area(c) -> float:
    import cv2

    return float(cv2.contourArea(c))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--size", type=int, default=60000, help="slide side in level-0 pixels (default 60000)"
    )
    ap.add_argument("--patch_size", type=int, default=256)
    ap.add_argument("--preset", default="bwh_biopsy")
    ap.add_argument("--backend", default="auto")
    ap.add_argument(
        "--sample", type=int, default=3000, help="candidates timed with the CLAM-style loop"
    )
    ap.add_argument(
        "--workdir", default=None, help="where to write the slide (default: a temp folder, deleted)"
    )
    ap.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.measure:  # child process
        out = measure(
            Path(args.measure),
            Path(args.measure).parent / "out",
            args.patch_size,
            args.preset,
            args.backend,
            args.sample,
        )
        print(json.dumps(out))
        return 0

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        slide = Path(tmp) / f"bench_{args.size}.svs"
        info = write_slide(slide, args.size)
        print(
            f"wrote {slide.name}: {args.size}x{args.size}, {info['tiles']} tiles ({info['mixed_tiles']} mixed), {info['bytes'] / 2**20:.0f} MiB, tissue {info['tissue_fraction']:.0%}, in {info['seconds']:.1f}s; writer peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
        )
        cmd = [
            sys.executable,
            __file__,
            "--measure",
            str(slide),
            "--patch_size",
            str(args.patch_size),
            "--preset",
            args.preset,
            "--backend",
            args.backend,
            "--sample",
            str(args.sample),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return proc.returncode
        r = json.loads(proc.stdout.strip().splitlines()[-1])
    seg_tile = r["seg_s"] + r["tiling_s"]
    print(f"segmentation (level {r['seg_level']}): {r['seg_s']:.2f}s, {r['n_contours']} contours")
    print(
        f"tiling: {r['n_patches']} patches in {r['tiling_s']:.3f}s = {r['n_patches'] / max(r['tiling_s'], 1e-9):,.0f} patches/s"
    )
    print(
        f"segmentation+tiling: {seg_tile:.2f}s = {r['n_patches'] / max(seg_tile, 1e-9):,.0f} patches/s"
    )
    print(
        f"full create_patches (h5, mask, stitch, geojson): {r['create_patches_s']:.2f}s, status {r['create_patches_status']}"
    )
    if "vectorised_s" in r:
        print(
            f"largest contour, {r['largest_contour_candidates']} candidates: CLAM-style pointPolygonTest loop ~{r['clam_loop_s_extrapolated']:.2f}s (extrapolated from {args.sample}), vectorised {r['vectorised_s']:.4f}s: {r['clam_loop_s_extrapolated'] / max(r['vectorised_s'], 1e-9):,.0f}x faster; sample agrees: {r['sample_agrees']}"
        )
    print(f"peak RSS of the measuring process: {r['peak_rss_mb']:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
