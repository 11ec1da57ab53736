"""Patch-coordinate files (``patches/<slide>.h5``) and reading the patches they name.

The file holds ``coords`` (N, 2) int64 level-0 top-left corners with CLAM's
attributes on the dataset (``patch_size``, ``patch_level``, ``downsample``,
``downsampled_level_dim``, ``level_dim``, ``name``, ``save_path``) plus
``patch_size_level0`` (the patch side in level-0 pixels) and, when known,
``level0_mpp``; ``target_mpp`` is set when patches were defined physically
(read ``patch_size_level0 / downsample`` pixels at ``patch_level`` and
resize to ``patch_size``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sae1n.errors import ConfigError, InputFileError
from sae1n.io.provenance import PROVENANCE_KEY

MPP_SNAP_TOLERANCE = 0.02  # scanners write e.g. 0.499 or 0.2527 for nominal 0.5 / 0.25 um/px


@dataclass(frozen=True)
class PatchSpec:
    """How patches of one slide are defined: output size, the level read,
    size and grid step in level-0 pixels, and physical scale when used."""

    patch_size: int
    patch_level: int
    patch_size_level0: tuple[int, int]
    step_level0: tuple[int, int]
    downsample: tuple[float, float]
    level_dim: tuple[int, int]
    level0_mpp: float | None = None
    target_mpp: float | None = None

    @property
    def read_size(self) -> tuple[int, int]:
        """Pixels to read at ``patch_level`` (resized to ``patch_size`` when different)."""
        if self.target_mpp is None:
            return (self.patch_size, self.patch_size)
        return (
            max(1, round(self.patch_size_level0[0] / self.downsample[0])),
            max(1, round(self.patch_size_level0[1] / self.downsample[1])),
        )

    def attrs(self, name: str, save_path: str | os.PathLike = "") -> dict:
        """HDF5 attributes of the ``coords`` dataset."""
        out = {
            "patch_size": int(self.patch_size),
            "patch_level": int(self.patch_level),
            "downsample": np.asarray(self.downsample, np.float64),
            "downsampled_level_dim": np.asarray(self.level_dim, np.int64),
            "level_dim": np.asarray(self.level_dim, np.int64),
            "name": str(name),
            "save_path": str(save_path),
            "patch_size_level0": int(self.patch_size_level0[0]),
        }
        if self.level0_mpp is not None:
            out["level0_mpp"] = float(self.level0_mpp)
        if self.target_mpp is not None:
            out["target_mpp"] = float(self.target_mpp)
        return out


@dataclass(frozen=True)
class PatchGeometry:
    """The one reading of a patch file's geometry, used by every stage that
    maps patches back to the slide (extraction, labels, heatmaps).

    ``size_level0`` is the patch side in level-0 pixels (width, height): the
    ``patch_size_level0`` attribute when present, else CLAM's rule
    ``patch_size * int(downsample)`` per axis (CLAM truncates the level
    downsample: a level with downsample 3.9998 has patches of
    ``3 * patch_size`` level-0 pixels, the step of CLAM's grid). ``read_size``
    is what to read at ``patch_level``: ``patch_size`` for level-defined
    patches, ``size_level0 / downsample`` for physical ones (``target_mpp``)."""

    patch_size: int
    patch_level: int
    size_level0: tuple[int, int]
    downsample: tuple[float, float]
    target_mpp: float | None = None

    @property
    def side_level0(self) -> int:
        """The level-0 side for square patches (width)."""
        return int(self.size_level0[0])

    @property
    def read_size(self) -> tuple[int, int]:
        if self.target_mpp is None:
            return (self.patch_size, self.patch_size)
        return (
            max(1, round(self.size_level0[0] / self.downsample[0])),
            max(1, round(self.size_level0[1] / self.downsample[1])),
        )

    @classmethod
    def from_attrs(
        cls,
        attrs: Mapping,
        path: str | os.PathLike | None = None,
        level_downsamples=None,
    ) -> PatchGeometry:
        """The geometry of a patch (or feature) file's attributes. ``level_downsamples``
        (the slide's) is used when the file has no ``downsample`` attribute."""
        where = path or "<patch file>"
        fix = "re-create the patches with `sae1n create-patches` (or pass --patch_size in level-0 pixels)"
        if "patch_size" not in attrs and "patch_size_level0" not in attrs:
            raise InputFileError(where, "has no patch_size or patch_size_level0 attribute", fix)
        level = int(np.asarray(attrs.get("patch_level", 0)).ravel()[0])
        if "downsample" in attrs:
            ds = np.atleast_1d(np.asarray(attrs["downsample"], np.float64)).ravel()
        elif level_downsamples is not None and 0 <= level < len(level_downsamples):
            ds = np.atleast_1d(np.asarray(level_downsamples[level], np.float64)).ravel()
        elif level == 0:
            ds = np.ones(1)
        else:
            raise InputFileError(where, f"patch_level {level} without a downsample attribute", fix)
        ds = (float(ds[0]), float(ds[1] if ds.size > 1 else ds[0]))
        target = attrs.get("target_mpp")
        target = None if target is None or (isinstance(target, float) and np.isnan(target)) else float(target)
        size = int(np.asarray(attrs.get("patch_size", 0)).ravel()[0])
        if "patch_size_level0" in attrs:
            s0 = np.atleast_1d(np.asarray(attrs["patch_size_level0"], np.float64)).ravel()
            size0 = (int(round(s0[0])), int(round(s0[1] if s0.size > 1 else s0[0])))
        else:
            if target is not None:
                raise InputFileError(where, "has target_mpp but no patch_size_level0 attribute", fix)
            size0 = (size * int(ds[0]), size * int(ds[1]))
        if min(size0) <= 0:
            raise InputFileError(where, f"patch size in level-0 pixels is {size0}", fix)
        return cls(size or size0[0], level, size0, ds, target)


def make_patch_spec(
    slide,
    patch_size: int = 256,
    step_size: int | None = None,
    patch_level: int = 0,
    target_mpp: float | None = None,
    magnification: float | None = None,
) -> PatchSpec:
    """The patch definition for ``slide``.

    By level (CLAM): ``patch_size`` pixels at ``patch_level``; the level-0 size
    is ``patch_size * int(level downsample)``. Physically: ``target_mpp`` (or
    ``magnification`` M, meaning 10/M um/px) sets the level-0 size from the
    slide's mpp and the deepest level not finer than needed is read."""
    if patch_size <= 0 or (step_size is not None and step_size <= 0):
        raise ConfigError(
            f"patch_size and step_size must be positive (got {patch_size}, {step_size})"
        )
    step_size = patch_size if step_size is None else step_size
    if target_mpp is not None and magnification is not None:
        raise ConfigError("give --target_mpp or --magnification, not both")
    if magnification is not None:
        if magnification <= 0:
            raise ConfigError(f"--magnification must be positive, got {magnification}")
        target_mpp = 10.0 / magnification
    if target_mpp is None:
        if not 0 <= patch_level < slide.level_count:
            raise ConfigError(
                f"{slide.path.name}: --patch_level {patch_level} but the slide has {slide.level_count} level(s) (0..{slide.level_count - 1})"
            )
        scale = slide.level_scale(patch_level)
        factor = (int(scale[0]), int(scale[1]))
        return PatchSpec(
            patch_size=int(patch_size),
            patch_level=int(patch_level),
            patch_size_level0=(patch_size * factor[0], patch_size * factor[1]),
            step_level0=(step_size * factor[0], step_size * factor[1]),
            downsample=scale,
            level_dim=tuple(slide.level_dimensions[patch_level]),
            level0_mpp=slide.mpp,
        )
    if target_mpp <= 0:
        raise ConfigError(f"--target_mpp must be positive, got {target_mpp}")
    if slide.mpp is None:
        raise InputFileError(
            slide.path,
            "the slide has no microns-per-pixel metadata, so --target_mpp/--magnification cannot be applied",
            "patch by level instead with --patch_level N (and no --target_mpp/--magnification), or fix the slide's metadata",
        )
    ratio = target_mpp / slide.mpp
    nearest = round(ratio)
    if nearest >= 1 and abs(ratio - nearest) <= MPP_SNAP_TOLERANCE * ratio:
        ratio = float(nearest)
    level = slide.best_level_for_downsample(ratio)
    size0 = max(1, round(patch_size * ratio))
    step0 = max(1, round(step_size * ratio))
    return PatchSpec(
        patch_size=int(patch_size),
        patch_level=int(level),
        patch_size_level0=(size0, size0),
        step_level0=(step0, step0),
        downsample=slide.level_scale(level),
        level_dim=tuple(slide.level_dimensions[level]),
        level0_mpp=slide.mpp,
        target_mpp=float(target_mpp),
    )


def write_patch_file(
    path: str | os.PathLike, coords: np.ndarray, attrs: Mapping, provenance=None
) -> Path:
    """Write ``coords`` (N, 2) int64 with ``attrs`` (and the :class:`~sae1n.io.provenance.Provenance`
    record as a file attribute), atomically."""
    import h5py

    from sae1n.io import atomic_path

    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    with atomic_path(path) as tmp, h5py.File(tmp, "w", track_order=False) as f:
        ds = f.create_dataset(
            "coords",
            data=coords,
            maxshape=(None, 2),
            chunks=(max(1, min(len(coords), 4096)), 2),
            track_times=False,  # same coords, same bytes: content hashes stay stable
        )
        for k, v in attrs.items():
            ds.attrs[k] = v
        if provenance is not None:
            from sae1n.io.provenance import write_h5_provenance

            write_h5_provenance(f, provenance)
    return Path(path)


def read_patch_file(path: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """(coords (N, 2) int64, attrs) of a patch file written by sae1n or CLAM."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise InputFileError(
            path,
            "patch file not found",
            "run `sae1n create-patches` first (or check --data_h5_dir)",
        )
    try:
        with h5py.File(path, "r") as f:
            if "coords" not in f:
                raise InputFileError(
                    path,
                    "has no 'coords' dataset",
                    "re-create it with `sae1n create-patches --no_auto_skip`",
                )
            ds = f["coords"]
            coords = np.asarray(ds[:])
            # file-level attributes (feature h5 files) first; CLAM's coords attributes win
            attrs = {  # the file's provenance record stays with the file (read_provenance)
                **{k: _plain(v) for k, v in f.attrs.items() if k != PROVENANCE_KEY},
                **{k: _plain(v) for k, v in ds.attrs.items()},
            }
    except InputFileError:
        raise
    except Exception as exc:
        raise InputFileError(
            path, f"cannot be read as HDF5 ({exc})", "delete it and re-run `sae1n create-patches`"
        ) from exc
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise InputFileError(
            path,
            f"'coords' has shape {coords.shape}, expected (N, 2)",
            "re-create it with `sae1n create-patches --no_auto_skip`",
        )
    if not np.all(np.isfinite(coords)):
        raise InputFileError(
            path, "coords contain NaN or infinity", "re-create it with `sae1n create-patches`"
        )
    return coords.astype(np.int64), attrs


def read_patch(slide, coord, attrs: Mapping) -> np.ndarray:
    """The RGB uint8 (patch_size, patch_size, 3) patch at level-0 ``coord``
    as defined by a patch file's ``attrs``."""
    geom = PatchGeometry.from_attrs(attrs, level_downsamples=slide.level_downsamples)
    size, level, read = geom.patch_size, geom.patch_level, geom.read_size
    img = slide.read_region((int(coord[0]), int(coord[1])), level, read)
    if read != (size, size):
        import cv2

        interp = cv2.INTER_AREA if read[0] > size else cv2.INTER_CUBIC
        img = cv2.resize(img, (size, size), interpolation=interp)
    return img


def _plain(v):
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.ndarray) and v.ndim == 0:
        return v.item()
    if isinstance(v, np.generic):
        return v.item()
    return v
