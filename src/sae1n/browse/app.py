"""The ASGI app of ``sae1n browse`` (Starlette) and its server (uvicorn).

Every URL names a slide id, integers, or a fixed asset name; each is looked up
in an allow-list (the experiment's slides, its patch coordinates, the files of
``static/`` and of the Leaflet package). No URL part is ever joined onto a
filesystem path, so ``../``, ``%2e%2e`` or absolute paths only ever get 404.

What the routes serve (tiles, overlays, patches, exports) is rendered by
:class:`sae1n.browse.state.BrowseState`; this module holds the routes and the
server.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading

import numpy as np

from sae1n.browse.experiment import Experiment
from sae1n.browse.state import CONTENT_TYPES, OVERLAYS, STATIC_DIR, TILE_CACHE_BYTES, BrowseState
from sae1n.browse.tiles import COLORMAPS, DEFAULT_CMAP
from sae1n.errors import Sae1nError
from sae1n.io.neuron_notes import TAGS, NoteConflict

__all__ = [
    "OVERLAYS", "STATIC_DIR", "TILE_CACHE_BYTES", "BrowseState", "allowed_hosts_for", "create_app",
    "is_loopback", "serve",
]

log = logging.getLogger(__name__)

_IMMUTABLE = {"Cache-Control": "public, max-age=86400"}


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
        return FileResponse(p, media_type=CONTENT_TYPES.get(p.suffix, "application/octet-stream"))

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
                "chosen_unit": (
                    exp.evaluation.chosen_unit if exp.evaluation is not None else exp.summary.get("top_unit")
                ),
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
