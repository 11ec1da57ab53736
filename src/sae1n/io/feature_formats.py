"""Patch-feature files other tools write, read without re-extraction.

Each reader returns the one :class:`~sae1n.io.features.FeatureBag`; the
format is detected from the file (or forced with ``feature_format``):

``clam``
    ``h5_files/<slide>.h5``: ``features`` (N, D) + ``coords`` (N, 2) level-0 px.
``trident``
    TRIDENT's ``<job>/<mag>x_<size>px_<overlap>px_overlap/features_<encoder>/<slide>.h5``:
    ``features`` (attrs ``encoder``, ``name``, ``savetodir``) and ``coords``
    (attrs ``patch_size``, ``patch_size_level0``, ``level0_magnification``,
    ``target_magnification``, ``overlap``, ``level0_width``/``height``).
``stamp``
    STAMP's ``<output_dir>/<extractor>[-<hash>]/<slide>.h5``: ``feats`` (N, D, float16) and ``coords`` (N, 2) in
    **micrometres** (file attrs ``unit="um"``, ``tile_size_um``,
    ``tile_size_px``, ``extractor``, ``feat_type="tile"``, ``stamp_version``).
    Coordinates are kept in micrometres (rounded), marked ``coords_unit="um"``.
``mopadi``
    KatherLab mopadi ``<slide>/features.h5``: ``feats`` + ``coords`` (level-0
    px), or ``features`` + ``metadata`` (tile file names; coordinates are
    parsed from names like ``Tile_(x,y).jpg`` when every name has them).
``lazyslide``
    LazySlide / wsidata SpatialData stores ``<slide>.zarr``: the AnnData table
    ``tables/<model>_<tiles>`` (``X`` (N, D), ``obs.tile_id``) and the tile
    geometry ``shapes/<tiles>/shapes.parquet`` (columns ``tile_id``, ``x``,
    ``y``: level-0 px). Read with ``zarr`` (on-disk AnnData encoding) and
    ``pyarrow`` (coordinates), no spatialdata/anndata install needed.
    ``feature_format="lazyslide:<table>"`` picks one of several tables.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from sae1n.errors import InputFileError

FORMATS = ("clam", "trident", "stamp", "mopadi", "lazyslide")
H5_FORMATS = ("clam", "trident", "stamp", "mopadi")
_FIX_UNKNOWN = (
    "pass CLAM/TRIDENT (features+coords), STAMP (feats+coords, unit attrs), "
    "mopadi (feats+coords or features+metadata) h5 files or LazySlide .zarr stores"
)


def parse_format(feature_format: str | None) -> tuple[str | None, str | None]:
    """``"lazyslide:uni_tiles"`` -> ``("lazyslide", "uni_tiles")``; checks the name."""
    if feature_format in (None, "", "auto"):
        return None, None
    name, _, table = str(feature_format).partition(":")
    name = name.strip().lower()
    if name not in FORMATS:
        raise InputFileError(
            ".",
            f"unknown feature format {feature_format!r}",
            f"use one of {', '.join(FORMATS)} (or leave it unset to detect it)",
        )
    return name, (table or None)


# ----------------------------------------------------------------------------- h5 layouts


def detect_h5_format(f, path: Path) -> str:
    """The tool that wrote the open h5 file ``f`` (or ``sparse`` for SAE codes)."""
    keys = set(f.keys())
    if "indptr" in keys:
        return "sparse"
    attrs = f.attrs
    if "feats" in keys and (
        "stamp_version" in attrs or "feat_type" in attrs or "extractor" in attrs or attrs.get("unit") is not None
    ):
        return "stamp"
    if "features" in keys and "metadata" in keys and "coords" not in keys:
        return "mopadi"
    if "feats" in keys:
        return "mopadi"  # KatherLab's feats+coords without STAMP's attributes
    if "features" in keys:
        fa, ca = f["features"].attrs, (f["coords"].attrs if "coords" in keys else {})
        if "encoder" in fa or "savetodir" in fa or "patch_size_level0" in ca:
            return "trident"
        return "clam"
    raise InputFileError(
        path,
        f"is not a patch-feature file of any known layout (datasets: {sorted(keys)})",
        _FIX_UNKNOWN,
    )


def _decode(v):
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.ndarray):
        return [_decode(x) for x in v.tolist()] if v.dtype.kind in "OSU" else v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


def _attrs(obj) -> dict:
    return {k: _decode(v) for k, v in obj.attrs.items()}


def read_stamp(f, path: Path) -> dict:
    """STAMP tile features: float16 ``feats``, micrometre ``coords``."""
    attrs = _attrs(f)
    if str(attrs.get("feat_type", "tile")) != "tile":
        raise InputFileError(
            path,
            f"holds STAMP {attrs.get('feat_type')}-level features, not per-tile features",
            "point to STAMP's tile feature folder (the `stamp preprocess` output)",
        )
    feats = np.asarray(f["feats"][()], dtype=np.float32)
    coords = None
    if "coords" in f:
        raw = np.asarray(f["coords"][()], dtype=np.float64)
        in_um = attrs.get("unit") == "um" or "tile_size_um" in attrs
        attrs["coords_unit"] = "um" if in_um else "px"
        coords = np.rint(raw).astype(np.int64) if raw.size else raw.reshape(-1, 2).astype(np.int64)
        if raw.size and np.abs(raw - np.rint(raw)).max() > 0.01:
            attrs["coords_rounded"] = True
    attrs["feature_format"] = "stamp"
    return {"features": feats, "coords": coords, "attrs": attrs}


_TILE_XY = re.compile(r"\((\d+)\s*,\s*(\d+)\)")


def read_mopadi(f, path: Path) -> dict:
    """mopadi's ``feats``+``coords`` or ``features``+``metadata`` (tile names)."""
    attrs = _attrs(f)
    attrs["feature_format"] = "mopadi"
    key = "feats" if "feats" in f else "features"
    feats = np.asarray(f[key][()], dtype=np.float32)
    coords, names = None, None
    if "coords" in f:
        coords = np.asarray(f["coords"][()])
    elif "metadata" in f:
        names = [_decode(x) for x in f["metadata"][()].tolist()]
        parsed = [_TILE_XY.search(str(n)) for n in names]
        if names and all(parsed):
            coords = np.array([[int(m.group(1)), int(m.group(2))] for m in parsed], dtype=np.int64)
    return {"features": feats, "coords": coords, "attrs": attrs, "tile_names": names}


