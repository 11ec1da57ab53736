"""End to end in a real headless Chromium (Debian's `chromium`, driven by
Playwright for Python; no browser download): open the demo experiment, zoom in
three levels, choose a neuron from the table and see the overlay change, click a
gallery patch and land on it, name the neuron, reload, export GeoJSON."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time

import numpy as np
import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not installed (Debian package `chromium`)"
)


@pytest.fixture(scope="module")
def server(demo_exp):
    import uvicorn

    from sae1n.browse.app import allowed_hosts_for, create_app
    from sae1n.browse.experiment import Experiment

    exp = Experiment(demo_exp.exp, demo_exp.slides, demo_exp.annotations)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(exp, allowed_hosts=allowed_hosts_for("127.0.0.1"))
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    for _ in range(200):
        if srv.started:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", exp
    srv.should_exit = True
    t.join(10)


def _png_array(data: bytes) -> np.ndarray:
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)


def test_browser_end_to_end(server):
    playwright = pytest.importorskip("playwright.sync_api")
    url, exp = server
    unit_a = int(exp.evaluation.chosen_unit if exp.evaluation is not None else exp.ranking()[0]["unit_id"])
    top = exp.neuron_summary(unit_a)["gallery"][0]
    sid, px, py, ps = top["slide_id"], top["x"], top["y"], top["patch_size"]
    # a neuron silent on that patch: its overlay there is transparent, A's is not
    s = exp.slide(sid)
    i = s.patch_index(px, py)
    fired = set(s.row(i)[0][s.row(i)[1] > 0].tolist())
    unit_b = next(int(r["unit_id"]) for r in exp.ranking() if int(r["unit_id"]) not in fired and int(r["unit_id"]) != unit_a)

    errors: list[str] = []
    t0 = time.time()
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 800}, accept_downloads=True)
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{url}/#slide={sid}&unit={unit_a}")
        ready = "() => window.sae1n && sae1n.state.ready && sae1n.state.neuron && sae1n.state.neuron.unit === %d"
        page.wait_for_function(ready % unit_a, timeout=40000)

        # zoom in three levels by double-clicking on the patch where neuron A fires most
        z0 = page.evaluate("sae1n.map.getZoom()")
        page.evaluate(
            f"sae1n.map.panTo(sae1n.map.unproject([{px + ps / 2}, {py + ps / 2}], sae1n.state.info.max_level), {{animate: false}})"
        )
        box = page.locator("#map").bounding_box()
        pt = (box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        for k in range(1, 4):
            page.mouse.dblclick(pt[0], pt[1])
            page.wait_for_function(f"sae1n.map.getZoom() === {z0 + k}", timeout=30000)
            page.wait_for_timeout(300)  # let the zoom animation end before the next one
        assert page.evaluate("sae1n.map.getZoom()") == z0 + 3
        page.wait_for_load_state("networkidle")
        page.wait_for_timeout(400)
        clip = {"x": pt[0] - 40, "y": pt[1] - 40, "width": 80, "height": 80}
        before = _png_array(page.screenshot(clip=clip))

        # choose neuron B from the table (search by id, click its row): the overlay changes
        page.fill("#search", str(unit_b))
        page.click(f"#ranking tbody tr[data-unit='{unit_b}']")
        page.wait_for_function(ready % unit_b, timeout=40000)
        page.wait_for_load_state("networkidle")
        page.wait_for_timeout(400)
        after = _png_array(page.screenshot(clip=clip))
        diff = np.abs(before - after).sum(axis=2)
        assert (diff > 30).mean() > 0.9, f"overlay did not change: mean diff {diff.mean():.1f}"

        # click a gallery patch: the view lands on its centre at full resolution
        g = exp.neuron_summary(unit_b)["gallery"][1]
        page.click(f"#gallery img[data-slide='{g['slide_id']}'][data-x='{g['x']}'][data-y='{g['y']}']")
        page.wait_for_function(
            f"sae1n.state.landed === '{g['slide_id']}:{g['x']}:{g['y']}'",
            timeout=30000,
        )
        c = page.evaluate("sae1n.center()")
        assert c["slide"] == g["slide_id"] and c["zoom"] == page.evaluate("sae1n.state.info.max_level")
        assert abs(c["x"] - (g["x"] + g["patch_size"] / 2)) <= 1, (c, g)
        assert abs(c["y"] - (g["y"] + g["patch_size"] / 2)) <= 1, (c, g)
        page.wait_for_function("document.getElementById('patch-img') !== null", timeout=30000)
        assert f"({g['x']}, {g['y']})" in page.inner_text("#inspector")

        # name neuron B, reload, see the name
        page.fill("#note-name", "spindle stroma (e2e)")
        page.check("#note-tags input[value='stroma']")
        page.click("#note-save")
        page.wait_for_function("document.getElementById('note-status').textContent.startsWith('saved')", timeout=30000)
        page.wait_for_load_state("networkidle")
        page.reload()
        page.wait_for_function(ready % unit_a, timeout=40000)
        page.fill("#search", "spindle")
        row = page.locator(f"#ranking tbody tr[data-unit='{unit_b}']")
        assert "spindle stroma (e2e)" in row.inner_text()
        row.click()
        page.wait_for_function(ready % unit_b, timeout=40000)
        assert page.input_value("#note-name") == "spindle stroma (e2e)"
        assert page.is_checked("#note-tags input[value='stroma']")

        # export the neuron's patches on this slide as QuPath GeoJSON and parse it
        with page.expect_download() as dl:
            page.click("#export-geojson")
        gj = json.loads(open(dl.value.path()).read())
        assert gj["type"] == "FeatureCollection" and gj["features"]
        assert all(f"SAE neuron {unit_b}" in f["properties"]["measurements"] for f in gj["features"])
        browser.close()
    assert not errors, errors
    assert time.time() - t0 < 60
