"""Read, write and validate patch-feature files.

Formats understood (all produced by tools users already run):

* CLAM folders: ``<feat_dir>/h5_files/<slide>.h5`` with datasets ``features``
  (N, D) float32 and ``coords`` (N, 2) level-0 top-left integers, and
  ``<feat_dir>/pt_files/<slide>.pt`` holding the (N, D) tensor.
* TRIDENT folders: ``features_<encoder>/<slide>.h5`` (same datasets, flat
  folder; a TRIDENT job folder holding one ``features_*`` folder also works).
* Other tools' layouts, read without re-extraction (see
  :mod:`sae1n.io.feature_formats`): STAMP ``<slide>.h5`` (``feats``, coords in
  micrometres), KatherLab mopadi ``<slide>/features.h5``, LazySlide /
  SpatialData ``<slide>.zarr`` stores. The layout is detected per file, or
  forced with ``feature_format=`` (``clam``, ``trident``, ``stamp``,
  ``mopadi``, ``lazyslide[:<table>]``).
* sae1n sparse SAE codes: ``sparse_files/<slide>.h5`` with CSR datasets
  ``indptr`` (N+1), ``indices``, ``values`` plus ``coords`` and the attribute
  ``dict_size``.

Every reader validates what it returns and raises :class:`InputFileError`
naming the file and the fix. Finding the files of a folder is
:mod:`sae1n.io.feature_folders` (:func:`feature_paths`, re-exported here).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from sae1n.errors import InputFileError
from sae1n.io.atomic import atomic_path
from sae1n.io.feature_folders import FILE_TYPES, feature_paths

__all__ = [
    "FILE_TYPES", "FeatureBag", "check_same_dim", "feature_paths", "load_torch_file", "read_bag",
    "read_features", "read_sparse_codes", "write_bag", "write_sparse_codes",
]


@dataclass
class FeatureBag:
    """The patches of one slide: features (or sparse codes), coords, attributes."""

    path: Path
    features: np.ndarray | None
    coords: np.ndarray | None = None
    attrs: dict = field(default_factory=dict)
    sparse: object | None = None  # scipy.sparse.csr_matrix for SAE codes
    name: str | None = None  # slide id when the file name is not it (mopadi's <slide>/features.h5)
    tile_names: list | None = None  # per-row tile file names, when a tool stores them

    @property
    def slide_id(self) -> str:
        return self.name or self.path.stem

    @property
    def n(self) -> int:
        return int(self.features.shape[0] if self.features is not None else self.sparse.shape[0])

    @property
    def dim(self) -> int:
        return int(self.features.shape[1] if self.features is not None else self.sparse.shape[1])

    def dense(self) -> np.ndarray:
        """The (N, D) float32 matrix, densifying sparse codes if needed."""
        if self.features is not None:
            return self.features
        return np.asarray(self.sparse.toarray(), dtype=np.float32)


# ----------------------------------------------------------------------------- reading


def read_bag(
    path: str | os.PathLike,
    *,
    dense: bool = True,
    expected_dim: int | None = None,
    allow_empty: bool = False,
    check_finite: bool = True,
    feature_format: str | None = None,
) -> FeatureBag:
    """Read and validate one slide's feature file (``.h5``, ``.pt`` or a
    LazySlide ``.zarr`` store); the layout (CLAM, TRIDENT, STAMP, mopadi,
    LazySlide) is detected unless ``feature_format`` names it.

    Sparse SAE-code files come back densified unless ``dense=False``.
    Raises :class:`InputFileError` naming the file on any problem.
    """
    from sae1n.io.feature_formats import parse_format, read_lazyslide

    path = Path(path)
    fmt, table = parse_format(feature_format)
    store = path
    if path.is_dir() and path.parent.name == "tables" and path.parent.parent.suffix == ".zarr":
        store, table = path.parent.parent, table or path.name  # <slide>.zarr/tables/<table>
    if store.is_dir() and (store.suffix == ".zarr" or fmt == "lazyslide"):
        got = read_lazyslide(store, table)
        bag = FeatureBag(path=path, features=got["features"], coords=got["coords"], attrs=got["attrs"], name=store.stem)
        _validate(bag, expected_dim=expected_dim, allow_empty=allow_empty, check_finite=check_finite)
        return bag
    if fmt == "lazyslide":
        raise InputFileError(path, "is not a LazySlide .zarr store", "point to the <slide>.zarr folder")
    if not path.is_file():
        raise InputFileError(path, "file not found", "check the path, or re-run the stage that writes it")
    if path.suffix == ".pt":
        bag = _read_pt(path)
    elif path.suffix in (".h5", ".hdf5"):
        bag = _read_h5(path, dense=dense, fmt=fmt)
    else:
        raise InputFileError(path, f"unsupported feature file type {path.suffix!r}", "use .h5, .pt or .zarr feature files")
    _validate(bag, expected_dim=expected_dim, allow_empty=allow_empty, check_finite=check_finite)
    return bag


def read_features(path: str | os.PathLike, **kw) -> np.ndarray:
    """Just the (N, D) float32 feature matrix of one file."""
    return read_bag(path, **kw).dense()


def load_torch_file(path: str | os.PathLike, what: str, fix: str):
    """``torch.load(weights_only=True)`` of a user's ``.pt`` file; any failure is one
    :class:`InputFileError` naming the file. Torch's own advice to retry with
    ``weights_only=False`` (which would run code from the file) is not passed on."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or hostile pickles
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        reason = re.sub(r"\s*\(?[^.]*weights_only[^.]*\.?\)?", "", first).strip() or "unreadable"
        raise InputFileError(
            path,
            f"cannot be read as {what} ({type(exc).__name__}: {reason}); only plain tensors and "
            "state dicts are loaded, never code",
            fix,
        ) from exc


