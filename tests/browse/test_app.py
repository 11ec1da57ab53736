"""The browse API on a small demo experiment: tiles, overlays, neurons, patches,
notes, export, and the allow-list that keeps every URL inside the experiment."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from sae1n.browse.app import allowed_hosts_for, create_app, is_loopback
from sae1n.browse.experiment import Experiment

starlette_testclient = pytest.importorskip("starlette.testclient")

SECRET = "sae1n-secret-marker-7d3f"


@pytest.fixture(scope="module")
def exp(demo_exp):
    return Experiment(demo_exp.exp, demo_exp.slides, demo_exp.annotations)


@pytest.fixture(scope="module")
def client(exp):
    app = create_app(exp, allowed_hosts=allowed_hosts_for("127.0.0.1"), warm_index=False)
    return starlette_testclient.TestClient(app, base_url="http://127.0.0.1")


def _png(content: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(content)).convert("RGBA"))


def test_experiment_and_slide_info(client, exp):
    e = client.get("/api/experiment").json()
    assert [s["slide_id"] for s in e["slides"]] == exp.slide_ids
    assert all(s["has_file"] for s in e["slides"])
    assert e["default_cmap"] == "viridis" and "jet" in e["colormaps"]
    sid = exp.slide_ids[0]
    info = client.get(f"/api/slide/{sid}").json()
    assert (info["width"], info["height"]) == (1536, 1536)
    assert info["max_level"] == 11 and info["patch_size"] == 256 and info["has_file"]


def test_slide_tiles_match_the_slide(client, exp):
    from sae1n.wsi.slide import open_slide

    sid = exp.slide_ids[0]
    r = client.get(f"/tiles/{sid}/11/1/1.jpg")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    tile = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB")).astype(float)
    with open_slide(exp.slide_paths[sid]) as s:
        ref = s.read_region((256, 256), 0, (256, 256)).astype(float)
    assert tile.shape == (256, 256, 3)
    assert np.abs(tile - ref).mean() < 6  # JPEG error only
    assert client.get(f"/tiles/{sid}/11/6/0.jpg").status_code == 404  # past the edge
    assert client.get(f"/tiles/{sid}/0/0/0.jpg").status_code == 200  # 1 x 1 level


def test_neuron_overlay_follows_the_codes(client, exp):
    unit = int(exp.ranking()[0]["unit_id"])
    # a slide where the neuron fires (it may be silent on some slides)
    sid = max(exp.slide_ids, key=lambda k: float(exp.activations(k, unit).max()))
    s = exp.slide(sid)
    vals = exp.activations(sid, unit)
    vmax = float(vals.max())
    assert vmax > 0
    r = client.get(f"/overlay/{sid}/neuron/11/0/0.png?unit={unit}&vmax={vmax}")
    assert r.status_code == 200
    img = _png(r.content)
    # the patch at (0, 0)? pick the first patch inside tile (0, 0) and compare its colour
    from sae1n.browse.tiles import colormap_lut

    lut = colormap_lut("viridis")
    inside = [i for i, (x, y) in enumerate(s.coords) if x < 256 and y < 256]
    if inside:
        i = inside[0]
        x, y = s.coords[i]
        px = img[y + 128, x + 128] if x + 128 < 256 and y + 128 < 256 else img[y, x]
        assert tuple(px[:3]) == tuple(lut[int(vals[i] / vmax * 255), :3])
    # a threshold above every value leaves the tile transparent; another neuron paints differently
    assert _png(client.get(f"/overlay/{sid}/neuron/9/0/0.png?unit={unit}&thr=1&vmax={vmax * 2}").content)[..., 3].max() == 0
    other = int(exp.ranking()[1]["unit_id"])
    a = client.get(f"/overlay/{sid}/neuron/9/0/0.png?unit={unit}").content
    b = client.get(f"/overlay/{sid}/neuron/9/0/0.png?unit={other}").content
    assert a != b
    assert client.get(f"/overlay/{sid}/neuron/9/0/0.png?unit=99999").status_code == 404
    assert client.get(f"/overlay/{sid}/neuron/9/0/0.png?unit={unit}&cmap=evil").status_code == 404
    assert client.get(f"/overlay/{sid}/neuron/9/0/0.png?unit={unit}&cmap=jet").status_code == 200


def test_attention_and_label_overlays(client, exp):
    sid = next(s for s in exp.slide_ids if s in exp.label_paths and s in exp.attention_paths and exp.patch_labels(s)[2].any())
    lab = _png(client.get(f"/overlay/{sid}/labels/9/0/0.png").content)
    assert lab[..., 3].max() == 255 and (lab[..., 3] == 255).mean() < 0.5  # an outline, not a fill
    att = _png(client.get(f"/overlay/{sid}/attention/9/0/0.png").content)
    assert att[..., 3].max() == 255
    info = client.get(f"/api/slide/{sid}").json()
    assert info["has_attention"] and info["has_labels"]


def test_blank_canvas_without_slide_files(demo_exp, tmp_path):
    bare = Experiment(demo_exp.exp, tmp_path)  # an empty slide folder
    c = starlette_testclient.TestClient(create_app(bare, warm_index=False))
    sid = bare.slide_ids[0]
    info = c.get(f"/api/slide/{sid}").json()
    assert not info["has_file"] and info["width"] == 1536
    tile = np.asarray(Image.open(io.BytesIO(c.get(f"/tiles/{sid}/11/0/0.jpg").content)))
    assert tile.std() < 2  # uniform
    unit = int(bare.ranking()[0]["unit_id"])
    assert _png(c.get(f"/overlay/{sid}/neuron/9/0/0.png?unit={unit}").content)[..., 3].max() == 255


def test_neuron_summary_is_the_exact_top_n(client, exp):
    unit = int(exp.ranking()[0]["unit_id"])
    n = client.get(f"/api/neuron/{unit}?n=10").json()
    allv = sorted(
        ((float(v), sid) for sid in exp.slide_ids for v in exp.activations(sid, unit) if v > 0),
        reverse=True,
    )
    assert [g["value"] for g in n["gallery"]] == pytest.approx([v for v, _ in allv[:10]])
    maxes = {r["slide_id"]: r["max"] for r in n["slides"]}
    for sid in exp.slide_ids:
        assert maxes[sid] == pytest.approx(float(exp.activations(sid, unit).max()))
    assert {r["label"] for r in n["slides"]} == {"tumor", "normal"}
    assert n["vmax"] == pytest.approx(max(maxes.values()))


def test_ranking_rows(client, exp, demo_exp):
    fresh = Experiment(demo_exp.exp, demo_exp.slides)
    first = starlette_testclient.TestClient(create_app(fresh, warm_index=False)).get("/api/ranking").json()
    assert first[0]["firing_frequency"] is None  # the table never waits for the index
    exp.index()
    rows = client.get("/api/ranking").json()
    assert len(rows) == exp.dict_size
    assert {"unit_id", "t_statistic", "p_value", "q_value", "slide_auroc", "direction", "firing_frequency"} <= set(rows[0])
    assert any(r.get("patch_auroc") is not None for r in rows)
    freq = {r["unit_id"]: r["firing_frequency"] for r in rows}
    u = rows[0]["unit_id"]
    fired = sum(int((exp.activations(s, u) > 0).sum()) for s in exp.slide_ids)
    total = sum(exp.slide(s).n for s in exp.slide_ids)
    assert freq[u] == pytest.approx(fired / total)


def test_patch_inspector(client, exp):
    sid = exp.slide_ids[0]
    s = exp.slide(sid)
    x, y = (int(v) for v in s.coords[3])
    r = client.get(f"/api/patch_at/{sid}?x={x + 10}&y={y + 200}").json()["patch"]
    assert (r["x"], r["y"]) == (x, y)
    vals = [t["value"] for t in r["top_neurons"]]
    assert vals == sorted(vals, reverse=True) and vals
    assert r["top_neurons"][0]["value"] == pytest.approx(float(s.codes[3].toarray().max()))
    img = Image.open(io.BytesIO(client.get(f"/patch/{sid}/{x}/{y}.jpg").content))
    assert img.size == (256, 256)
    assert client.get(f"/patch/{sid}/{x + 1}/{y}.jpg").status_code == 404  # not a patch corner
    assert client.get(f"/api/patch_at/{sid}?x=-500&y=-500").json()["patch"] is None


def test_notes_roundtrip_conflict_and_restart(client, demo_exp, exp):
    u1, u2 = (int(r["unit_id"]) for r in exp.ranking()[:2])
    r = client.put(f"/api/notes/{u1}", json={"name": "tumour cells", "rating": 4, "tags": ["tumour"], "version": 0})
    assert r.status_code == 200 and r.json()["version"] == 1
    # a second tab that read version 0 of the same neuron is refused, not silently merged
    r2 = client.put(f"/api/notes/{u1}", json={"name": "stale", "version": 0})
    assert r2.status_code == 409 and r2.json()["current"]["name"] == "tumour cells"
    # a second tab editing another neuron keeps the first tab's note
    assert client.put(f"/api/notes/{u2}", json={"name": "stroma", "version": 0}).status_code == 200
    again = starlette_testclient.TestClient(create_app(Experiment(demo_exp.exp, demo_exp.slides), warm_index=False))
    notes = again.get("/api/notes").json()
    assert notes[str(u1)]["name"] == "tumour cells" and notes[str(u2)]["name"] == "stroma"
    csv = again.get("/export/notes.csv").text.splitlines()
    assert csv[0].startswith("unit_id,name,rating,tags") and any("tumour cells" in line for line in csv)
    assert client.put(f"/api/notes/{u1}", content=b"name=x", headers={"content-type": "text/plain"}).status_code == 415
    assert client.put(f"/api/notes/{u1}", json={"rating": 9}).status_code == 400
    assert client.put("/api/notes/999999", json={"name": "x"}).status_code == 404


def test_geojson_export_above_threshold(client, exp):
    from sae1n.io.provenance import read_provenance

    sid = exp.slide_ids[0]
    unit = int(exp.ranking()[0]["unit_id"])
    vals = exp.activations(sid, unit)
    thr = float(np.median(vals))
    r = client.get(f"/export/geojson/{sid}/{unit}.geojson?thr={thr}")
    assert r.status_code == 200
    gj = json.loads(r.content)
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == int((vals >= thr).sum())
    for f in gj["features"]:
        assert f["properties"]["measurements"][f"SAE neuron {unit}"] >= thr
        assert f["geometry"]["type"] == "Polygon"
    written = exp.exp_dir / "figures" / "geojson" / "browse" / f"{sid}_unit{unit}_ge{thr:g}.geojson"
    prov = read_provenance(written)
    assert prov.kind == "browse-geojson" and prov.settings["unit"] == unit


# ----------------------------------------------------------------------------- security


async def _raw_get(app, raw_path: bytes, host: bytes = b"127.0.0.1"):
    """Send one GET with an exact, unnormalised path (no client cleans it up)."""
    from urllib.parse import unquote

    path, _, query = raw_path.partition(b"?")
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": unquote(path.decode("latin-1")), "raw_path": path,
        "query_string": query, "root_path": "", "headers": [(b"host", host)],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
    }
    sent = []
    done = asyncio.Event()
    first = [True]

    async def receive():
        if first[0]:
            first[0] = False
            return {"type": "http.request", "body": b"", "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(msg):
        sent.append(msg)
        if msg["type"] == "http.response.body" and not msg.get("more_body"):
            done.set()

    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, body


def test_no_url_reads_a_file_outside_the_allow_list(demo_exp, exp):
    secret = demo_exp.exp / "analysis" / "secret.txt"
    secret.write_text(SECRET)
    (demo_exp.root / "secret.txt").write_text(SECRET)
    app = create_app(exp, allowed_hosts=allowed_hosts_for("127.0.0.1"), warm_index=False)
    sid = exp.slide_ids[0]
    evil = [
        b"/static/../../../secret.txt",
        b"/static/%2e%2e/%2e%2e/%2e%2e/secret.txt",
        b"/static/%2E%2E%2F%2E%2E%2Fapp.py",
        b"/vendor/leaflet/../../../../../etc/passwd",
        b"/../../../../etc/passwd",
        b"/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        b"//etc/passwd",
        b"/etc/passwd",
        b"/analysis/secret.txt",
        b"/api/slide/..",
        b"/api/slide/%2e%2e",
        b"/api/slide/..%2fanalysis%2fsecret",
        b"/api/slide/%2Fetc%2Fpasswd",
        b"/tiles/..%2f..%2fsecret/0/0/0.jpg",
        b"/tiles/%2e%2e/0/0/0.jpg",
        b"/tiles/" + sid.encode() + b"/../../secret.txt",
        b"/overlay/" + sid.encode() + b"/..%2f..%2fsecret/0/0/0.png?unit=1",
        b"/patch/%2e%2e/0/0.jpg",
        b"/export/geojson/..%2f..%2fsecret/1.geojson",
        b"/static/app.js/../../../analysis/secret.txt",
        b"/static/C:%5cWindows%5cwin.ini",
        b"/api/colormap/..%2f..%2fsecret",
    ]
    for raw in evil:
        status, body = asyncio.run(_raw_get(app, raw))
        assert status in (400, 404), raw
        assert SECRET.encode() not in body and b"root:" not in body, raw
    status, _ = asyncio.run(_raw_get(app, b"/static/app.js"))
    assert status == 200


def test_host_header_guard_and_loopback_helpers(exp):
    app = create_app(exp, allowed_hosts=allowed_hosts_for("127.0.0.1"), warm_index=False)
    status, _ = asyncio.run(_raw_get(app, b"/api/experiment", host=b"evil.example"))
    assert status == 400  # DNS-rebinding: other host names are refused
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_serves_then_stops_cleanly_on_ctrl_c(demo_exp):
    import urllib.request

    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sae1n", "browse", str(demo_exp.exp), "--port", str(port), "--slides", str(demo_exp.slides)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    try:
        lines = []
        deadline = time.time() + 60
        while time.time() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "http://127.0.0.1" in line:
                break
        assert f"http://127.0.0.1:{port}/" in "".join(lines)
        for _ in range(50):
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/api/experiment", timeout=5).read()
                break
            except OSError:
                time.sleep(0.1)
        assert json.loads(body)["name"] == demo_exp.exp.name
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            raise AssertionError("did not stop on SIGINT: " + "".join(lines) + out) from None
        assert proc.returncode == 0, out
        assert "stopped" in out and "Traceback" not in out
    finally:
        if proc.poll() is None:
            proc.kill()


def test_browse_help_explains_every_option(capsys):
    from sae1n.cli import main

    with pytest.raises(SystemExit):
        main(["browse", "--help"])
    out = capsys.readouterr().out
    for opt in ("EXP_DIR".lower(), "--slides", "--annotations", "--port", "--host", "loopback"):
        assert opt in out.lower()


def test_serve_warns_when_not_loopback(demo_exp, monkeypatch):
    import sae1n.browse.app as app_mod

    started = []

    class Dummy:
        def __init__(self, config):
            started.append((config.host, config.port))

        def run(self):
            pass

    monkeypatch.setattr(app_mod, "_QuietServer", Dummy)
    for host, warned in (("127.0.0.1", False), ("0.0.0.0", True)):
        lines: list[str] = []
        app_mod.serve(demo_exp.exp, slides_dir=demo_exp.slides, host=host, port=9, echo=lines.append)
        text = "\n".join(lines)
        assert f"http://{host}:9/" in text and "stopped" in text
        assert ("WARNING" in text and "not a loopback address" in text) == warned
    assert started == [("127.0.0.1", 9), ("0.0.0.0", 9)]
