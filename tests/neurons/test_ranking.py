import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from sklearn.metrics import roc_auc_score

from sae1n.cli import main
from sae1n.errors import InputFileError, Sae1nError
from sae1n.neurons.column_stats import welch_t_test
from sae1n.neurons.ranking import analyze_sae, rank_by_grade, rank_neurons
from sae1n.neurons.ranking_csv import PAPER_COLUMNS
from tests.neurons import synth


def _reference_ranking(files, labels, num_features):
    """The paper's procedure, one neuron at a time: max-pool each .pt tensor,
    scipy's Welch test per unit, sort by p asc then t desc (constant -> p 1)."""
    tum, nor = [], []
    for path in files:
        pooled = torch.max(torch.load(path, weights_only=True), dim=0).values
        (tum if labels[path.stem] == "tumor" else nor).append(pooled)
    tum, nor = torch.stack(tum).double().numpy(), torch.stack(nor).double().numpy()
    rows = []
    for u in range(num_features):
        a, b = tum[:, u], nor[:, u]
        # Welch by hand (independent of the vectorised call)
        va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
        if va + vb == 0:
            t, p = (
                (0.0, 1.0)
                if a.mean() == b.mean()
                else (math.copysign(math.inf, a.mean() - b.mean()), 0.0)
            )
        else:
            t = (a.mean() - b.mean()) / math.sqrt(va + vb)
            df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
            p = 2 * stats.t.sf(abs(t), df)
            ref = stats.ttest_ind(a, b, equal_var=False)
            assert p == pytest.approx(ref.pvalue, abs=1e-12)
        rows.append((u, t, p, a.mean(), b.mean()))
    df = pd.DataFrame(rows, columns=PAPER_COLUMNS)
    return df.sort_values(
        ["p_value", "t_statistic", "unit_id"], ascending=[True, False, True]
    ).reset_index(drop=True)


