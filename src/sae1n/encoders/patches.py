"""Reading patch images fast: patch files, region-batched reads, a Dataset.

Neighbouring patches are read together: the slide is cut into cells of about
``max_region`` pixels at the read level, and the patches of one cell (and of
one encoder batch) come from a single ``read_region`` of their bounding box,
then are sliced out. Sparse cells are split until the region is mostly
patches, so no read decodes much more than it uses. Reading happens in
DataLoader workers (each opens the slide itself); a failing read is retried
once with a freshly opened slide, then reported as an error item.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sae1n.errors import InputFileError


@dataclass
class PatchCoords:
    """The patch file of one slide (CLAM ``patches/<slide>.h5`` layout)."""

    path: Path
    coords: np.ndarray
    attrs: dict

    @property
    def slide_id(self) -> str:
        return self.path.stem


def read_patch_coords(path: str | os.PathLike) -> PatchCoords:
    """Read ``coords`` and its attributes (sae1n or CLAM patch file) and check
    the attributes needed to read the patches."""
    from sae1n.wsi.patch_files import read_patch_file

    path = Path(path)
    coords, attrs = read_patch_file(path)
    for key in ("patch_size", "patch_level"):
        if key not in attrs:
            raise InputFileError(
                path,
                f"coords lack the '{key}' attribute",
                "re-create the patches with `sae1n create-patches` (or CLAM's create_patches_fp.py)",
            )
    if attrs.get("target_mpp") is not None and "patch_size_level0" not in attrs:
        raise InputFileError(
            path,
            "has target_mpp but no patch_size_level0 attribute",
            "re-create the patches with `sae1n create-patches --no_auto_skip`",
        )
    return PatchCoords(path=path, coords=coords.reshape(-1, 2), attrs=attrs)


@dataclass(frozen=True)
class ReadGeometry:
    """How one slide's patches are read: pyramid level, its downsample and
    the patch size in pixels at that level (the encoder resizes it)."""

    level: int
    downsample: float
    read_w: int
    read_h: int


def read_geometry(pc: PatchCoords, level_downsamples) -> ReadGeometry:
    """The patch-file contract: ``patch_size`` pixels at ``patch_level``
    (CLAM); for physical patches (``target_mpp`` set) ``patch_size_level0 /
    downsample`` pixels at ``patch_level``. The encoder's transform resizes
    the read pixels straight to its input size."""
    ds = [float(d) for d in level_downsamples]
    level = int(pc.attrs["patch_level"])
    if not 0 <= level < len(ds):
        raise InputFileError(
            pc.path,
            f"patch_level {level} does not exist in the slide ({len(ds)} levels)",
            "the patch file belongs to another slide or scan: re-run create-patches",
        )
    from sae1n.wsi.patch_files import PatchGeometry

    geom = PatchGeometry.from_attrs(pc.attrs, pc.path, level_downsamples=ds)
    read_w, read_h = geom.read_size
    return ReadGeometry(level, ds[level], read_w, read_h)


@dataclass
class RegionRead:
    """One ``read_region`` and the patches sliced from it: ``offsets`` (n, 2)
    are (x, y) pixel offsets at the read level, ``indices`` the rows of the
    patch file."""

    x0: int
    y0: int
    width: int
    height: int
    offsets: np.ndarray
    indices: np.ndarray


def plan_batches(
    coords: np.ndarray,
    geom: ReadGeometry,
    batch_size: int,
    max_region: int = 2048,
    min_fill: float = 0.3,
    grouped: bool = True,
) -> list[list[RegionRead]]:
    """Split patches into encoder batches of ``batch_size`` (the last may be
    smaller), each a list of region reads. ``grouped=False`` gives one read
    per patch (CLAM's way), in file order."""
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    n = len(coords)
    if n == 0:
        return []
    d, s = geom.downsample, (geom.read_w, geom.read_h)
    if not grouped:
        return [
            [_region(coords, np.array([i]), d, s) for i in range(a, min(a + batch_size, n))]
            for a in range(0, n, batch_size)
        ]
    cell = max(*s, int(max_region)) * d  # level-0 size of one read cell
    cx = np.floor(coords[:, 0] / cell).astype(np.int64)
    cy = np.floor(coords[:, 1] / cell).astype(np.int64)
    # Patches share a region only if their offsets are whole pixels at the read level.
    di = round(d)
    if abs(d - di) < 1e-6 and di > 1:
        rx, ry = coords[:, 0] % di, coords[:, 1] % di
    else:
        rx = ry = np.zeros(n, np.int64)
    order = np.lexsort((coords[:, 0], coords[:, 1], rx, ry, cx, cy))
    key = np.stack([cy, cx, ry, rx], 1)[order]
    batches = []
    for a in range(0, n, batch_size):
        idx, k = order[a : a + batch_size], key[a : a + batch_size]
        cuts = np.flatnonzero((k[1:] != k[:-1]).any(1)) + 1
        regions = []
        for group in np.split(idx, cuts):
            regions.extend(_split_sparse(coords, group, d, s, min_fill))
        batches.append(regions)
    return batches


def _region(coords, idx, d, s) -> RegionRead:
    pts = coords[idx]
    x0, y0 = int(pts[:, 0].min()), int(pts[:, 1].min())
    off = np.rint((pts - [x0, y0]) / d).astype(np.int64)
    return RegionRead(
        x0,
        y0,
        int(off[:, 0].max()) + s[0],
        int(off[:, 1].max()) + s[1],
        off,
        np.asarray(idx, np.int64),
    )


def _split_sparse(coords, idx, d, s, min_fill) -> list[RegionRead]:
    r = _region(coords, idx, d, s)
    if len(idx) == 1 or len(idx) * s[0] * s[1] >= min_fill * r.width * r.height:
        return [r]
    pts = coords[idx]
    mx = (pts[:, 0].min() + pts[:, 0].max()) / 2
    my = (pts[:, 1].min() + pts[:, 1].max()) / 2
    quad = (pts[:, 0] > mx).astype(int) + 2 * (pts[:, 1] > my)
    out = []
    for q in range(4):
        sub = idx[quad == q]
        if len(sub):
            out.extend(_split_sparse(coords, sub, d, s, min_fill))
    return out


def count_pixels(batches: list[list[RegionRead]]) -> int:
    """Pixels decoded by a plan (for benchmarks and tests)."""
    return sum(r.width * r.height for b in batches for r in b)


def choose_backend(
    slide_path: str | os.PathLike, backend: str = "auto", coords=None, downsample: float = 1.0
) -> str:
    """The backend name to pass to ``open_slide`` for patch reads of
    ``coords`` at ``downsample`` (level 0 by default): "tiffslide" where the
    one "auto" policy (:func:`sae1n.wsi.readers.choose_reader`) picks it for
    these reads, else "auto" (``open_slide`` decides and reports). A named
    backend is kept."""
    if backend != "auto":
        return backend
    from sae1n.wsi.readers import choose_reader

    order = choose_reader(slide_path, backend, coords=coords, downsample=downsample)
    return "tiffslide" if order == ("tiffslide",) else "auto"


class RegionReadError(RuntimeError):
    """A region could not be read, even after re-opening the slide."""


class PatchBatchDataset:
    """Map-style dataset: item ``i`` is encoder batch ``i`` as a dict with
    ``indices`` (n,) int64, ``patches`` (n, h, w, 3) uint8 and ``error``
    ('' or why the read failed). Use with ``DataLoader(batch_size=None)``.

    With ``transform`` (an encoder's :class:`~sae1n.encoders.base.PatchTransform`)
    the worker also resizes and normalises, so ``patches`` is the float
    ``(n, 3, S, S)`` model input: this keeps the main process free for the
    model when encoding on the CPU (on a GPU the device transforms faster)."""

    def __init__(
        self,
        slide_path: str | os.PathLike,
        geom: ReadGeometry,
        batches: list[list[RegionRead]],
        backend: str = "auto",
        transform=None,
    ):
        self.slide_path = Path(slide_path)
        self.geom = geom
        self.batches = batches
        self.backend = backend
        self.transform = transform
        self._slide = None  # opened lazily in each worker process

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict:
        import torch

        regions = self.batches[i]
        n, w, h = sum(len(r.indices) for r in regions), self.geom.read_w, self.geom.read_h
        try:
            patches = np.empty((n, h, w, 3), np.uint8)
            k = 0
            for r in regions:
                img = self.read_region(r)
                for ox, oy in r.offsets:
                    patches[k] = img[oy : oy + h, ox : ox + w]
                    k += 1
        except Exception as exc:  # reported to the main process, which fails this slide only
            return {
                "indices": torch.zeros(0, dtype=torch.int64),
                "patches": torch.zeros((0, h, w, 3), dtype=torch.uint8),
                "error": str(exc),
            }
        out = torch.from_numpy(patches)
        if self.transform is not None:
            out = self.transform(out)
        indices = np.concatenate([r.indices for r in regions])
        return {"indices": torch.from_numpy(indices), "patches": out, "error": ""}

    def read_region(self, r: RegionRead) -> np.ndarray:
        """The RGB region of ``r``, retried once with a re-opened slide."""
        from sae1n.wsi.slide import open_slide

        err = None
        for _ in range(2):
            try:
                if self._slide is None:
                    self._slide = open_slide(self.slide_path, backend=self.backend)
                img = self._slide.read_region((r.x0, r.y0), self.geom.level, (r.width, r.height))
                if img.shape[:2] != (r.height, r.width):
                    raise ValueError(f"got {img.shape[1]}x{img.shape[0]} px")
                return img
            except (
                Exception
            ) as exc:  # backends raise their own types; the slide handle may be unusable now
                err = exc
                self.close()
        raise RegionReadError(
            f"reading {r.width}x{r.height} px at level {self.geom.level} from level-0 ({r.x0}, {r.y0}) failed twice ({type(err).__name__}: {err})"
        )

    def close(self) -> None:
        if self._slide is not None:
            try:
                self._slide.close()
            except Exception:  # a broken handle may fail to close; it is dropped either way
                pass
            self._slide = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_slide"] = None  # never ship an open handle to a worker
        return state