# ----------------------------------------------------------------------------- LazySlide / SpatialData


def _zarr_read(node):
    return node[()] if getattr(node, "shape", None) == () else node[:]


def _anndata_X(node, path: Path) -> np.ndarray:
    enc = node.attrs.get("encoding-type", "array")
    if enc == "array" or hasattr(node, "dtype"):
        return np.asarray(node[:], dtype=np.float32)
    if enc in ("csr_matrix", "csc_matrix"):
        from scipy import sparse

        shape = tuple(int(s) for s in node.attrs["shape"])
        cls = sparse.csr_matrix if enc == "csr_matrix" else sparse.csc_matrix
        m = cls((node["data"][:], node["indices"][:], node["indptr"][:]), shape=shape)
        return np.asarray(m.toarray(), dtype=np.float32)
    raise InputFileError(path, f"feature table X has an unsupported encoding {enc!r}", "store X as a dense or CSR array")


def _obs_column(obs, name: str):
    if name not in obs:
        return None
    node = obs[name]
    if hasattr(node, "dtype"):
        return np.asarray(node[:])
    if node.attrs.get("encoding-type") == "categorical":
        cats = np.asarray(node["categories"][:])
        return cats[np.asarray(node["codes"][:])]
    return None


def _uns_attrs(table) -> dict:
    out = {}
    try:
        node = table["uns"]["spatialdata_attrs"]
    except KeyError:
        return out
    for k in node.keys():
        v = _zarr_read(node[k])
        out[k] = _decode(np.asarray(v)) if isinstance(v, np.ndarray) else _decode(v)
        if isinstance(out[k], list) and len(out[k]) == 1:
            out[k] = out[k][0]
    return out


