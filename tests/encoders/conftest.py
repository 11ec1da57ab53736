"""Small generated slides, patches and patch files for the encoder tests."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from sae1n.wsi.writers import write_pyramidal_tiff


def disk_image(
    rng,
    size: int,
    background,
    nucleus_colour,
    n_nuclei: int,
    radius: tuple[int, int],
    noise: float = 8.0,
) -> np.ndarray:
    """An RGB uint8 square: a background colour with dark round nuclei."""
    img = np.empty((size, size, 3), np.float32)
    img[:] = background
    for _ in range(n_nuclei):
        cy, cx = rng.integers(0, size, 2)
        r = rng.uniform(*radius)
        y0, y1, x0, x1 = (
            max(0, int(cy - r)),
            min(size, int(cy + r) + 1),
            max(0, int(cx - r)),
            min(size, int(cx + r) + 1),
        )
        yy, xx = np.mgrid[y0:y1, x0:x1]
        m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        img[y0:y1, x0:x1][m] = nucleus_colour + rng.normal(0, 10, 3)
    img += rng.normal(0, noise, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def tumour_patch(rng, size=256):
    """Dense, large, dark purple nuclei on a lilac background."""
    return disk_image(
        rng,
        size,
        (200, 160, 210),
        (70, 30, 110),
        n_nuclei=int(rng.integers(60, 90)),
        radius=(7, 11),
    )


def stroma_patch(rng, size=256):
    """Pink stroma with a few small nuclei."""
    return disk_image(
        rng, size, (235, 170, 200), (120, 70, 150), n_nuclei=int(rng.integers(3, 10)), radius=(2, 4)
    )


def fat_patch(rng, size=256):
    """Mostly white (fat) with pink septa."""
    img = disk_image(rng, size, (245, 240, 245), (120, 70, 150), n_nuclei=2, radius=(2, 3), noise=4)
    img[:: 48 + int(rng.integers(0, 16))] = (230, 150, 190)
    return img


def tissue_image(seed: int = 0, size: int = 1024) -> np.ndarray:
    """A slide-like image: a tile mosaic of stroma, fat and tumour patches."""
    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), 245, np.uint8)
    kinds = [stroma_patch, fat_patch, tumour_patch]
    for y in range(0, size, 128):
        for x in range(0, size, 128):
            img[y : y + 128, x : x + 128] = kinds[int(rng.integers(0, 3))](rng, 128)
    return img


def write_patch_h5(path: Path, coords, patch_size=256, patch_level=0, **attrs) -> Path:
    """A CLAM-style patch file: ``coords`` with CLAM attributes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("coords", data=np.asarray(coords, np.int64).reshape(-1, 2))
        ds.attrs["patch_size"] = patch_size
        ds.attrs["patch_level"] = patch_level
        ds.attrs["name"] = path.stem
        for k, v in attrs.items():
            ds.attrs[k] = v
    return path


def grid(size: int, step: int, start: int = 0) -> np.ndarray:
    return np.array(
        [
            (x, y)
            for y in range(start, size - step + 1, step)
            for x in range(start, size - step + 1, step)
        ],
        np.int64,
    )


@pytest.fixture(scope="session")
def slide_dir(tmp_path_factory) -> Path:
    """Two generated 1024 px pyramidal slides (3 levels, 256 px JPEG tiles)."""
    d = tmp_path_factory.mktemp("slides")
    for i, name in enumerate(["slide_a", "slide_b"]):
        write_pyramidal_tiff(d / f"{name}.tif", tissue_image(seed=i), mpp=0.5, levels=3, tile=256)
    return d


@pytest.fixture()
def cohort(tmp_path, slide_dir) -> dict:
    """Patch files (16 level-0 patches of 256 px each) for the generated slides."""
    h5_dir = tmp_path / "patching"
    for name in ("slide_a", "slide_b"):
        write_patch_h5(h5_dir / "patches" / f"{name}.h5", grid(1024, 256))
    return {"h5_dir": h5_dir, "slide_dir": slide_dir, "feat_dir": tmp_path / "features"}


@pytest.fixture(autouse=True)
def _no_hub(monkeypatch):
    monkeypatch.setenv("SAE1N_NO_HUB", "1")
    for var in (
        "CONCH_CKPT_PATH",
        "UNI_CKPT_PATH",
        "RESNET50_CKPT_PATH",
        "CLIP_CKPT_PATH",
        "PLIP_CKPT_PATH",
        "UNI2_CKPT_PATH",
        "VIRCHOW2_CKPT_PATH",
        "HOPTIMUS0_CKPT_PATH",
        "HOPTIMUS1_CKPT_PATH",
        "H0_MINI_CKPT_PATH",
        "CONCH_V15_CKPT_PATH",
        "CTRANSPATH_CKPT_PATH",
        "PHIKON_V2_CKPT_PATH",
        "QUILTNET_CKPT_PATH",
        "KEEP_CKPT_PATH",
    ):
        monkeypatch.delenv(var, raising=False)