def test_welch_matches_independent_per_neuron_computation(tmp_path):
    coh = synth.make_cohort(tmp_path, formats=("sparse", "pt"))
    # plant ties and degenerate neurons: a duplicate of neuron 3, and a neuron
    # constant at 1.0 everywhere (scipy: NaN; here p = 1)
    for sid, codes in coh.codes.items():
        codes[:, 30] = codes[:, 3]
        codes[:, 31] = 1.0
        from sae1n.io import write_bag

        write_bag(coh.enc_dir, sid, codes, coh.coords[sid], formats=("pt",))
    train = coh.split["train"]
    labels = {s: ("tumor" if coh.slides[s] else "normal") for s in train}
    files = [coh.enc_dir / "pt_files" / f"{s}.pt" for s in train]
    ref = _reference_ranking(files, labels, synth.DICT)
    got = rank_neurons(coh.enc_dir / "pt_files", labels)
    assert list(got.columns[:5]) == PAPER_COLUMNS
    assert got["unit_id"].tolist() == ref["unit_id"].tolist()
    np.testing.assert_allclose(got["p_value"], ref["p_value"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(got["t_statistic"], ref["t_statistic"], rtol=1e-9)
    np.testing.assert_allclose(
        got["tumor_mean_activation"], ref["tumor_mean_activation"], rtol=1e-12
    )
    for unit in (synth.DEAD_UNIT, 31):
        row = got.loc[got["unit_id"] == unit].iloc[0]
        assert row["p_value"] == 1.0 and row["t_statistic"] == 0.0
    assert got["p_value"].notna().all()
    assert got["unit_id"].iloc[0] == synth.TUMOR_UNIT
    assert got.loc[got["unit_id"] == synth.NORMAL_UNIT, "direction"].item() == "normal"


def test_sparse_dense_and_mapping_inputs_agree(tmp_path):
    coh = synth.make_cohort(tmp_path, n_train=(3, 3), formats=("sparse", "h5", "pt"))
    labels = {s: coh.slides[s] for s in coh.split["train"]}
    for pooling in ("max", "mean", "topk_mean", "quantile"):
        a = rank_neurons(coh.enc_dir, labels, pooling=pooling)  # prefers sparse_files/
        b = rank_neurons(coh.enc_dir / "h5_files", labels, pooling=pooling)
        c = rank_neurons({s: coh.codes[s] for s in labels}, labels, pooling=pooling)
        pd.testing.assert_frame_equal(a, b)
        pd.testing.assert_frame_equal(a, c)
        assert (a["pooling"] == pooling).all()


def test_extras_auroc_q_values():
    rng = np.random.default_rng(3)
    pooled = rng.random((20, 15))
    y = np.array([1] * 9 + [0] * 11)
    pooled[y == 1, 2] += 0.8
    from sae1n.neurons.ranking import rank_by_t_test

    df = rank_by_t_test(pooled, y).set_index("unit_id").sort_index()
    for u in range(15):
        assert df.loc[u, "slide_auroc"] == pytest.approx(roc_auc_score(y, pooled[:, u]), abs=1e-12)
    p = df["p_value"].to_numpy()
    order = np.argsort(p)
    q_manual = np.minimum.accumulate((p[order] * len(p) / np.arange(1, len(p) + 1))[::-1])[::-1]
    np.testing.assert_allclose(
        np.sort(df["q_value"].to_numpy()), np.sort(np.minimum(q_manual, 1)), rtol=1e-12
    )
    t, pv = welch_t_test(pooled[y == 1], pooled[y == 0])
    np.testing.assert_allclose(df["t_statistic"], t)


def test_spearman_ranking_matches_scipy():
    rng = np.random.default_rng(4)
    grades = rng.integers(0, 6, size=30).astype(float)
    pooled = rng.random((30, 12))
    pooled[:, 7] += grades * 0.3
    pooled[:, 9] = 2.0  # constant
    df = rank_by_grade(pooled, grades)
    assert df["unit_id"].iloc[0] == 7
    by_unit = df.set_index("unit_id")
    for u in range(12):
        if u == 9:
            assert by_unit.loc[u, "p_value"] == 1.0
            continue
        ref = stats.spearmanr(pooled[:, u], grades)
        assert by_unit.loc[u, "spearman_rho"] == pytest.approx(ref.statistic, abs=1e-12)
        assert by_unit.loc[u, "p_value"] == pytest.approx(ref.pvalue, abs=1e-10)


def test_analyze_sae_writes_paper_csv_and_summary(tmp_path):
    coh = synth.make_cohort(tmp_path, formats=("sparse",))
    out = tmp_path / "output" / "sae"
    df = analyze_sae(
        "exp0", coh.split_csv, coh.enc_dir, coh.dataset_csv, out, num_features=synth.DICT
    )
    csv = out / "exp0" / "analysis" / "sae_analysis_t_test.csv"
    saved = pd.read_csv(csv)
    assert list(saved.columns[:5]) == PAPER_COLUMNS
    assert {"q_value", "slide_auroc", "direction", "pooling", "rank"} <= set(saved.columns)
    assert saved["unit_id"].iloc[0] == synth.TUMOR_UNIT == df["unit_id"].iloc[0]
    assert saved.loc[0, "slide_auroc"] == 1.0 and saved.loc[0, "direction"] == "tumor"
    # sorted by p ascending, then t descending
    key = list(zip(saved["p_value"], -saved["t_statistic"]))
    assert key == sorted(key)
    assert saved["p_value"].iloc[-1] == 1.0
    summary = (out / "exp0" / "analysis" / "sae_analysis_summary.json").read_text()
    assert '"n_tumor": 6' in summary and '"top_unit": 17' in summary


def test_analyze_sae_multiclass(tmp_path):
    coh = synth.make_cohort(tmp_path, n_train=(8, 4), formats=("sparse",))
    meta = pd.read_csv(coh.dataset_csv)
    rng = np.random.default_rng(0)
    # grade follows the tumour neuron's pooled activation for tumour slides
    meta["isup_grade"] = [
        int(np.clip(round((coh.codes[s][:, synth.TUMOR_UNIT].max() - 2) * 5 + 1), 1, 5))
        if coh.slides[s]
        else 0
        for s in meta["slide_id"]
    ]
    meta.to_csv(coh.dataset_csv, index=False)
    out = tmp_path / "out"
    df = analyze_sae("e", coh.split_csv, coh.enc_dir, coh.dataset_csv, out, multiclass=True)
    assert df["unit_id"].iloc[0] == synth.TUMOR_UNIT
    assert (out / "e" / "analysis" / "sae_analysis_rank_correlation.csv").is_file()
    assert (out / "e" / "analysis" / "sae_analysis_t_test.csv").is_file()
    assert "mean_activation_grade_0" in df.columns
    del rng


def test_input_errors(tmp_path):
    coh = synth.make_cohort(
        tmp_path, n_train=(3, 3), n_val=(0, 0), n_test=(1, 1), formats=("sparse",)
    )
    out = tmp_path / "o"
    meta = pd.read_csv(coh.dataset_csv)
    bad = meta.copy()
    bad.loc[0, "label"] = "maybe"
    bad_csv = tmp_path / "bad.csv"
    bad.to_csv(bad_csv, index=False)
    with pytest.raises(InputFileError, match=r"bad\.csv.*neither tumour nor normal.*maybe"):
        analyze_sae("e", coh.split_csv, coh.enc_dir, bad_csv, out)
    # a train slide without codes
    (coh.enc_dir / "sparse_files" / "train_tumor_00.h5").unlink()
    with pytest.raises(
        InputFileError, match="no SAE codes for 1 slide.*train_tumor_00.*--allow_missing"
    ):
        analyze_sae("e", coh.split_csv, coh.enc_dir, coh.dataset_csv, out)
    df = analyze_sae("e", coh.split_csv, coh.enc_dir, coh.dataset_csv, out, allow_missing=True)
    assert len(df) == synth.DICT
    with pytest.raises(InputFileError, match="has 48 neurons, expected 64"):
        analyze_sae(
            "e",
            coh.split_csv,
            coh.enc_dir,
            coh.dataset_csv,
            out,
            num_features=64,
            allow_missing=True,
        )
    with pytest.raises(Sae1nError, match="at least 2 tumour and 2 normal"):
        rank_neurons(
            {s: coh.codes[s] for s in coh.split["test"]},
            {s: coh.slides[s] for s in coh.split["test"]},
        )
    with pytest.raises(InputFileError, match="split file not found"):
        analyze_sae("e", tmp_path / "nope.csv", coh.enc_dir, coh.dataset_csv, out)
    nan_codes = {s: coh.codes[s].copy() for s in coh.split["train"][1:]}
    next(iter(nan_codes.values()))[0, 0] = np.nan
    with pytest.raises(Sae1nError, match="NaN"):
        rank_neurons(nan_codes, {s: coh.slides[s] for s in nan_codes})


def test_cli_analyze_sae_with_paper_flags(tmp_path, capsys):
    coh = synth.make_cohort(tmp_path, n_train=(3, 3), formats=("pt",))
    out = tmp_path / "output" / "sae"
    rc = main(
        [
            "analyze-sae",
            "exp0",
            "--split_csv_path",
            str(coh.split_csv),
            "--feature_dir",
            str(coh.enc_dir / "pt_files"),
            "--dataset_csv",
            str(coh.dataset_csv),
            "--output_dir",
            str(out),
            "--num_features",
            str(synth.DICT),
            "--pooling",
            "mean",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "ranked 48 neurons" in printed
    saved = pd.read_csv(out / "exp0" / "analysis" / "sae_analysis_t_test.csv")
    assert (saved["pooling"] == "mean").all()
    # a user error is one line on stderr and exit code 1
    rc = main(
        [
            "analyze-sae",
            "exp0",
            "--split-csv-path",
            str(coh.split_csv),
            "--feature-dir",
            str(tmp_path / "none"),
            "--dataset-csv",
            str(coh.dataset_csv),
            "--output-dir",
            str(out),
        ]
    )
    assert rc == 1
    assert "feature folder does not exist" in capsys.readouterr().err


def test_paper_split_and_metadata_files(shared_data, tmp_path):
    """The paper's own CAMELYON16 metadata and fold-0 split drive the analysis."""
    ref = shared_data / "sae1n_reference"
    split_csv = ref / "splits" / "camelyon16_42" / "splits_0.csv"
    meta = pd.read_csv(ref / "camelyon16_metadata.csv")
    train = pd.read_csv(split_csv)["train"].dropna().tolist()
    label = dict(zip(meta["slide_id"], meta["label"]))
    rng = np.random.default_rng(0)
    from sae1n.io import write_bag

    for sid in train:
        codes = rng.exponential(1.0, size=(6, 8)).astype(np.float32)
        codes[:, 3] += 1.5 * (label[sid] == "tumor")
        write_bag(tmp_path / "codes", sid, codes, None, formats=("pt",))
    df = analyze_sae(
        "c16",
        split_csv,
        tmp_path / "codes" / "pt_files",
        ref / "camelyon16_metadata.csv",
        tmp_path / "out",
        num_features=8,
    )
    assert df["unit_id"].iloc[0] == 3
    summary = (tmp_path / "out" / "c16" / "analysis" / "sae_analysis_summary.json").read_text()
    n_tumor = sum(label[s] == "tumor" for s in train)
    assert f'"n_tumor": {n_tumor}' in summary and f'"n_slides": {len(train)}' in summary