def feature_tables(path: str | os.PathLike) -> list[str]:
    """Names of the AnnData tables with a 2-D ``X`` in a SpatialData store."""
    import zarr

    root = zarr.open_group(str(path), mode="r")
    if "tables" not in root:
        return []
    out = []
    for name in sorted(root["tables"].keys()):
        t = root["tables"][name]
        x = t.get("X") if hasattr(t, "get") else None
        if x is not None and (len(getattr(x, "shape", ())) == 2 or x.attrs.get("encoding-type") in ("csr_matrix", "csc_matrix")):
            out.append(name)
    return out


def read_lazyslide(path: str | os.PathLike, table: str | None = None) -> dict:
    """One slide's tile features from a LazySlide / SpatialData ``.zarr`` store."""
    path = Path(path)
    try:
        import zarr

        root = zarr.open_group(str(path), mode="r")
    except Exception as exc:  # not a zarr store
        raise InputFileError(path, f"is not a readable zarr store ({type(exc).__name__}: {exc})", "point to a LazySlide/SpatialData .zarr folder") from exc
    names = feature_tables(path)
    if not names:
        raise InputFileError(
            path,
            "has no feature table (tables/<model>_<tiles> with a 2-D X)",
            "run LazySlide's zs.tl.feature_extraction(wsi, model=...) and save the store, or point to another folder",
        )
    if table is None:
        if len(names) > 1:
            raise InputFileError(
                path,
                f"holds {len(names)} feature tables ({', '.join(names)})",
                f"choose one with feature_format='lazyslide:{names[0]}'",
            )
        table = names[0]
    elif table not in names:
        raise InputFileError(path, f"has no feature table {table!r} (tables: {', '.join(names)})", "pick one of the listed tables")
    t = root["tables"][table]
    feats = _anndata_X(t["X"], path)
    sd = _uns_attrs(t)
    attrs = {"feature_format": "lazyslide", "table": table, **{f"spatialdata_{k}": v for k, v in sd.items()}}
    instance_key = str(sd.get("instance_key", "tile_id"))
    obs = t["obs"] if "obs" in t else None
    tile_ids = _obs_column(obs, instance_key) if obs is not None else None
    region = sd.get("region")
    region = region[0] if isinstance(region, list) and region else region
    coords = _tile_coords(root, path, region, tile_ids, len(feats))
    return {"features": feats, "coords": coords, "attrs": attrs}


def _tile_coords(root, path: Path, region, tile_ids, n: int):
    """Level-0 top-left (x, y) of each feature row from ``shapes/<region>``."""
    if not region or "shapes" not in root or str(region) not in root["shapes"]:
        return None
    shp = path / "shapes" / str(region) / "shapes.parquet"
    if not shp.exists():
        return None
    try:
        import pyarrow.parquet as pq
    except ImportError:  # coordinates are optional for SAE training
        return None
    cols = set(pq.read_schema(shp).names)
    if {"x", "y"} <= cols:
        tb = pq.read_table(shp, columns=[c for c in ("tile_id", "x", "y") if c in cols]).to_pydict()
        xy = np.stack([np.asarray(tb["x"]), np.asarray(tb["y"])], axis=1)
    elif "geometry" in cols:  # generic SpatialData polygons (WKB): top-left of the bounds
        import shapely

        tb = pq.read_table(shp, columns=[c for c in ("tile_id", "geometry") if c in cols]).to_pydict()
        bounds = shapely.bounds(shapely.from_wkb(tb["geometry"]))
        xy = bounds[:, :2]
    else:
        return None
    ids = np.asarray(tb["tile_id"]) if "tile_id" in tb else np.arange(len(xy))
    if tile_ids is None:
        if len(xy) != n:
            raise InputFileError(shp, f"has {len(xy)} tiles but the feature table {n} rows", "save the tiles and features of one run")
        return np.rint(xy).astype(np.int64)
    pos = {int(t): i for i, t in enumerate(ids)}
    try:
        order = [pos[int(t)] for t in tile_ids]
    except KeyError as exc:
        raise InputFileError(shp, f"lacks tile {exc.args[0]} of the feature table", "save the tiles and features of one run") from None
    return np.rint(xy[order]).astype(np.int64)
