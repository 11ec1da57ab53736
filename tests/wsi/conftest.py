"""Small generated slides for the WSI tests (written once per session)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from sae1n.wsi.writers import write_pyramidal_tiff

# Level-0 geometry of the generated tissue slide (2048 x 1536, 4 levels).
WIDTH, HEIGHT = 2048, 1536
ELLIPSE = ((700, 760), (520, 600))  # centre, half-axes: tissue with a hole
HOLE = ((700, 760), 330)  # centre, radius
DISC = ((1640, 520), 330)  # a second, solid island


def tissue_truth() -> tuple[np.ndarray, np.ndarray]:
    """Boolean level-0 maps of the tissue and of the hole."""
    tissue = np.zeros((HEIGHT, WIDTH), np.uint8)
    cv2.ellipse(tissue, ELLIPSE[0], ELLIPSE[1], 0, 0, 360, 1, -1)
    cv2.circle(tissue, DISC[0], DISC[1], 1, -1)
    hole = np.zeros_like(tissue)
    cv2.circle(hole, HOLE[0], HOLE[1], 1, -1)
    return (tissue & (1 - hole)).astype(bool), hole.astype(bool)


def tissue_image(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    tissue, _ = tissue_truth()
    img = np.full((HEIGHT, WIDTH, 3), 236, np.int16)
    img[tissue] = (190, 90, 160)
    img += rng.integers(-12, 13, img.shape, dtype=np.int16)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def slide_dir(tmp_path_factory) -> Path:
    """tissue.svs (4 levels, mpp 0.5), blank.svs (no tissue), nompp.svs
    (tissue, no mpp), corrupt.svs (random bytes), truncated.tif."""
    d = tmp_path_factory.mktemp("slides")
    img = tissue_image()
    write_pyramidal_tiff(d / "tissue.svs", img, mpp=0.5, magnification=20, levels=4)
    rng = np.random.default_rng(1)
    blank = np.clip(236 + rng.integers(-4, 5, (768, 1024, 3)), 0, 255).astype(np.uint8)
    write_pyramidal_tiff(d / "blank.svs", blank, levels=3)
    write_pyramidal_tiff(d / "nompp.svs", img[:768, 1024:], mpp=None, magnification=None, levels=3)
    (d / "corrupt.svs").write_bytes(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    (d / "truncated.tif").write_bytes((d / "tissue.svs").read_bytes()[:3000])
    return d


@pytest.fixture(scope="session")
def tissue_slide(slide_dir) -> Path:
    return slide_dir / "tissue.svs"
