"""What the browser's routes serve, apart from the routing: :class:`BrowseState`
holds the experiment, the opened slides and an LRU of rendered bytes, and
renders slide tiles, neuron / attention / label overlays, patch crops and
GeoJSON exports; :func:`_asset_table` is the allow-list of static files."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

from sae1n.browse.experiment import Experiment
from sae1n.browse.slide_data import LRU
from sae1n.browse.tiles import (
    COLORMAPS,
    TILE,
    SlideTiles,
    colorize,
    colormap_lut,
    jpeg_bytes,
    outline_rgba,
    paint_tile,
    png_bytes,
)
from sae1n.errors import Sae1nError
from sae1n.io.neuron_notes import NotesStore

log = logging.getLogger("sae1n.browse.app")  # the logger name of the messages before this module was split out

STATIC_DIR = Path(__file__).resolve().parent / "static"
OVERLAYS = ("neuron", "attention", "labels")
CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png", ".html": "text/html", ".svg": "image/svg+xml"}
TILE_CACHE_BYTES = 512e6


def _asset_table() -> dict[str, Path]:
    """URL name -> file for every static asset the app may serve (the allow-list)."""
    import xstatic.pkg.leaflet as leaflet

    table = {}
    for p in STATIC_DIR.iterdir():
        if p.is_file() and p.suffix in CONTENT_TYPES:
            table[f"static/{p.name}"] = p
    base = Path(leaflet.BASE_DIR)
    for name in ("leaflet.js", "leaflet.css"):
        table[f"vendor/leaflet/{name}"] = base / name
    for p in (base / "images").glob("*.png"):
        table[f"vendor/leaflet/images/{p.name}"] = p
    return table


class BrowseState:
    """The experiment plus the caches of opened slides and rendered tiles."""

    def __init__(self, exp: Experiment, tile_cache_bytes: float = TILE_CACHE_BYTES):
        self.exp = exp
        self.notes = NotesStore(exp.exp_dir)
        self.tiles = LRU(tile_cache_bytes)
        self._slides: dict[str, SlideTiles] = {}
        self._lock = threading.Lock()
        self._luts = {name: colormap_lut(name) for name in COLORMAPS}
        self.assets = _asset_table()

    def slide_tiles(self, sid: str) -> SlideTiles:
        """Opened lazily, once per slide."""
        sid = self.exp.check_slide(sid)
        with self._lock:
            st = self._slides.get(sid)
        if st is not None:
            return st
        path = self.exp.slide_paths.get(sid)
        if path is not None:
            try:
                st = SlideTiles(path)
            except Sae1nError as exc:
                log.warning("browse: %s; showing the overlays on a blank canvas", exc)
                st = None
        if st is None:
            st = SlideTiles(None, self._blank_size(sid))
        with self._lock:
            return self._slides.setdefault(sid, st)

    def _blank_size(self, sid: str) -> tuple[int, int]:
        s = self.exp.slide(sid)
        dim = s.attrs.get("level_dim")
        if dim is not None and np.size(dim) >= 2 and int(np.ravel(dim)[0]) > 0:
            return int(np.ravel(dim)[0]), int(np.ravel(dim)[1])
        if s.n:
            return int(s.coords[:, 0].max() + s.patch_size), int(s.coords[:, 1].max() + s.patch_size)
        return s.patch_size, s.patch_size

    def slide_info(self, sid: str) -> dict:
        st = self.slide_tiles(sid)
        s = self.exp.slide(sid)
        return {
            "slide_id": sid,
            "width": st.width,
            "height": st.height,
            "max_level": st.max_level,
            "tile_size": TILE,
            "has_file": st.has_file,
            "mpp": st.mpp,
            "patch_size": s.patch_size,
            "n_patches": s.n,
            "label": self.exp.slide_labels.get(sid, ""),
            "split": self.exp.slide_split.get(sid, ""),
            "has_attention": sid in self.exp.attention_paths,
            "has_labels": sid in self.exp.label_paths,
            "outlines": self.exp.outlines(sid),
        }

    # ------------------------------------------------------------------ tiles
    def slide_tile(self, sid: str, z: int, x: int, y: int) -> bytes | None:
        key = ("slide", sid, z, x, y)
        got = self.tiles.get(key)
        if got is None:
            got = self.slide_tiles(sid).tile_jpeg(z, x, y)
            if got is not None:
                self.tiles.put(key, got, len(got))
        return got

    def overlay_tile(self, sid: str, kind: str, z: int, x: int, y: int, *, unit: int | None, cmap: str, thr: float, vmax: float | None) -> bytes | None:
        if kind not in OVERLAYS or cmap not in self._luts:
            raise KeyError(kind)
        key = ("ov", sid, kind, z, x, y, unit, cmap, round(thr, 4), None if vmax is None else round(vmax, 6))
        got = self.tiles.get(key)
        if got is not None:
            return got
        st = self.slide_tiles(sid)
        box = st.tile_box(z, x, y)
        if box is None:
            return None
        ds = st.downsample(z)
        origin = (x * TILE * ds, y * TILE * ds)
        w, h = box
        x1, y1 = origin[0] + w * ds, origin[1] + h * ds
        s = self.exp.slide(sid)
        if kind == "neuron":
            if unit is None or not 0 <= unit < s.codes.shape[1]:
                raise KeyError(unit)
            idx = s.in_box(origin[0], origin[1], x1, y1)
            vals = self.exp.activations(sid, unit)
            top = float(vmax) if vmax else float(vals.max(initial=0.0))
            top = top if top > 0 else 1.0
            canvas = paint_tile(s.coords[idx], vals[idx] / top, s.patch_size, origin, ds, (h, w))
            rgba = colorize(canvas, self._luts[cmap], thr)
        elif kind == "attention":
            att = self._attention_norm(sid)
            if att is None:
                raise KeyError(kind)
            coords, vals = att
            m = (coords[:, 0] > origin[0] - s.patch_size) & (coords[:, 0] < x1) & (coords[:, 1] > origin[1] - s.patch_size) & (coords[:, 1] < y1)
            canvas = paint_tile(coords[m], vals[m], s.patch_size, origin, ds, (h, w))
            rgba = colorize(canvas, self._luts[cmap], thr)
        else:
            lab = self.exp.patch_labels(sid)
            if lab is None:
                raise KeyError(kind)
            coords = lab[0][lab[2] == 1]
            m = (coords[:, 0] > origin[0] - s.patch_size) & (coords[:, 0] < x1) & (coords[:, 1] > origin[1] - s.patch_size) & (coords[:, 1] < y1)
            pad = 2  # paint a margin so outlines do not break at tile borders
            canvas = paint_tile(coords[m], np.ones(int(m.sum())), s.patch_size, (origin[0] - pad * ds, origin[1] - pad * ds), ds, (h + 2 * pad, w + 2 * pad))
            rgba = outline_rgba(np.isfinite(canvas))[pad:-pad, pad:-pad]
        out = png_bytes(rgba)
        self.tiles.put(key, out, len(out))
        return out

    def _attention_norm(self, sid: str):
        from sae1n.viz.heatmaps import normalize_scores

        key = ("attnorm", sid)
        got = self.tiles.get(key)
        if got is None:
            att = self.exp.attention(sid)
            if att is None:
                return None
            coords, scores = att
            vals, _, _ = normalize_scores(scores, "percentile")
            got = (coords, vals.astype(np.float32))
            self.tiles.put(key, got, coords.nbytes + vals.nbytes)
        return got

    # ------------------------------------------------------------------ patches
    def patch_info(self, sid: str, i: int, n_top: int = 12) -> dict:
        s = self.exp.slide(sid)
        x, y = (int(v) for v in s.coords[i])
        units, acts = s.row(i)
        order = np.argsort(-acts, kind="stable")[:n_top]
        info = {
            "slide_id": sid,
            "x": x,
            "y": y,
            "patch_size": s.patch_size,
            "top_neurons": [{"unit": int(units[j]), "value": float(acts[j])} for j in order if acts[j] > 0],
            "tumor_fraction": None,
            "label": None,
            "attention": None,
        }
        from sae1n.neurons.inputs import match_coords

        lab = self.exp.patch_labels(sid)
        if lab is not None:
            ia, ib = match_coords(np.array([[x, y]]), lab[0])
            if len(ia):
                info["tumor_fraction"] = float(lab[1][ib[0]])
                info["label"] = int(lab[2][ib[0]])
        att = self._attention_norm(sid)
        if att is not None:
            ia, ib = match_coords(np.array([[x, y]]), att[0])
            if len(ia):
                info["attention"] = float(att[1][ib[0]])
        return info

    def patch_jpeg(self, sid: str, i: int, size: int | None) -> bytes:
        key = ("patch", sid, i, size)
        got = self.tiles.get(key)
        if got is None:
            s = self.exp.slide(sid)
            x, y = (int(v) for v in s.coords[i])
            img = self.slide_tiles(sid).read_patch(x, y, s.attrs, s.patch_size)
            if size and size < max(img.shape[:2]):
                from PIL import Image

                img = np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))
            got = jpeg_bytes(img)
            self.tiles.put(key, got, len(got))
        return got

    def export_geojson(self, sid: str, unit: int, threshold: float) -> Path:
        """Write the slide's patches with ``unit`` >= ``threshold`` as QuPath GeoJSON (+ provenance)."""
        from sae1n.io.provenance import Provenance, write_sidecar
        from sae1n.viz.geojson import export_geojson
        from sae1n.viz.reporting import GEOJSON_DIR

        s = self.exp.slide(sid)
        vals = self.exp.activations(sid, unit)
        keep = vals >= threshold
        out = self.exp.exp_dir / GEOJSON_DIR / "browse" / f"{sid}_unit{unit}_ge{threshold:g}.geojson"
        export_geojson(s.coords[keep], vals[keep].astype(np.float64), out, s.patch_size, measurement=f"SAE neuron {unit}", threshold=threshold, class_name=f"SAE neuron {unit}")
        prov = Provenance.make(
            "browse-geojson",
            1,
            settings={"unit": int(unit), "threshold": float(threshold), "slide_id": sid, "patch_size": s.patch_size},
            inputs={"codes": self.exp.code_paths[sid]},
        )
        write_sidecar(out, prov)
        return out

