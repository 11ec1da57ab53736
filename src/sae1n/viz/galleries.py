"""Galleries of a neuron's top-activating patches, read back from the slides
by their level-0 coords."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sae1n.errors import ConfigError, InputFileError
from sae1n.io import atomic_path


@dataclass
class GalleryTile:
    """One patch of a gallery: where it is and how strongly the neuron fired."""

    slide_id: str
    x: int
    y: int
    score: float


def top_tiles(
    scores_by_slide: Mapping[str, tuple[np.ndarray, np.ndarray]], n: int = 16
) -> list[GalleryTile]:
    """The ``n`` highest-scoring patches over all slides; ``scores_by_slide``
    maps slide id -> (coords (N, 2), scores (N,)). Ties break by slide id, then order."""
    if n < 1:
        raise ConfigError(f"gallery size must be >= 1, got {n}")
    cands: list[GalleryTile] = []
    for sid in sorted(scores_by_slide):
        coords, scores = scores_by_slide[sid]
        scores = np.asarray(scores, dtype=np.float64)
        take = np.argsort(-scores, kind="stable")[:n]
        cands += [
            GalleryTile(sid, int(coords[i, 0]), int(coords[i, 1]), float(scores[i])) for i in take
        ]
    cands.sort(key=lambda t: -t.score)
    return cands[:n]


def read_patch(slide, x: int, y: int, patch_size: int, tile_px: int) -> np.ndarray:
    """The level-0 square (x, y, patch_size) as a (tile_px, tile_px, 3) image,
    read from the pyramid level closest to the wanted resolution."""
    from PIL import Image

    level = slide.best_level_for_downsample(patch_size / tile_px)
    ds = slide.level_downsamples[level]
    side = max(1, int(round(patch_size / ds)))
    img = slide.read_region((x, y), level, (side, side))
    if side != tile_px:
        img = np.asarray(Image.fromarray(img).resize((tile_px, tile_px), Image.BILINEAR))
    return img


def gallery(
    tiles: Sequence[GalleryTile],
    slide_paths: Mapping[str, str | os.PathLike],
    out_path: str | os.PathLike,
    *,
    patch_size: int,
    tile_px: int = 128,
    columns: int = 8,
    title: str | None = None,
    backend: str = "auto",
) -> Path:
    """Save a grid PNG of the given patches, each captioned with its slide and score."""
    from PIL import Image, ImageDraw, ImageFont

    from sae1n.wsi.slide import open_slide

    if not tiles:
        raise ConfigError("no patches to show in the gallery")
    missing = sorted({t.slide_id for t in tiles} - set(slide_paths))
    if missing:
        raise InputFileError(
            missing[0],
            f"no slide file given for {len(missing)} slide(s) of the gallery",
            "pass the slide folder (--data_slide_dir) holding them",
        )
    columns = max(1, min(columns, len(tiles)))
    rows = math.ceil(len(tiles) / columns)
    caption = 14
    head = 22 if title else 0
    pad = 4
    sheet = Image.new(
        "RGB",
        (columns * (tile_px + pad) + pad, head + rows * (tile_px + caption + pad) + pad),
        "white",
    )
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    if title:
        draw.text((pad, 4), title, fill="black", font=font)
    by_slide: dict[str, list[int]] = {}
    for i, t in enumerate(tiles):
        by_slide.setdefault(t.slide_id, []).append(i)
    for sid, idx in by_slide.items():
        with open_slide(slide_paths[sid], backend=backend) as slide:
            for i in idx:
                t = tiles[i]
                img = read_patch(slide, t.x, t.y, patch_size, tile_px)
                r, c = divmod(i, columns)
                x0 = pad + c * (tile_px + pad)
                y0 = head + pad + r * (tile_px + caption + pad)
                sheet.paste(Image.fromarray(img), (x0, y0))
                score = f" {t.score:.3g}"
                room = max(4, tile_px // 6 - len(score))
                name = sid if len(sid) <= room else sid[: room - 2] + ".."
                label = name + score
                draw.text((x0, y0 + tile_px + 1), label, fill="black", font=font)
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        sheet.save(tmp, format="PNG")
    return out_path


def neuron_gallery(
    unit: int,
    code_files: Mapping[str, str | os.PathLike],
    slide_paths: Mapping[str, str | os.PathLike],
    out_path: str | os.PathLike,
    *,
    n: int = 16,
    patch_size: int | None = None,
    negate: bool = False,
    **kw,
) -> Path:
    """Gallery of neuron ``unit``'s ``n`` top-activating patches over the given
    slides (slide id -> code file and slide file); ``negate`` shows the lowest."""
    from sae1n.neurons.inputs import neuron_columns, read_codes
    from sae1n.viz.heatmaps import infer_patch_size

    scores: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    ps = patch_size
    for sid in sorted(set(code_files) & set(slide_paths)):
        codes, coords, attrs = read_codes(code_files[sid])
        if coords is None:
            raise InputFileError(
                code_files[sid],
                "has no coords",
                "use the h5 or sparse code files (they keep coords)",
            )
        act = neuron_columns(codes, [unit])[:, 0]
        scores[sid] = (coords, -act if negate else act)
        if ps is None:
            ps = infer_patch_size(coords, attrs)
    if not scores:
        raise ConfigError(
            "no slide has both SAE codes and a slide file; check --feature_dir and --data_slide_dir"
        )
    tiles = top_tiles(scores, n)
    if negate:
        tiles = [GalleryTile(t.slide_id, t.x, t.y, -t.score) for t in tiles]
    kw.setdefault(
        "title",
        f"SAE neuron {unit}: top {len(tiles)} {'lowest' if negate else 'activating'} patches",
    )
    return gallery(tiles, slide_paths, out_path, patch_size=int(ps), **kw)
