"""The ASGI app of ``sae1n browse`` (Starlette) and its server (uvicorn).

Every URL names a slide id, integers, or a fixed asset name; each is looked up
in an allow-list (the experiment's slides, its patch coordinates, the files of
``static/`` and of the Leaflet package). No URL part is ever joined onto a
filesystem path, so ``../``, ``%2e%2e`` or absolute paths only ever get 404.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
from pathlib import Path

import numpy as np

from sae1n.browse.experiment import LRU, Experiment
from sae1n.browse.tiles import (
    COLORMAPS,
    DEFAULT_CMAP,
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
from sae1n.io.neuron_notes import TAGS, NoteConflict, NotesStore

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
OVERLAYS = ("neuron", "attention", "labels")
_CT = {".js": "text/javascript", ".css": "text/css", ".png": "image/png", ".html": "text/html", ".svg": "image/svg+xml"}
TILE_CACHE_BYTES = 512e6
_IMMUTABLE = {"Cache-Control": "public, max-age=86400"}


def _asset_table() -> dict[str, Path]:
    """URL name -> file for every static asset the app may serve (the allow-list)."""
    import xstatic.pkg.leaflet as leaflet

    table = {}
    for p in STATIC_DIR.iterdir():
        if p.is_file() and p.suffix in _CT:
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


# ---------------------------------------------------------------------------- app


def create_app(exp: Experiment, *, allowed_hosts: list[str] | None = None, warm_index: bool = True):
    """The Starlette app serving ``exp``; ``allowed_hosts`` guards against DNS rebinding."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route

    state = BrowseState(exp)

    def not_found(msg="not found"):
        return PlainTextResponse(msg, status_code=404)

    def qfloat(request, name, default=None):
        v = request.query_params.get(name)
        if v in (None, ""):
            return default
        f = float(v)
        if not np.isfinite(f):
            raise ValueError(name)
        return f

    def guarded(fn):
        """Unknown ids and bad numbers answer 404/400, never a traceback or a file."""

        def endpoint(request):
            try:
                return fn(request)
            except KeyError:
                return not_found()
            except (ValueError, IndexError):
                return PlainTextResponse("bad request", status_code=400)
            except Sae1nError as exc:
                return PlainTextResponse(str(exc), status_code=422)

        endpoint.__name__ = fn.__name__
        return endpoint

    def sid_of(request) -> str:
        return exp.check_slide(request.path_params["sid"])

    def patch_of(request) -> tuple[str, int]:
        sid = sid_of(request)
        i = exp.slide(sid).patch_index(int(request.path_params["x"]), int(request.path_params["y"]))
        if i is None:
            raise KeyError("patch")
        return sid, i

    def index(request):
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    def asset(request):
        p = state.assets.get(request.path_params["path"])
        if p is None:
            return not_found()
        return FileResponse(p, media_type=_CT.get(p.suffix, "application/octet-stream"))

    def experiment(request):
        return JSONResponse(
            {
                "name": exp.exp_dir.name,
                "exp_dir": str(exp.exp_dir),
                "slides": [
                    {
                        "slide_id": sid,
                        "label": exp.slide_labels.get(sid, ""),
                        "split": exp.slide_split.get(sid, ""),
                        "has_file": sid in exp.slide_paths,
                    }
                    for sid in exp.slide_ids
                ],
                "chosen_unit": exp.evaluation.get("chosen_unit", exp.summary.get("top_unit")),
                "colormaps": list(COLORMAPS),
                "default_cmap": DEFAULT_CMAP,
                "tags": list(TAGS),
                "slides_dir": str(exp.slides_dir) if exp.slides_dir else None,
            }
        )

    def slide(request):
        return JSONResponse(state.slide_info(sid_of(request)))

    def slide_tile(request):
        p = request.path_params
        got = state.slide_tile(sid_of(request), int(p["z"]), int(p["x"]), int(p["y"]))
        return not_found() if got is None else Response(got, media_type="image/jpeg", headers=_IMMUTABLE)

    def overlay_tile(request):
        p = request.path_params
        unit = request.query_params.get("unit")
        got = state.overlay_tile(
            sid_of(request),
            p["kind"],
            int(p["z"]),
            int(p["x"]),
            int(p["y"]),
            unit=None if unit in (None, "") else int(unit),
            cmap=request.query_params.get("cmap", DEFAULT_CMAP),
            thr=min(max(qfloat(request, "thr", 0.0), 0.0), 1.0),
            vmax=qfloat(request, "vmax"),
        )
        return not_found() if got is None else Response(got, media_type="image/png", headers=_IMMUTABLE)

    def colormap(request):
        lut = state._luts[request.path_params["name"]]
        rows = [*lut[::8], lut[-1]]
        return JSONResponse(["#" + "".join(f"{int(c):02x}" for c in row[:3]) for row in rows])

    def ranking(request):
        rows = exp.ranking()
        idx = exp.index_if_ready()  # built in the background; the page asks again later
        ff = idx["firing_frequency"] if idx is not None else []
        notes = state.notes.all()
        out = []
        for r in rows:
            u = int(r["unit_id"])
            out.append({**r, "firing_frequency": float(ff[u]) if u < len(ff) else None, "note_name": (notes.get(u) or {}).get("name", "")})
        return JSONResponse(out)

    def neuron(request):
        n = int(request.query_params.get("n", 24))
        return JSONResponse(exp.neuron_summary(int(request.path_params["unit"]), top_n=max(1, min(n, 200))))

    def patch_at(request):
        sid = sid_of(request)
        i = exp.slide(sid).patch_at(qfloat(request, "x"), qfloat(request, "y"))
        if i is None:
            return JSONResponse({"slide_id": sid, "patch": None})
        return JSONResponse({"slide_id": sid, "patch": state.patch_info(sid, i)})

    def patch_info(request):
        sid, i = patch_of(request)
        return JSONResponse(state.patch_info(sid, i))

    def patch_image(request):
        sid, i = patch_of(request)
        size = request.query_params.get("size")
        size = None if size in (None, "") else max(16, min(int(size), 1024))
        return Response(state.patch_jpeg(sid, i, size), media_type="image/jpeg", headers=_IMMUTABLE)

    def notes_get(request):
        return JSONResponse({str(k): v for k, v in state.notes.all().items()})

    async def notes_put(request):
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return PlainTextResponse("send application/json", status_code=415)
        try:
            unit = int(request.path_params["unit"])
            if not 0 <= unit < exp.dict_size:
                return not_found()
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("body")
            base = body.get("version")
            from starlette.concurrency import run_in_threadpool

            note = await run_in_threadpool(state.notes.save, unit, body, None if base is None else int(base))
        except NoteConflict as exc:
            return JSONResponse({"conflict": True, "current": exc.current}, status_code=409)
        except (ValueError, TypeError, Sae1nError) as exc:
            return PlainTextResponse(f"bad note: {exc}", status_code=400)
        return JSONResponse(note)

    def notes_csv(request):
        return Response(state.notes.to_csv(), media_type="text/csv", headers={"Content-Disposition": 'attachment; filename="neuron_notes.csv"'})

    def geojson(request):
        sid = sid_of(request)
        unit = int(request.path_params["unit"])
        if not 0 <= unit < exp.dict_size:
            raise KeyError(unit)
        path = state.export_geojson(sid, unit, qfloat(request, "thr", 0.0))
        return FileResponse(path, media_type="application/geo+json", filename=path.name)

    routes = [
        Route("/", index),
        Route("/api/experiment", guarded(experiment)),
        Route("/api/slide/{sid}", guarded(slide)),
        Route("/api/ranking", guarded(ranking)),
        Route("/api/neuron/{unit:int}", guarded(neuron)),
        Route("/api/patch_at/{sid}", guarded(patch_at)),
        Route("/api/patch/{sid}/{x:int}/{y:int}", guarded(patch_info)),
        Route("/api/colormap/{name}", guarded(colormap)),
        Route("/api/notes", guarded(notes_get), methods=["GET"]),
        Route("/api/notes/{unit}", notes_put, methods=["PUT"]),
        Route("/tiles/{sid}/{z:int}/{x:int}/{y:int}.jpg", guarded(slide_tile)),
        Route("/overlay/{sid}/{kind}/{z:int}/{x:int}/{y:int}.png", guarded(overlay_tile)),
        Route("/patch/{sid}/{x:int}/{y:int}.jpg", guarded(patch_image)),
        Route("/export/notes.csv", guarded(notes_csv)),
        Route("/export/geojson/{sid}/{unit:int}.geojson", guarded(geojson)),
        Route("/{path:path}", asset),
    ]
    middleware = []
    if allowed_hosts:
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts))
    app = Starlette(routes=routes, middleware=middleware)
    app.state.browse = state
    if warm_index:  # firing frequencies and per-slide maxima, built in the background
        threading.Thread(target=_warm, args=(exp,), daemon=True, name="sae1n-browse-index").start()
    return app


