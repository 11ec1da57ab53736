"""analyze-sae --compat paper against the paper's recorded ranking
(../shared/data/paper_reference/analyze_sae), and the MIL stage's selection.

With the recorded glob order the CSV is byte-identical (same order, same
float32 reprs). With the files sorted, the unit order is identical and the
floats agree to the README's float32-summation tolerance (rtol 1e-3 for t
near 0, 1e-5 for p, 1e-6 for the means)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from sae1n.io.provenance import StaleOutputError, read_provenance
from sae1n.neurons.ranking import analyze_sae, rank_by_t_test
from sae1n.neurons.ranking_csv import select_units
from sae1n.neurons.ranking_paper import analyze_sae_paper, read_paper_csv_floats
from tests.conftest import PAPER_REFERENCE, paper_reference_fixture

_ROOT = PAPER_REFERENCE / "analyze_sae"


ref = paper_reference_fixture("analyze_sae")


def _args(ref):
    a = json.loads((ref / "inputs" / "cli_args.json").read_text())
    return a["exp_id"], int(a["num_features"])


def _csv(ref, out):
    return out / _args(ref)[0] / "analysis" / "sae_analysis_t_test.csv"


def _run(ref, out, order=None, **kw):
    exp_id, nf = _args(ref)
    return analyze_sae_paper(
        exp_id, ref / "inputs/splits_0.csv", ref / "inputs/pt_files", ref / "inputs/dataset.csv", out, nf,
        file_order=order, **kw,
    )


def _glob_order(ref):
    return json.loads((ref / "outputs/stacking_order.json").read_text())["glob_order_all_files"]


def test_paper_ranking_csv_is_byte_identical(ref, tmp_path):
    _run(ref, tmp_path, _glob_order(ref))
    csv = _csv(ref, tmp_path)
    assert csv.read_bytes() == (ref / "outputs/sae_analysis_t_test.csv").read_bytes()
    got = read_paper_csv_floats(csv)
    nan = got["p_value"].isna().to_numpy()
    assert not nan[: (~nan).sum()].any()  # NaN rows last, in unit order
    assert got["unit_id"][nan].is_monotonic_increasing
    assert read_provenance(csv).settings["compat"] == "paper"


def test_pooled_stacks_match(ref):
    from sae1n.neurons.ranking_paper import paper_code_files, pool_paper

    order = _glob_order(ref)
    files = {f.stem: f for f in paper_code_files(ref / "inputs/pt_files")}
    split = pd.read_csv(ref / "inputs/splits_0.csv")
    meta = pd.read_csv(ref / "inputs/dataset.csv", dtype={"slide_id": str})
    labels = dict(zip(meta.slide_id, meta.label.str.lower()))
    train = {s.split(".")[0] for s in split.train.dropna()}
    t_ids, n_ids, tumor, normal = pool_paper([files[s] for s in order], train, labels)
    want = np.load(ref / "outputs/pooled_max_per_slide.npz")
    np.testing.assert_array_equal(tumor, want["tumor_stack"])
    np.testing.assert_array_equal(normal, want["normal_stack"])
    assert len(t_ids) == len(want["tumor_stack"]) and len(n_ids) == len(want["normal_stack"])


def test_sorted_file_order_matches_within_float32_summation(ref, tmp_path):
    files = sorted(p.stem for p in (ref / "inputs/pt_files").glob("*.pt"))
    got = _run(ref, tmp_path, files)
    want = read_paper_csv_floats(ref / "outputs/sae_analysis_t_test__sorted_stacking.csv")
    assert got["unit_id"].tolist() == want["unit_id"].tolist()
    for c in want.columns[1:]:
        np.testing.assert_array_equal(got[c].to_numpy(np.float32), want[c].to_numpy(np.float32), err_msg=c)
    paper = read_paper_csv_floats(ref / "outputs/sae_analysis_t_test.csv")
    assert got["unit_id"].tolist() == paper["unit_id"].tolist()
    np.testing.assert_allclose(got["t_statistic"], paper["t_statistic"], rtol=1e-3, atol=1e-6)


def test_mil_selection_matches_paper(ref):
    want = json.loads((ref / "outputs/mil_selected_units.json").read_text())["selected_unit_ids_by_num_top_sae_units"]
    for n, units in want.items():
        assert select_units(ref / "outputs/sae_analysis_t_test.csv", int(n), "p_value", compat="paper").tolist() == units


def test_default_mode_picks_a_different_rank1_neuron(ref):
    """Known difference: float64 statistics put unit 17 (smaller true p) first."""
    pooled = np.load(ref / "outputs/pooled_max_per_slide.npz")
    x = np.concatenate([pooled["tumor_stack"], pooled["normal_stack"]])
    y = [1] * len(pooled["tumor_stack"]) + [0] * len(pooled["normal_stack"])
    df = rank_by_t_test(x, y)
    paper = read_paper_csv_floats(ref / "outputs/sae_analysis_t_test.csv")
    zero = paper["unit_id"][paper["p_value"] == 0].tolist()
    if len(zero) < 2:
        pytest.skip("no float32 underflow tie in this fixture")
    # float64: the tied units get their true (non-zero) p and the smallest ranks first
    ours = df.set_index("unit_id")
    assert (ours.loc[zero, "p_value"] > 0).all()
    assert df["unit_id"].iloc[0] == ours.loc[zero, "p_value"].idxmin()
    assert df["unit_id"].iloc[0] != paper["unit_id"].iloc[0]
    # constant units: t=0, p=1 here; NaN (and last) in the paper
    const = paper["unit_id"][paper["p_value"].isna()].tolist()
    assert (ours.loc[const, "p_value"] == 1.0).all()


def test_rerun_skips_and_changed_input_refuses(ref, tmp_path):
    order = _glob_order(ref)
    _run(ref, tmp_path, order)
    csv = _csv(ref, tmp_path)
    mtime = csv.stat().st_mtime_ns
    _run(ref, tmp_path, order)
    assert csv.stat().st_mtime_ns == mtime
    with pytest.raises(StaleOutputError, match="file_order"):
        _run(ref, tmp_path, sorted(order))
    _run(ref, tmp_path, sorted(order), overwrite=True)
    assert csv.read_bytes() == (ref / "outputs/sae_analysis_t_test__sorted_stacking.csv").read_bytes()


def test_analyze_sae_compat_switch(ref, tmp_path):
    exp_id, nf = _args(ref)
    df = analyze_sae(
        exp_id, ref / "inputs/splits_0.csv", ref / "inputs/pt_files", ref / "inputs/dataset.csv", tmp_path,
        nf, compat="paper",
    )
    assert list(df.columns) == ["unit_id", "t_statistic", "p_value", "tumor_mean_activation", "normal_mean_activation"]
    assert df["unit_id"].iloc[0] == read_paper_csv_floats(ref / "outputs/sae_analysis_t_test.csv")["unit_id"].iloc[0]


def test_cli_analyze_sae_compat_paper(ref, tmp_path, capsys):
    from sae1n.cli import main

    exp_id, nf = _args(ref)
    args = [
        "analyze-sae", exp_id, "--split_csv_path", str(ref / "inputs/splits_0.csv"),
        "--feature_dir", str(ref / "inputs/pt_files"), "--dataset_csv", str(ref / "inputs/dataset.csv"),
        "--output_dir", str(tmp_path), "--num_features", str(nf), "--compat", "paper",
    ]
    assert main(args) == 0
    assert "ranked" in capsys.readouterr().out
    csv = _csv(ref, tmp_path)
    before = csv.stat().st_mtime_ns
    assert main(args) == 0  # current: not recomputed
    assert csv.stat().st_mtime_ns == before
    assert main([*args, "--overwrite"]) == 0


def test_default_selection_is_stable_paper_selection_is_pandas_default():
    """Row 16: ties in p keep the CSV order by default; the paper uses pandas'
    default (unstable) quicksort, which can reorder them."""
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"unit_id": np.arange(300), "p_value": rng.choice([0.01, 0.02, 0.03], 300)})
    stable = df.sort_values("p_value", kind="mergesort")["unit_id"].to_numpy()
    quick = df.sort_values("p_value")["unit_id"].to_numpy()
    assert not np.array_equal(stable, quick)  # quicksort reorders ties here
    assert np.array_equal(select_units(df, 300, "p_value"), stable)
    assert np.array_equal(select_units(df, 300, "p_value", compat="paper"), quick)
