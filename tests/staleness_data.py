"""Tiny generated slides and annotations shared by the staleness and reliability tests."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from sae1n.wsi.writers import write_pyramidal_tiff

SIZE = 768
NAMES = ("normal_001", "tumor_001", "test_001")


def tissue(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((SIZE, SIZE, 3), 238, np.uint8)
    cv2.circle(img, (SIZE // 2, SIZE // 2), 300, (190, 90, 160), -1)
    noise = rng.integers(-10, 11, img.shape, dtype=np.int16)
    return np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def write_asap(path: Path, polygons, group: str = "_0") -> Path:
    ann = []
    for i, poly in enumerate(polygons):
        pts = "".join(
            f'<Coordinate Order="{j}" X="{x}" Y="{y}"/>' for j, (x, y) in enumerate(poly)
        )
        ann.append(
            f'<Annotation Name="a{i}" PartOfGroup="{group}" Type="Polygon"><Coordinates>{pts}</Coordinates></Annotation>'
        )
    path.write_text(
        '<?xml version="1.0"?><ASAP_Annotations><Annotations>'
        + "".join(ann)
        + "</Annotations></ASAP_Annotations>"
    )
    return path


def make_cohort(root: Path) -> dict:
    """3 slides (768 px, 2 levels), ASAP annotations for the tumour slides, a reference CSV."""
    slides = root / "slides"
    ann = root / "ann"
    slides.mkdir(parents=True)
    ann.mkdir()
    for i, name in enumerate(NAMES):
        write_pyramidal_tiff(slides / f"{name}.tif", tissue(i), mpp=0.5, levels=2, tile=256)
    square = [(200, 200), (500, 200), (500, 500), (200, 500)]
    write_asap(ann / "tumor_001.xml", [square])
    write_asap(ann / "test_001.xml", [square])
    (root / "preset.csv").write_text("a_t,a_h,line_thickness\n0.5,0.5,20\n")
    (root / "preset2.csv").write_text("a_t,a_h,line_thickness\n0.25,0.5,20\n")
    ref = root / "reference.csv"
    ref.write_text("image,type\ntest_001,Tumor\n")
    return {
        "root": root,
        "slides": slides,
        "ann": ann,
        "reference": ref,
        "preset": root / "preset.csv",
        "preset2": root / "preset2.csv",
    }


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder`` with its bytes and mtime (to prove nothing changed)."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
