"""Mosaic slides assembled from real labelled tiles (``tiles_dir`` with
``tumor/`` and ``normal/`` subfolders): loading the tiles, painting the mosaic
and writing it as a pyramidal TIFF with its ASAP XML."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from sae1n.datasets.asap_writer import AnnotationPolygon, write_asap_xml
from sae1n.demo.synthetic import DEFAULT_MAGNIFICATION, DEFAULT_MPP, DEFAULT_SIZE, SlideInfo
from sae1n.errors import ConfigError, InputFileError
from sae1n.wsi.writers import write_pyramidal_tiff

TILE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
DEFAULT_TILE_MPP = 0.25  # CAMELYON16 level-0 tiles are ~0.243 um/px (40x)


def tiles_fingerprint(tiles_dir: str | os.PathLike) -> str:
    """Changes when the tile folder's files (names, sizes, times) change."""
    from sae1n.io.provenance import fingerprint_of

    files = [
        (f"{f.parent.name}/{f.name}", f.stat().st_size, f.stat().st_mtime_ns)
        for f in sorted(Path(tiles_dir).glob("*/*"))
        if f.suffix.lower() in TILE_EXTENSIONS
    ]
    return f"{Path(tiles_dir).resolve()}#{fingerprint_of(files)}"


@functools.lru_cache(maxsize=2)
def cached_tiles(tiles_dir: str) -> dict[str, np.ndarray]:
    # one read per worker process, however many slides it makes
    return load_tiles(tiles_dir)


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
    from sae1n.demo.paint_tools import od_to_rgb, smooth_noise

    rng = np.random.default_rng(seed)
    t = tiles["normal"].shape[1]
    width, height = (int(v) for v in size)
    gw, gh = width // t, height // t
    # tissue cells: a blob around the centre with a noisy outline, 40-60% of the grid
    yy, xx = np.mgrid[0:gh, 0:gw]
    r = np.hypot((xx - (gw - 1) / 2) / max(gw / 2, 1), (yy - (gh - 1) / 2) / max(gh / 2, 1))
    score = -r + 0.35 * smooth_noise(rng, (gh, gw), 1.2)
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
    rgb[:] = od_to_rgb(np.zeros(3))
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
