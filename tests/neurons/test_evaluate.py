import json

import numpy as np
import pandas as pd
import pytest

from sae1n.cli import main
from sae1n.errors import ConfigError, InputFileError
from sae1n.io.provenance import read_provenance
from sae1n.neurons.evaluate import evaluate_patches
from sae1n.neurons.metrics import best_f1_threshold, patch_metrics
from sae1n.neurons.ranking import analyze_sae
from sae1n.viz.evaluation import plot_patch_evaluation
from tests.neurons import synth


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    coh = synth.make_cohort(root, formats=("sparse",), mil_scores=True, labels_for_normal=False)
    out = root / "output" / "sae"
    analyze_sae("exp0", coh.split_csv, coh.enc_dir, coh.dataset_csv, out)
    coh.out = out
    return coh


def test_planted_neuron_selected_and_near_perfect(cohort):
    res = evaluate_patches(
        "exp0",
        cohort.split_csv,
        cohort.enc_dir,
        cohort.label_dir,
        cohort.out,
        dataset_csv=cohort.dataset_csv,
        mil_dir=cohort.mil_dir,
        top_n=5,
    )
    assert res.chosen_unit == synth.TUMOR_UNIT
    c = res.chosen
    assert c["rank"] == 1 and c["direction"] == "tumor"
    assert c["patch_auroc"] > 0.98 and c["patch_ap"] > 0.95
    assert c["f1"] > 0.9 and c["slide_auroc"] == 1.0
    assert np.isfinite(c["threshold"]) and c["n_slides"] == 8
    # matched by coords: tumour slides' label files miss one patch each; normal
    # slides have no label file (all their patches count as normal)
    assert c["n_patches"] == 4 * (synth.GRID**2 - 1) + 4 * synth.GRID**2
    assert res.baseline["patch_auroc"] > 0.6
    ev = cohort.out / "exp0" / "evaluation"
    table = pd.read_csv(ev / "patch_metrics.csv")
    assert (
        table["method"].tolist().count("sae_neuron") == 5
        and "abmil_attention" in table["method"].tolist()
    )
    assert json.loads((ev / "patch_metrics.json").read_text())["chosen_unit"] == synth.TUMOR_UNIT
    assert len(res.curves) == 2 and any("ABMIL" in name for name in res.curves)
    written = plot_patch_evaluation(res)
    for png in ("roc_curve.png", "pr_curve.png"):
        assert (ev / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert read_provenance(ev / png).matches(read_provenance(ev / "patch_metrics.csv"))
    assert sorted(p.name for p in written.values()) == ["pr_curve.png", "roc_curve.png"]


def test_random_neuron_is_near_chance(cohort, tmp_path):
    res = evaluate_patches(
        "exp0",
        cohort.split_csv,
        cohort.enc_dir,
        cohort.label_dir,
        tmp_path,
        unit=2,
        ranking_csv=cohort.out / "exp0" / "analysis" / "sae_analysis_t_test.csv",
        dataset_csv=cohort.dataset_csv,
        top_n=0,
        plots=False,
    )
    assert res.chosen_unit == 2
    assert abs(res.chosen["patch_auroc"] - 0.5) < 0.12
    assert len(res.top_n) == 1


def test_normal_neuron_is_scored_negated(cohort, tmp_path):
    res = evaluate_patches(
        "exp0",
        cohort.split_csv,
        cohort.enc_dir,
        cohort.label_dir,
        tmp_path,
        unit=synth.NORMAL_UNIT,
        ranking_csv=cohort.out / "exp0" / "analysis" / "sae_analysis_t_test.csv",
        dataset_csv=cohort.dataset_csv,
        top_n=0,
        plots=False,
    )
    assert res.chosen["direction"] == "normal"
    assert res.chosen["patch_auroc"] > 0.9


def test_missing_labels_and_bad_options(cohort, tmp_path):
    # without the dataset CSV, normal slides have no label files -> clear error
    with pytest.raises(InputFileError, match=r"test_normal_00\.h5: patch-label file not found"):
        evaluate_patches(
            "exp0", cohort.split_csv, cohort.enc_dir, cohort.label_dir, cohort.out, plots=False
        )
    with pytest.raises(ConfigError, match="outside the SAE"):
        evaluate_patches(
            "exp0",
            cohort.split_csv,
            cohort.enc_dir,
            cohort.label_dir,
            cohort.out,
            unit=999,
            dataset_csv=cohort.dataset_csv,
        )
    with pytest.raises(InputFileError, match="neuron ranking not found"):
        evaluate_patches(
            "other",
            cohort.split_csv,
            cohort.enc_dir,
            cohort.label_dir,
            tmp_path,
            dataset_csv=cohort.dataset_csv,
        )


def test_best_f1_threshold_and_metrics():
    rng = np.random.default_rng(0)
    y = rng.random(200) < 0.3
    s = y * 0.6 + rng.random(200)
    thr, f1 = best_f1_threshold(y, s)
    brute = max((2 * ((s >= t) & y).sum() / ((s >= t).sum() + y.sum()), t) for t in np.unique(s))
    assert f1 == pytest.approx(brute[0])
    m = patch_metrics(y, s, thr)
    assert m["f1"] == pytest.approx(f1)
    assert np.isnan(best_f1_threshold(np.zeros(5, bool), np.ones(5))[0])


def test_cli_evaluate_patches(cohort, tmp_path, capsys):
    rc = main(
        [
            "evaluate-patches",
            "exp0",
            "--split_csv_path",
            str(cohort.split_csv),
            "--feature_dir",
            str(cohort.enc_dir),
            "--patch_label_dir",
            str(cohort.label_dir),
            "--output_dir",
            str(tmp_path),
            "--ranking_csv",
            str(cohort.out / "exp0" / "analysis" / "sae_analysis_t_test.csv"),
            "--dataset_csv",
            str(cohort.dataset_csv),
            "--top_n",
            "2",
        ]
    )
    assert rc == 0
    assert f"neuron {synth.TUMOR_UNIT}: patch AUROC" in capsys.readouterr().out
    assert (tmp_path / "exp0" / "evaluation" / "patch_metrics.csv").is_file()
