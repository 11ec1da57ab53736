"""Slide writers: an RGB array as a tiled pyramidal TIFF that OpenSlide and
tiffslide both open (used by the demo's generated slides, tests and benchmarks)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sae1n.io.atomic import atomic_path


def write_pyramidal_tiff(
    path: str | os.PathLike,
    image: np.ndarray,
    *,
    mpp: float | None = 0.5,
    magnification: float | None = 20.0,
    levels: int = 3,
    tile: int = 256,
    compression: str = "jpeg",
    quality: int = 90,
) -> Path:
    """Write an RGB uint8 image as a tiled pyramidal TIFF (each level 2x smaller)
    that both OpenSlide and tiffslide open, with mpp and magnification set in an
    Aperio-style description (and resolution tags). Written atomically."""
    import cv2
    import tifffile

    path = Path(path)
    image = np.ascontiguousarray(image[..., :3], dtype=np.uint8)
    h, w = image.shape[:2]
    desc = f"Aperio Image Library sae1n-synthetic\r\n{w}x{h} [0,0 {w}x{h}] ({tile}x{tile}) JPEG/RGB Q={quality}"
    if mpp:
        desc += f"|MPP = {mpp}"
    if magnification:
        desc += f"|AppMag = {magnification:g}"
    comp = ("jpeg", {"level": quality}) if compression == "jpeg" else (compression, None)
    res = {}
    if mpp:
        res = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
    # Aperio SVS layout, which OpenSlide and tifffile/tiffslide both read as a
    # pyramid: tiled level 0, a stripped thumbnail page, then tiled reductions.
    # INTER_AREA averages each 2x2 block: a proper reduction, and fast.
    pyramid = [image]
    while len(pyramid) < levels:
        ph, pw = pyramid[-1].shape[:2]
        if ph < 32 or pw < 32:
            break
        pyramid.append(
            cv2.resize(
                pyramid[-1], (max(1, pw // 2), max(1, ph // 2)), interpolation=cv2.INTER_AREA
            )
        )
    thumb = cv2.resize(
        pyramid[-1],
        (max(1, w * 256 // max(w, h)), max(1, h * 256 // max(w, h))),
        interpolation=cv2.INTER_AREA,
    )
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=image.nbytes > 2**31) as tif:
        for lvl, level_img in enumerate(pyramid):
            kw = {}
            if res:
                kw = {
                    "resolution": (res["resolution"][0] / 2**lvl, res["resolution"][1] / 2**lvl),
                    "resolutionunit": res["resolutionunit"],
                }
            tif.write(
                level_img,
                tile=(tile, tile),
                photometric="rgb",
                compression=comp[0],
                compressionargs=comp[1],
                description=desc
                if lvl == 0
                else desc.replace(f"{w}x{h} [", f"{level_img.shape[1]}x{level_img.shape[0]} -> ["),
                metadata=None,
                **kw,
            )
            if lvl == 0:
                tif.write(
                    thumb,
                    photometric="rgb",
                    compression=comp[0],
                    compressionargs=comp[1],
                    description=desc,
                    metadata=None,
                )
    return path
