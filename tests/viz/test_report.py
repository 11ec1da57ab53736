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
    path = report(experiment.exp, overwrite=True)
    assert path == experiment.exp / "report.html"
    page = _parse(path)
    assert page.h2 == [
        "The answer",
        "Heatmaps",
        "Top-activating patches",
        "SAE health",
        "Neuron ranking",
        "Prompt names (CLIP text tower)",
        "SAE training",
        "Configuration",
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
    assert "abmil_attention" in text  # the baseline row beside the neurons


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
    report(exp, overwrite=True)  # a damaged log is skipped, not fatal
    (exp / "evaluation").mkdir()
    (exp / "evaluation" / "patch_metrics.json").write_text("{damaged")
    report(exp, overwrite=True)  # so is a damaged patch evaluation
    assert "No neuron chosen yet" in (exp / "report.html").read_text()
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
    path = report(experiment.exp, tmp_path / "report.html", overwrite=True)
    shot = tmp_path / "shot.png"
    stderr = _chromium(path.as_uri(), tmp_path, screenshot=shot, size=(1280, 6000))
    assert _console(stderr) == [], stderr
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    # the heatmaps' viridis colours (their colour bars and painted tumour patches)
    yellow = (img[..., 0] > 200) & (img[..., 1] > 180) & (img[..., 2] < 100)
    purple = (img[..., 0] > 40) & (img[..., 0] < 100) & (img[..., 1] < 40) & (img[..., 2] > 60) & (img[..., 2] < 120)
    assert yellow.sum() > 300 and purple.sum() > 300
    rows = np.nonzero(yellow.any(axis=1))[0]
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


def _copy_exp(experiment, tmp_path) -> Path:
    exp = tmp_path / "exp"
    shutil.copytree(experiment.exp, exp, ignore=shutil.ignore_patterns("report.html*"))
    return exp


def test_report_leads_with_every_metrics_row_marks_oracles_and_finds_extras(experiment, tmp_path):
    from sae1n.io.neuron_notes import NotesStore
    from sae1n.io.provenance import StaleOutputError, read_provenance

    exp = _copy_exp(experiment, tmp_path)
    ev = exp / "evaluation"
    table = pd.read_csv(ev / "patch_metrics.csv")
    extra = pd.DataFrame(
        [
            {"method": "best_patch_auroc_neuron", "unit_id": 17, "patch_auroc": 0.99, "oracle": True},
            {"method": "linear_probe", "patch_auroc": 0.91, "oracle": False},
        ]
    )
    table = pd.concat([table.assign(oracle=False), extra], ignore_index=True)
    table.to_csv(ev / "patch_metrics.csv", index=False)
    shutil.copy(ev / "roc_curve.png", ev / "roc_all_methods.png")
    pd.DataFrame({"seed": [0, 1, 2], "top_unit": [17, 17, 17], "patch_auroc": [0.98, 0.97, 0.99]}).to_csv(
        ev / "stability_summary.csv", index=False
    )
    shutil.copy(ev / "pr_curve.png", exp / "analysis" / "stability_seeds.png")  # found in analysis/ too
    NotesStore(exp).save(17, {"name": "tumour nests", "tags": ["tumour"]})
    path = report(exp)
    text = path.read_text()
    answer = text[text.index("<h2>The answer</h2>") : text.index("<h2>Heatmaps</h2>")]
    assert "Chosen neuron 17: <b>tumour nests</b>" in answer
    metrics = answer[answer.index("Patch metrics against the baselines") :]
    metrics = metrics[: metrics.index("</table>")]
    assert metrics.count("<tr") == len(table) + 1  # header + every row
    assert metrics.count('class="oracle"') == 1 and "best_patch_auroc_neuron (oracle)" in metrics
    assert "linear_probe" in metrics and "abmil_attention" in metrics
    assert "roc all methods" in answer and "Stability (stability_summary.csv)" in answer
    assert "stability seeds" in answer
    # the browser's names also appear in the ranking and the notes section
    assert "<h2>Neuron names (sae1n browse)</h2>" in text
    health = text[text.index("<h2>SAE health</h2>") : text.index("<h2>Neuron ranking</h2>")]
    assert "dead fraction" in health and "never fire on the encoded patches" in health
    assert "Firing frequency of every neuron" in health
    assert text.index("<h2>Configuration</h2>") > text.index("<h2>SAE training</h2>")
    assert "<details><summary>" in text[text.index("<h2>Configuration</h2>") :]

    # provenance: current -> kept; an edited note makes it stale -> refused; --overwrite rewrites
    prov = read_provenance(path)
    assert prov.kind == "report" and "neuron_notes.json" in prov.inputs
    first = path.stat().st_mtime_ns
    assert report(exp) == path and path.stat().st_mtime_ns == first
    NotesStore(exp).save(17, {"name": "tumour cells"})
    with pytest.raises(StaleOutputError, match="neuron_notes.json"):
        report(exp)
    assert "tumour nests" in path.read_text()
    report(exp, overwrite=True)
    assert "Chosen neuron 17: <b>tumour cells</b>" in path.read_text()


def test_report_shows_other_neurons_pictures_folded(experiment, tmp_path):
    exp = _copy_exp(experiment, tmp_path)
    heat = exp / "figures" / "heatmaps"
    stray = heat / "someslide_unit3.png"
    shutil.copy(next(heat.glob("*_unit17.png")), stray)
    text = report(exp).read_text()
    section = text[text.index("<h2>Heatmaps</h2>") : text.index("<h2>Top-activating patches</h2>")]
    folded = section[section.index("<details>") :]
    assert "someslide_unit3" in folded and "picture(s) of other neurons" in folded
    assert "_unit17" in section[: section.index("<details>")]


def test_training_curves_show_losses_before_timing_columns():
    from sae1n.viz.curves import _panel_priority, training_metric_columns

    log = pd.DataFrame({"step": [1, 2], "elapsed_s": [1.0, 2.0], "tokens_per_s": [5.0, 6.0], "val_fvu": [0.5, 0.4], "train_loss": [1.0, 0.9], "val_dead_frac": [0.1, 0.1]})
    _, metrics = training_metric_columns(log)
    assert sorted(metrics, key=_panel_priority)[:3] == ["train_loss", "val_fvu", "val_dead_frac"]