def _warm(exp: Experiment) -> None:
    try:
        exp.index()
    except Exception as exc:  # reported again when a request needs it
        log.warning("browse: neuron index not built (%s)", exc)


def is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allowed_hosts_for(host: str) -> list[str]:
    hosts = ["127.0.0.1", "localhost", "::1", "[::1]"]
    if not is_loopback(host):
        hosts = ["*"] if host in ("0.0.0.0", "::") else [*hosts, host]
    return hosts


def serve(
    exp_dir: str | os.PathLike,
    *,
    slides_dir=None,
    annotations_dir=None,
    host: str = "127.0.0.1",
    port: int = 8765,
    echo=print,
) -> None:
    """Open the experiment and serve it until Ctrl-C (which stops cleanly)."""
    import time

    import uvicorn

    t0 = time.perf_counter()
    exp = Experiment(exp_dir, slides_dir, annotations_dir)
    app = create_app(exp, allowed_hosts=allowed_hosts_for(host))
    if not is_loopback(host):
        echo(
            f"WARNING: serving on {host}, which is not a loopback address: anyone who can reach "
            "this machine can read the slides and edit the notes. Use --host 127.0.0.1 unless "
            "you mean that."
        )
    shown = f"[{host}]" if ":" in host else host
    echo(
        f"sae1n browse: {len(exp.slide_ids)} slides of {exp.exp_dir} opened in "
        f"{time.perf_counter() - t0:.1f} s ({len(exp.slide_paths)} slide files"
        f"{'' if exp.slides_dir else '; no --slides: overlays on blank canvases'})"
    )
    echo(f"open http://{shown}:{port}/ in a browser (Ctrl-C stops the server)")
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    _QuietServer(config).run()  # Ctrl-C / SIGTERM: finish open requests, then return
    echo("sae1n browse: stopped")


def _quiet_server_class():
    import contextlib
    import signal

    import uvicorn

    class QuietServer(uvicorn.Server):
        """uvicorn's server, stopping on SIGINT/SIGTERM without re-raising the signal
        afterwards (so Ctrl-C ends ``sae1n browse`` with status 0, not a KeyboardInterrupt)."""

        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            old = {s: signal.signal(s, self.handle_exit) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for s, h in old.items():
                    signal.signal(s, h)

    return QuietServer


def _QuietServer(config):
    return _quiet_server_class()(config)