def _read_pt(path: Path) -> FeatureBag:
    import torch

    obj = load_torch_file(path, "a tensor file", "delete it and re-run the stage that writes it")
    coords = None
    if isinstance(obj, Mapping):
        if "features" not in obj:
            raise InputFileError(path, f"holds a dict without 'features' (keys: {sorted(obj)})", "save the (N, D) tensor itself, as CLAM does")
        coords = obj.get("coords")
        obj = obj["features"]
    if not isinstance(obj, torch.Tensor):
        raise InputFileError(path, f"holds a {type(obj).__name__}, not a tensor", "save the (N, D) feature tensor, as CLAM does")
    feats = obj.detach().to(torch.float32).cpu().numpy()
    if coords is not None:
        coords = np.asarray(coords.cpu().numpy() if hasattr(coords, "cpu") else coords)
    return FeatureBag(path=path, features=feats, coords=coords)


def _read_h5(path: Path, dense: bool, fmt: str | None = None) -> FeatureBag:
    from sae1n.io import feature_formats as ff

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise InputFileError(path, f"is not a readable HDF5 file ({exc})", "delete it and re-run the stage that writes it") from exc
    with f:
        found = ff.detect_h5_format(f, path) if (fmt is not None or "feats" in f or "metadata" in f) else None
        if fmt is not None and found != fmt and {found, fmt} != {"clam", "trident"}:
            raise InputFileError(path, f"is a {found} feature file, not {fmt}", f"drop feature_format (detected: {found}) or pass the {fmt} files")
        name = path.parent.name if path.name == "features.h5" and path.parent.name else None
        if found in ("stamp", "mopadi"):
            got = (ff.read_stamp if found == "stamp" else ff.read_mopadi)(f, path)
            feats = got["features"]
            if feats.ndim == 3 and feats.shape[0] == 1:
                feats = feats[0]
            return FeatureBag(
                path=path, features=feats, coords=got["coords"], attrs=got["attrs"], name=name, tile_names=got.get("tile_names")
            )
        # the file's own provenance record is not a property to copy onward (read_provenance reads it)
        attrs = {k: _plain(v) for k, v in f.attrs.items() if k != "sae1n_provenance"}
        if "features" in f and hasattr(f["features"], "attrs"):
            attrs.update({k: _plain(v) for k, v in f["features"].attrs.items()})
        coords = None
        if "coords" in f:
            coords = f["coords"][()]
            attrs.update({k: _plain(v) for k, v in f["coords"].attrs.items()})
        if "indptr" in f:
            from scipy import sparse

            for key in ("indices", "values"):
                if key not in f:
                    raise InputFileError(path, f"sparse code file lacks dataset '{key}'", "re-run `sae1n save-sae-features`")
            n = f["indptr"].shape[0] - 1
            dict_size = int(f.attrs.get("dict_size", 0))
            if dict_size <= 0:
                raise InputFileError(path, "sparse code file lacks the 'dict_size' attribute", "re-run `sae1n save-sae-features`")
            csr = sparse.csr_matrix(
                (f["values"][()].astype(np.float32), f["indices"][()], f["indptr"][()]), shape=(n, dict_size)
            )
            bag = FeatureBag(path=path, features=None, coords=coords, attrs=attrs, sparse=csr)
            if dense:
                bag.features, bag.sparse = bag.dense(), None
            return bag
        key = "features" if "features" in f else ("feats" if "feats" in f else None)
        if key is None:
            raise InputFileError(path, f"has no 'features' dataset (datasets: {sorted(f.keys())})", "point to a CLAM/TRIDENT feature file, or re-run `sae1n extract-features`")
        feats = f[key][()]
    if feats.ndim == 3 and feats.shape[0] == 1:  # some tools store (1, N, D)
        feats = feats[0]
    return FeatureBag(path=path, features=np.asarray(feats, dtype=np.float32), coords=coords, attrs=attrs, name=name)


