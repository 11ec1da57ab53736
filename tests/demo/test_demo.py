"""The main job end to end: `sae1n demo --quick` (as CI runs it) and resume."""

import json

import h5py
import numpy as np
import pandas as pd
import pytest

from sae1n.cli import main
from sae1n.demo.run import run_demo
from sae1n.io import feature_paths, read_bag


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "sae1n-demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    return out


def test_demo_outputs_exist_and_are_valid(demo_dir):
    # paper layout: features, metadata, splits, SAE outputs, MIL summaries
    feats = feature_paths(
        demo_dir / "features" / "camelyon16" / "clam_processed" / "features_handcrafted"
    )
    assert len(feats) == 14
    for sid, path in feats.items():
        bag = read_bag(path)
        with h5py.File(
            demo_dir / "features" / "camelyon16" / "clam_processed" / "patches" / f"{sid}.h5"
        ) as f:
            np.testing.assert_array_equal(bag.coords, f["coords"][()])
    meta = pd.read_csv(demo_dir / "dataset_csv" / "camelyon16_metadata.csv")
    assert set(meta["label"]) == {"normal", "tumor"} and len(meta) == 14
    assert len(list((demo_dir / "splits" / "camelyon16_42").glob("splits_?.csv"))) == 5
    sae = demo_dir / "output" / "sae" / "demo"
    assert (sae / "checkpoints" / "sae_best.safetensors").is_file()
    ranking = pd.read_csv(sae / "analysis" / "sae_analysis_t_test.csv")
    assert list(ranking.columns[:5]) == [
        "unit_id",
        "t_statistic",
        "p_value",
        "tumor_mean_activation",
        "normal_mean_activation",
    ]
    assert ranking["p_value"].is_monotonic_increasing
    metrics = json.loads((sae / "evaluation" / "patch_metrics.json").read_text())
    assert metrics["chosen_unit"] == int(ranking["unit_id"].iloc[0])
    # the selected single neuron really locates tumour patches
    assert metrics["chosen"]["patch_auroc"] > 0.8
    for exp in ("demo_maxmil", "demo_sae_1n_maxmil"):
        summary = pd.read_csv(demo_dir / "output" / "mil" / exp / "summary.csv")
        assert {"folds", "test_auc", "val_auc", "test_acc", "val_acc"} <= set(summary.columns)
    heatmaps = list((sae / "figures" / "heatmaps").glob("*.png"))
    assert len(heatmaps) == 2
    html = (sae / "report.html").read_text()
    assert "data:image/png;base64" in html  # figures are embedded
    assert "<h2>Neuron ranking</h2>" in html and "No ranking yet" not in html
    assert f"unit{metrics['chosen_unit']}_top16" in html  # the chosen neuron's gallery
    assert (demo_dir / "pipeline.yaml").is_file()


def test_demo_rerun_skips_completed_stages(demo_dir, capsys):
    before = (
        (demo_dir / "output" / "sae" / "demo" / "checkpoints" / "sae_best.safetensors")
        .stat()
        .st_mtime_ns
    )
    result = run_demo(demo_dir, quick=True)
    out = capsys.readouterr().out
    assert out.count("[skip]") == 12 and "[run ]" not in out
    assert (
        demo_dir / "output" / "sae" / "demo" / "checkpoints" / "sae_best.safetensors"
    ).stat().st_mtime_ns == before
    assert result.patch_auroc is not None


def test_pipeline_yaml_written_by_demo_runs_as_pipeline(demo_dir, capsys):
    # the demo's one-config form is a valid `sae1n pipeline` config; everything is complete
    assert main(["pipeline", str(demo_dir / "pipeline.yaml")]) == 0
    assert "skipped" in capsys.readouterr().out


def test_changed_mil_setting_reruns_exactly_the_stages_downstream(demo_dir, capsys):
    """The issue's case in the real pipeline: a MIL learning rate reruns train-mil
    and what reads it, nothing upstream; a re-run with it is then complete."""
    yaml = str(demo_dir / "pipeline.yaml")
    ov = "mil.overrides=[max_epochs=8,device=cpu,optimizer.lr=0.003]"
    ckpt = demo_dir / "output" / "sae" / "demo" / "checkpoints" / "sae_best.safetensors"
    before = ckpt.stat().st_mtime_ns
    assert main(["pipeline", yaml, ov]) == 0
    out = capsys.readouterr().out
    ran = [line.split()[2] for line in out.splitlines() if line.startswith("[run ]")]
    assert ran == ["train_mil", "evaluate_patches", "heatmaps", "report"], out
    assert ckpt.stat().st_mtime_ns == before
    assert main(["pipeline", yaml, ov]) == 0
    assert "[run ]" not in capsys.readouterr().out
    assert main(["pipeline", yaml, "--stages", "train_sea"]) == 1
    assert "train-sae" in capsys.readouterr().err


def test_demo_tiles_mode_on_real_camelyon16_tiles(shared_data, tmp_path):
    """`sae1n demo --quick --tiles DIR` runs the same pipeline on mosaics of real tiles."""
    tiles = shared_data / "tiles" / "camelyon16_didsr_256"
    if not tiles.is_dir():
        pytest.skip(f"{tiles} not found")
    result = run_demo(tmp_path / "tiles-demo", quick=True, tiles_dir=tiles, echo=lambda s: None)
    assert result.report.is_file()
    metrics = json.loads(
        (
            tmp_path
            / "tiles-demo"
            / "output"
            / "sae"
            / "demo"
            / "evaluation"
            / "patch_metrics.json"
        ).read_text()
    )
    chosen = metrics["chosen"]
    # both classes are among the test patches, so the AUROC means something ...
    assert 0 < chosen["n_positive"] < chosen["n_patches"]
    # ... and the selected neuron separates tumour from normal tiles (measured 1.000 with
    # `sae1n demo --quick --tiles .../camelyon16_didsr_256`; 0.5 would be chance)
    assert chosen["patch_auroc"] > 0.9
