"""Baselines beside the chosen neuron: each must win exactly where it should."""

import json

import numpy as np
import pandas as pd
import pytest

from sae1n.cli import main
from sae1n.io import write_bag
from sae1n.neurons.baselines import fit_baselines
from sae1n.neurons.evaluate import evaluate_patches
from sae1n.neurons.ranking import analyze_sae
from sae1n.sae import build_sae, save_sae
from sae1n.viz.evaluation import plot_patch_evaluation
from tests.neurons import synth

D = 16
SIGNAL_DIM = 3


def _raw_features(coh, kind: str, seed: int = 1) -> None:
    """Input features aligned with the cohort's coords.

    ``spread``: tumour patches sit at +-a*v (v spread over every dim, random
    sign): no single dim, no top PC and no linear probe separates them, while
    the planted SAE neuron does. ``one_dim``: tumour lives in raw dim 3 only."""
    rng = np.random.default_rng(seed)
    v = np.ones(D) / np.sqrt(D)
    scale = np.r_[np.full(4, 4.0), np.ones(D - 4)]  # 4 high-variance nuisance dims
    for sid, frac in coh.fraction.items():
        n = len(frac)
        tum = frac >= 0.5
        x = rng.normal(size=(n, D)) * scale
        if kind == "spread":
            x += (tum * rng.choice([-1.0, 1.0], n))[:, None] * 2.0 * v
        else:
            x[:, SIGNAL_DIM] = 0.2 * rng.normal(size=n) + 3.0 * tum
        write_bag(coh.root / f"raw_{kind}", sid, x.astype(np.float32), coh.coords[sid], formats=("h5",))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("base")
    coh = synth.make_cohort(root, formats=("sparse",), mil_scores=True, labels_for_normal=False)
    out = root / "output" / "sae"
    analyze_sae("exp0", coh.split_csv, coh.enc_dir, coh.dataset_csv, out)
    coh.out = out
    _raw_features(coh, "spread")
    _raw_features(coh, "one_dim")
    sae = build_sae({"act_size": D, "dict_size": synth.DICT, "top_k": 4})
    coh.ckpt = save_sae(sae, root / "sae" / "sae_best.safetensors")
    return coh


def _run(coh, kind, tmp_path, **kw):
    return evaluate_patches(
        "exp0", coh.split_csv, coh.enc_dir, coh.label_dir, coh.out, dataset_csv=coh.dataset_csv,
        mil_dir=coh.mil_dir, top_n=3, input_feature_dir=coh.root / f"raw_{kind}",
        sae_checkpoint=coh.ckpt, n_components=4, ranking_csv=coh.out / "exp0" / "analysis" / "sae_analysis_t_test.csv",
        **kw,
    )


def _table(res):
    rows = {r["method"]: r for r in res.baselines}
    rows["sae_neuron"] = res.chosen
    return rows


def test_planted_neuron_beats_every_baseline(cohort):
    res = _run(cohort, "spread", None)
    t = _table(res)
    assert set(t) == {"sae_neuron", "raw_dim", "pca", "random_sae", "linear_probe", "abmil_attention"}
    assert res.chosen_unit == synth.TUMOR_UNIT and t["sae_neuron"]["patch_auroc"] > 0.98
    for m, r in t.items():
        if m != "sae_neuron":
            assert t["sae_neuron"]["patch_auroc"] > r["patch_auroc"] + 0.15, m
            assert t["sae_neuron"]["patch_ap"] > r["patch_ap"], m
    assert t["linear_probe"]["patch_auroc"] < 0.7  # a linear probe cannot see +-v
    ev = cohort.out / "exp0" / "evaluation"
    table = pd.read_csv(ev / "patch_metrics.csv")
    # the oracle is labelled as such, and only it
    assert table.loc[table["oracle"], "method"].tolist() == ["linear_probe"]
    assert {"method", "oracle", "patch_auroc", "patch_ap", "f1", "slide_auroc"} <= set(table.columns)
    assert not (ev / "roc_curve.png").exists()  # neurons return curve data; viz draws it
    plot_patch_evaluation(res)
    assert (ev / "roc_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((ev / "patch_metrics.json").read_text())["baselines"][-1]["oracle"] is True


def test_raw_dim_wins_when_signal_is_one_raw_dimension(cohort, tmp_path):
    # a neuron that does not track tumour, vs a tumour dimension in the raw input
    res = _run(cohort, "one_dim", tmp_path, unit=synth.DEAD_UNIT - 1)
    t = _table(res)
    assert "dim=3" in pd.read_csv(cohort.out / "exp0" / "evaluation" / "patch_metrics.csv").set_index("method").loc["raw_dim", "detail"]
    assert t["raw_dim"]["patch_auroc"] > 0.98 and t["raw_dim"]["slide_auroc"] == 1.0
    assert t["raw_dim"]["patch_auroc"] > t["sae_neuron"]["patch_auroc"] + 0.2
    assert t["raw_dim"]["patch_auroc"] > t["random_sae"]["patch_auroc"]
    assert t["linear_probe"]["patch_auroc"] > 0.98  # the oracle sees it too


def test_baselines_deterministic_and_label_free():
    rng = np.random.default_rng(0)
    train = {f"s{i}": rng.normal(size=(20, 5)).astype(np.float32) for i in range(8)}
    labels = {f"s{i}": i % 2 for i in range(8)}
    for i in range(0, 8, 2):  # tumour slides: one patch high in dim 2
        train[f"s{i + 1}"][0, 2] += 6.0
    cfg = {"act_size": 5, "dict_size": 12, "top_k": 2}
    a = fit_baselines(train, labels, sae_config=cfg, methods=("raw_dim", "pca", "random_sae"))
    b = fit_baselines(train, labels, sae_config=cfg, methods=("raw_dim", "pca", "random_sae"))
    x = rng.normal(size=(7, 5)).astype(np.float32)
    for p, q in zip(a, b):
        np.testing.assert_array_equal(p.score(x), q.score(x))
        assert not p.oracle
    assert a[0].detail["dim"] == 2 and a[0].sign == 1.0
    # without patch labels there is no oracle to fit
    assert [m.method for m in fit_baselines(train, labels, methods=("linear_probe",))] == []


def test_cli_with_baselines(cohort, capsys):
    rc = main([
        "evaluate-patches", "exp0", "--split_csv_path", str(cohort.split_csv), "--feature_dir", str(cohort.enc_dir),
        "--patch_label_dir", str(cohort.label_dir), "--output_dir", str(cohort.out), "--dataset_csv", str(cohort.dataset_csv),
        "--input_feature_dir", str(cohort.root / "raw_one_dim"), "--baselines", "raw_dim", "linear_probe", "--top_n", "1",
    ])
    out = capsys.readouterr().out
    assert rc == 0 and "raw_dim" in out and "linear_probe (oracle)" in out
