import base64
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from sae1n.cli import main
from sae1n.errors import InputFileError
from sae1n.viz.curves import plot_training_curves
from sae1n.viz.reporting import report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs, self.h2 = [], []
        self._in_h2 = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("src", "href"):
            if key in a:
                self.refs.append((tag, a[key]))
        self._in_h2 = tag == "h2"

    def handle_data(self, data):
        if self._in_h2:
            self.h2.append(data.strip())
            self._in_h2 = False


def _parse(path: Path) -> _Refs:
    p = _Refs()
    p.feed(path.read_text())
    return p


def test_report_is_self_contained_with_every_section(experiment):
    path = report(experiment.exp)
    assert path == experiment.exp / "report.html"
    page = _parse(path)
    assert page.h2 == [
        "SAE training",
        "Neuron ranking",
        "Patch-level evaluation",
        "Heatmaps",
        "Top-activating patches",
        "Prompt names (CLIP text tower)",
    ]
    imgs = [src for tag, src in page.refs if tag == "img"]
    assert len(imgs) >= 6  # curves, ROC, PR, 2 heatmaps, gallery
    for src in imgs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [r for _, r in page.refs if not r.startswith("data:")]  # nothing external
    text = path.read_text()
    assert (
        "sae_analysis_t_test.csv" in text and "Chosen neuron 17" in text and "<b>tumor</b>" in text
    )
    assert "ABMIL attention baseline" in text


def test_report_tolerates_sparse_and_odd_logs(tmp_path, capsys):
    exp = tmp_path / "exp_min"
    (exp / "logs").mkdir(parents=True)
    # no step column, a text column, a metric that is empty until late
    pd.DataFrame(
        {
            "epoch": [0, 0, 1],
            "train/mse": [1.0, 0.5, 0.25],
            "note": ["a", "b", "c"],
            "val_fvu": [None, None, 0.3],
        }
    ).to_csv(exp / "logs" / "metrics.csv", index=False)
    assert main(["report", str(exp), "--out", str(tmp_path / "r.html")]) == 0
    text = (tmp_path / "r.html").read_text()
    assert "No ranking yet" in text and "No heatmaps yet" in text and "train/mse" in text
    assert "self-contained" in capsys.readouterr().out
    (exp / "logs" / "metrics.csv").write_text("garbage\x00\x01,\n\n")
    report(exp)  # a damaged log is skipped, not fatal
    with pytest.raises(InputFileError, match="experiment folder not found"):
        report(tmp_path / "missing")


def test_training_curves_pick_numeric_columns(tmp_path):
    log = pd.DataFrame({"mse": np.linspace(1, 0.1, 5), "phase": ["train"] * 5})
    assert plot_training_curves(log, tmp_path / "c.png").is_file()
    assert plot_training_curves(pd.DataFrame({"phase": ["x"]}), tmp_path / "d.png") is None


def _chromium(url: str, tmp: Path, screenshot: Path | None = None, size=(1280, 900)) -> str:
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
        f"--window-size={size[0]},{size[1]}",
        "--hide-scrollbars",
    ]
    cmd += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    env = {**os.environ, "DBUS_SESSION_BUS_ADDRESS": "disabled:"}
    proc = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stderr


def _console(stderr: str) -> list[str]:
    return re.findall(r":CONSOLE[^\]]*\]\s*(.*)", stderr)


@pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not installed (Debian package `chromium`)"
)
def test_report_in_headless_chromium(experiment, tmp_path):
    path = report(experiment.exp, tmp_path / "report.html")
    shot = tmp_path / "shot.png"
    stderr = _chromium(path.as_uri(), tmp_path, screenshot=shot, size=(1280, 6000))
    assert _console(stderr) == [], stderr
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    # the heatmaps' jet colours (their colour bars and painted tumour patches)
    red = (img[..., 0] > 180) & (img[..., 1] < 40) & (img[..., 2] < 40)
    blue = (img[..., 2] > 180) & (img[..., 0] < 40) & (img[..., 1] < 40)
    assert red.sum() > 300 and blue.sum() > 300
    rows = np.nonzero(red.any(axis=1))[0]
    assert rows.min() > 300  # below the tables, where the heatmap section is

    # the same page with a probe: every embedded image decodes, and a canary
    # error shows the console capture works
    probe = tmp_path / "probe.html"
    script = (
        "<script>window.addEventListener('load',()=>{const imgs=[...document.images];"
        "const bad=imgs.filter(i=>!(i.complete&&i.naturalWidth>0));"
        "console.log('images-ok '+(imgs.length-bad.length)+'/'+imgs.length);"
        "console.error('sae1n-canary');});</script>"
    )
    probe.write_text(path.read_text().replace("</body>", script + "</body>"))
    msgs = _console(_chromium(probe.as_uri(), tmp_path))
    n_img = path.read_text().count("<img")
    assert any(f"images-ok {n_img}/{n_img}" in m for m in msgs), msgs
    assert any("sae1n-canary" in m for m in msgs), msgs
