"""The feature files of ``extract-features`` and what they record: the encoder
settings and provenance of one slide's h5 / pt outputs, and whether existing
outputs read back and match the slide's patch file."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from sae1n.errors import InputFileError
from sae1n.io import read_bag
from sae1n.io.provenance import Provenance

log = logging.getLogger("sae1n.encoders.extract")  # the logger name of the messages before this module was split out

EXTRACT_SCHEMA = 1


def encoder_settings(encoder) -> dict:
    """What about an encoder shapes its features: name, dim, input size, weights."""
    from sae1n.io.provenance import input_identity

    weights = getattr(encoder, "weights", None)
    return {
        "encoder": encoder.name,
        "dim": int(encoder.dim),
        "input_size": encoder.input_size,
        "weights": None if weights is None else input_identity(weights),
    }


def feature_provenance(encoder, feat_dir, sid, patch_path, slide_dir, slide_ext) -> dict:
    """The records the two outputs of one slide will carry (h5 and pt)."""
    slide = Path(slide_dir) / f"{sid}{slide_ext}"
    prov = Provenance.make(
        "patch_features",
        EXTRACT_SCHEMA,
        encoder_settings(encoder),
        {"patches": Path(patch_path), "slide": slide},
    )
    feat_dir = Path(feat_dir)
    return {
        feat_dir / "h5_files" / f"{sid}.h5": prov,
        feat_dir / "pt_files" / f"{sid}.pt": prov,
    }


def bag_readable(path: Path) -> bool:
    if path.suffix not in (".h5", ".pt"):
        return True
    try:
        read_bag(path, allow_empty=True)
    except InputFileError as exc:
        log.info("re-extracting: %s", exc)
        return False
    return True


def h5_feature_rows(outs) -> int:
    h5 = next(p for p in outs if p.suffix == ".h5")
    try:
        import h5py

        with h5py.File(h5, "r") as f:
            return int(f["features"].shape[-2]) if f["features"].ndim >= 2 else 0
    except (OSError, KeyError):
        return 0


def encoder_info(encoder) -> dict:
    return {
        "encoder": encoder.name,
        "dim": encoder.dim,
        "input_size": encoder.input_size,
        "weights": None if encoder.weights is None else str(encoder.weights),
    }


def outputs_valid(feat_dir: str | os.PathLike, sid: str, coords: np.ndarray, dim: int) -> bool:
    """True when both ``h5_files/<sid>.h5`` and ``pt_files/<sid>.pt`` exist,
    read back, have ``dim`` columns and one row per coordinate of ``coords``."""
    feat_dir = Path(feat_dir)
    h5, pt = feat_dir / "h5_files" / f"{sid}.h5", feat_dir / "pt_files" / f"{sid}.pt"
    if not (h5.is_file() and pt.is_file()):
        return False
    try:
        bag = read_bag(h5, expected_dim=dim, allow_empty=True)
        tensor = read_bag(pt, expected_dim=dim, allow_empty=True)
    except InputFileError as exc:
        log.info("re-extracting %s: %s", sid, exc)
        return False
    same = bag.coords is not None and np.array_equal(bag.coords, coords) and tensor.n == len(coords)
    if not same:
        log.info("re-extracting %s: existing features do not match its patch file", sid)
    return same