def _plain(v):
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


def _validate(bag: FeatureBag, *, expected_dim: int | None, allow_empty: bool, check_finite: bool) -> None:
    path = bag.path
    mat = bag.features if bag.features is not None else bag.sparse
    if mat.ndim == 1:
        raise InputFileError(path, f"holds one {mat.shape[0]}-d vector: a slide-level embedding (TRIDENT slide_features_*, STAMP slide encoding), not patch features (features must be 2-D)", "point to the per-patch feature folder (TRIDENT features_<encoder>/, STAMP tile features)")
    if mat.ndim != 2:
        raise InputFileError(path, f"features must be 2-D (N patches, D dims), got shape {tuple(mat.shape)}", "re-extract features; each row must be one patch")
    if mat.shape[0] == 0 and not allow_empty:
        raise InputFileError(path, "has no patches (0 rows)", "check the slide's tissue segmentation, or drop this slide from the split")
    if mat.shape[1] == 0:
        raise InputFileError(path, "features have 0 dimensions", "re-extract features for this slide")
    if bag.coords is not None:
        c = np.asarray(bag.coords)
        if c.ndim != 2 or c.shape[1] != 2:
            raise InputFileError(path, f"coords must have shape (N, 2), got {tuple(c.shape)}", "re-create the patch coordinates")
        if c.shape[0] != mat.shape[0]:
            raise InputFileError(path, f"{mat.shape[0]} feature rows but {c.shape[0]} coords", "the file is inconsistent; re-extract this slide")
        bag.coords = c.astype(np.int64, copy=False)
    if expected_dim is not None and mat.shape[1] != expected_dim:
        raise InputFileError(path, f"feature dimension {mat.shape[1]} differs from the expected {expected_dim}", "use features from one encoder only, or fix the configured input size")
    if check_finite:
        vals = mat if bag.features is not None else mat.data
        if not np.isfinite(vals).all():
            bad = int((~np.isfinite(vals)).sum())
            raise InputFileError(path, f"contains {bad} NaN/Inf values", "re-extract this slide (check the encoder and input tiles)")


