"""Small generated cohorts for the neuron and viz tests: SAE codes with a
planted tumour neuron, patch labels, metadata and split CSVs, slides."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from sae1n.io import write_bag, write_sparse_codes

GRID = 8  # patches per side
PATCH = 64  # level-0 patch side in pixels
DICT = 48  # SAE neurons
TUMOR_UNIT = 17
NORMAL_UNIT = 5  # fires on normal tissue, less on tumour
DEAD_UNIT = 40  # never fires


@dataclass
class Cohort:
    root: Path
    enc_dir: Path  # encoded_features/<ds>/<fs> with sparse_files/ and h5_files/ pt_files/
    label_dir: Path
    split_csv: Path
    dataset_csv: Path
    slides: dict[str, int]  # slide id -> 1 tumour / 0 normal
    split: dict[str, list[str]]
    coords: dict[str, np.ndarray] = field(default_factory=dict)
    fraction: dict[str, np.ndarray] = field(default_factory=dict)
    codes: dict[str, np.ndarray] = field(default_factory=dict)
    mil_dir: Path | None = None
    slide_dir: Path | None = None


def _grid_coords() -> np.ndarray:
    ys, xs = np.mgrid[0:GRID, 0:GRID]
    return np.stack([xs.ravel() * PATCH, ys.ravel() * PATCH], axis=1).astype(np.int64)


def _tumour_fraction(rng: np.random.Generator) -> np.ndarray:
    # a random rectangle of tumour, with partial fractions on its rim
    frac = np.zeros((GRID, GRID))
    h, w = rng.integers(2, 5, size=2)
    y0, x0 = rng.integers(0, GRID - h), rng.integers(0, GRID - w)
    frac[y0 : y0 + h, x0 : x0 + w] = 1.0
    frac[max(y0 - 1, 0) : y0 + h + 1, max(x0 - 1, 0) : x0 + w + 1] = np.maximum(
        frac[max(y0 - 1, 0) : y0 + h + 1, max(x0 - 1, 0) : x0 + w + 1], 0.2
    )
    return frac.ravel()


def make_codes(rng: np.random.Generator, frac: np.ndarray, tumour_slide: bool) -> np.ndarray:
    """(N, DICT) non-negative sparse-ish codes; TUMOR_UNIT tracks tumour patches."""
    n = frac.size
    codes = rng.exponential(1.0, size=(n, DICT)) * (rng.random((n, DICT)) < 0.15)
    tumour = frac >= 0.5
    codes[:, TUMOR_UNIT] = np.where(
        tumour, 2.0 + rng.random(n), 0.3 * rng.random(n) * (rng.random(n) < 0.3)
    )
    codes[:, NORMAL_UNIT] = np.where(tumour, 0.1 * rng.random(n), 1.0 + rng.random(n))
    if not tumour_slide:  # normal slides: the normal neuron fires strongly everywhere
        codes[:, NORMAL_UNIT] += rng.uniform(0.5, 1.5)
    codes[:, DEAD_UNIT] = 0.0
    return codes.astype(np.float32)


def write_patch_labels(
    path: Path, coords: np.ndarray, frac: np.ndarray, rng, threshold: float = 0.5
) -> None:
    # shuffled order and one missing patch: consumers must match by coords
    order = rng.permutation(len(coords))[1:]
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("coords", data=coords[order])
        f.create_dataset("tumor_fraction", data=frac[order].astype(np.float32))
        f.create_dataset("label", data=(frac[order] >= threshold).astype(np.uint8))
        f.attrs["threshold"] = threshold


def make_cohort(
    root: Path,
    n_train: tuple[int, int] = (6, 6),
    n_val: tuple[int, int] = (2, 2),
    n_test: tuple[int, int] = (4, 4),
    seed: int = 0,
    formats: tuple[str, ...] = ("sparse", "h5", "pt"),
    labels_for_normal: bool = True,
    mil_scores: bool = False,
) -> Cohort:
    """A cohort of tumour/normal slides with codes, labels, splits and metadata."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    enc = root / "output" / "sae" / "exp0" / "encoded_features" / "ds" / "fs"
    label_dir = root / "patch_labels"
    slides: dict[str, int] = {}
    split: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for name, (nt, nn) in (("train", n_train), ("val", n_val), ("test", n_test)):
        for i in range(nt):
            sid = f"{name}_tumor_{i:02d}"
            slides[sid] = 1
            split[name].append(sid)
        for i in range(nn):
            sid = f"{name}_normal_{i:02d}"
            slides[sid] = 0
            split[name].append(sid)
    coh = Cohort(
        root,
        enc,
        label_dir,
        root / "splits" / "task_42" / "splits_0.csv",
        root / "dataset.csv",
        slides,
        split,
    )
    coords = _grid_coords()
    attrs = {
        "patch_size": PATCH,
        "patch_level": 0,
        "downsample": np.array([1.0, 1.0]),
        "patch_size_level0": PATCH,
    }
    for sid, lab in slides.items():
        frac = _tumour_fraction(rng) if lab else np.zeros(GRID * GRID)
        codes = make_codes(rng, frac, bool(lab))
        coh.coords[sid], coh.fraction[sid], coh.codes[sid] = coords, frac, codes
        dense_formats = tuple(f for f in formats if f in ("h5", "pt"))
        if dense_formats:
            write_bag(enc, sid, codes, coords, attrs, formats=dense_formats)
        if "sparse" in formats:
            nz = codes != 0
            indptr = np.concatenate([[0], np.cumsum(nz.sum(axis=1))])
            rows, cols = np.nonzero(nz)
            write_sparse_codes(
                enc / "sparse_files" / f"{sid}.h5",
                indptr,
                cols,
                codes[rows, cols],
                DICT,
                coords,
                attrs,
            )
        if lab or labels_for_normal:
            write_patch_labels(label_dir / f"{sid}.h5", coords, frac, rng)
        if mil_scores and sid in split["test"] + split["val"]:
            att = rng.random(len(coords)) + 2.0 * (frac >= 0.5) * rng.random(len(coords))
            p = root / "mil" / "abmil" / "fold_0" / "patch_scores" / f"{sid}.h5"
            p.parent.mkdir(parents=True, exist_ok=True)
            with h5py.File(p, "w") as f:
                f.create_dataset("coords", data=coords)
                f.create_dataset("scores", data=(att / att.sum()).astype(np.float32))
            coh.mil_dir = root / "mil" / "abmil"
    coh.split_csv.parent.mkdir(parents=True, exist_ok=True)
    longest = max(len(v) for v in split.values())
    pd.DataFrame({k: v + [""] * (longest - len(v)) for k, v in split.items()}).to_csv(
        coh.split_csv, index=False
    )
    meta = pd.DataFrame(
        {
            "case_id": list(slides),
            "slide_id": list(slides),
            "label": ["tumor" if v else "normal" for v in slides.values()],
            "split": [next(k for k, v in split.items() if s in v) for s in slides],
        }
    )
    meta.to_csv(coh.dataset_csv, index=False)
    return coh


def slide_image(frac: np.ndarray, seed: int = 0) -> np.ndarray:
    """An RGB slide image for a cohort slide: pink tissue, purple tumour squares."""
    rng = np.random.default_rng(seed)
    side = GRID * PATCH
    img = np.full((side, side, 3), (230, 170, 200), np.uint8)
    img = np.clip(img.astype(int) + rng.integers(-10, 10, size=img.shape), 0, 255).astype(np.uint8)
    for i, f in enumerate(frac):
        if f >= 0.5:
            y, x = divmod(i, GRID)
            img[y * PATCH : (y + 1) * PATCH, x * PATCH : (x + 1) * PATCH] = (90, 40, 140)
    return img


def write_slides(coh: Cohort, slide_ids: list[str]) -> Path:
    """Pyramidal TIFFs for some cohort slides (in <root>/slides/)."""
    from sae1n.wsi.writers import write_pyramidal_tiff

    out = coh.root / "slides"
    for k, sid in enumerate(slide_ids):
        write_pyramidal_tiff(
            out / f"{sid}.tif", slide_image(coh.fraction[sid], k), levels=2, tile=128
        )
    coh.slide_dir = out
    return out