def check_same_dim(bags: Iterable[tuple[str | os.PathLike, int]]) -> int:
    """Check that all (path, dim) pairs share one dimension; return it.

    The odd one out (against the most common dimension) is named in the error.
    """
    pairs = [(Path(p), int(d)) for p, d in bags]
    if not pairs:
        raise InputFileError(".", "no feature files given", "check the feature folder and split")
    dims = [d for _, d in pairs]
    common = max(set(dims), key=dims.count)
    for p, d in pairs:
        if d != common:
            raise InputFileError(p, f"feature dimension {d} differs from the other slides' {common}", "all slides must come from the same encoder; re-extract this slide")
    return common


# ----------------------------------------------------------------------------- writing


def write_bag(
    feat_dir: str | os.PathLike,
    slide_id: str,
    features: np.ndarray,
    coords: np.ndarray | None,
    attrs: Mapping | None = None,
    formats: Iterable[str] = ("h5", "pt"),
    provenance=None,
) -> dict[str, Path]:
    """Write one slide's features into a CLAM folder, atomically.
    ``provenance`` (a :class:`~sae1n.io.provenance.Provenance`) goes into the
    h5 file's attributes and a sidecar of the pt file.

    ``h5_files/<slide>.h5`` gets ``features`` and ``coords`` (with ``attrs`` on
    the coords dataset, as CLAM does); ``pt_files/<slide>.pt`` the tensor.
    A (0, D) matrix is allowed (a slide without patches).
    """
    feats = np.ascontiguousarray(features, dtype=np.float32)
    root = Path(feat_dir)
    bag = FeatureBag(path=root / "h5_files" / f"{slide_id}.h5", features=feats, coords=None if coords is None else np.asarray(coords))
    _validate(bag, expected_dim=None, allow_empty=True, check_finite=True)
    out: dict[str, Path] = {}
    for fmt in formats:
        if fmt == "h5":
            dest = root / "h5_files" / f"{slide_id}.h5"
            with atomic_path(dest) as tmp, h5py.File(tmp, "w") as f:
                f.create_dataset("features", data=feats)
                if bag.coords is not None:
                    ds = f.create_dataset("coords", data=bag.coords.astype(np.int64))
                    for k, v in (attrs or {}).items():
                        ds.attrs[k] = v
                if provenance is not None:
                    from sae1n.io.provenance import write_h5_provenance

                    write_h5_provenance(f, provenance)
        elif fmt == "pt":
            import torch

            from sae1n.io.provenance import sidecar_path, write_sidecar

            dest = root / "pt_files" / f"{slide_id}.pt"
            sidecar_path(dest).unlink(missing_ok=True)
            with atomic_path(dest) as tmp:
                torch.save(torch.from_numpy(feats), tmp)
            if provenance is not None:
                write_sidecar(dest, provenance)
        else:
            raise ValueError(f"unknown format {fmt!r}; use 'h5' or 'pt'")
        out[fmt] = dest
    return out


def write_sparse_codes(
    path: str | os.PathLike,
    indptr: np.ndarray,
    indices: np.ndarray,
    values: np.ndarray,
    dict_size: int,
    coords: np.ndarray | None = None,
    attrs: Mapping | None = None,
) -> Path:
    """Write SAE codes in CSR form (row i = patch i) atomically."""
    path = Path(path)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["dict_size"] = int(dict_size)
        f.attrs["format"] = "csr"
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
        f.create_dataset("indptr", data=np.asarray(indptr, dtype=np.int64))
        f.create_dataset("indices", data=np.asarray(indices, dtype=np.int32))
        f.create_dataset("values", data=np.asarray(values, dtype=np.float32))
        if coords is not None:
            f.create_dataset("coords", data=np.asarray(coords, dtype=np.int64))
    return path


def read_sparse_codes(path: str | os.PathLike):
    """Return (csr_matrix, coords, attrs) from a sparse code file."""
    bag = read_bag(path, dense=False, allow_empty=True)
    if bag.sparse is None:
        from scipy import sparse

        return sparse.csr_matrix(bag.features), bag.coords, bag.attrs
    return bag.sparse, bag.coords, bag.attrs
