import json
import logging

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from sae1n.errors import InputFileError
from sae1n.mil import MODEL_TYPES, load_mil_checkpoint, train_mil
from tests.mil.conftest import (
    PLANTED_FEATURE,
    PLANTED_UNIT,
    make_cohort,
    make_sae_cohort,
    write_splits,
)

# small hidden sizes keep every model's CPU run to a second or two
SMALL = {"+model.hidden_dim": 32, "max_epochs": 3, "optimizer.lr": 0.001}
PLANTED = {"+model.hidden_dim": 64, "max_epochs": 15, "optimizer.lr": 0.0005}


@pytest.mark.parametrize("model_type", sorted(MODEL_TYPES))
def test_every_model_trains_and_writes_outputs(tmp_path, model_type):
    c = make_cohort(tmp_path, n_per_class=6, patches=(5, 30), n_val=2, n_test=2)
    extra = {"+model.layers": 1, "+model.rate": 3} if model_type == "mamba_mil" else {}
    if model_type == "trans_mil":
        extra = {"+model.num_landmarks": 8}  # bags above 8 patches take the Nystrom path
    summary = train_mil(c.config(**SMALL, **extra, **{"model.type": model_type}))
    out = tmp_path / "output" / "mil" / "camelyon16_conch_maxmil"
    assert list(summary.columns[:5]) == ["folds", "test_auc", "val_auc", "test_acc", "val_acc"]
    assert list(summary["folds"]) == [0, "mean", "std"]
    assert {"test_bacc", "test_f1", "val_bacc", "val_f1"} <= set(summary.columns)
    on_disk = pd.read_csv(out / "summary.csv")
    assert list(on_disk["folds"].astype(str)) == ["0", "mean", "std"]
    assert json.loads((out / "summary.json").read_text())["model_type"] == model_type
    fold = out / "fold_0"
    log = pd.read_csv(fold / "log.csv")
    assert len(log) == 3 and np.isfinite(log["train_loss"]).all()
    preds = pd.read_csv(fold / "predictions_test.csv")
    assert sorted(preds["slide_id"]) == sorted(c.splits["test"])
    assert np.allclose(preds[["prob_0", "prob_1"]].sum(axis=1), 1, atol=1e-5)
    for sid in c.splits["test"] + c.splits["val"]:
        with h5py.File(fold / "patch_scores" / f"{sid}.h5") as f:
            with h5py.File(c.data_dir / c.backbone / "h5_files" / f"{sid}.h5") as g:
                assert np.array_equal(f["coords"][()], g["coords"][()])
            assert f["scores"].dtype == np.float32 and np.isfinite(f["scores"][()]).all()
        # provenance (issue 13): the patch scores carry the fold's record
        from sae1n.io.provenance import read_provenance

        assert read_provenance(fold / "patch_scores" / f"{sid}.h5") == read_provenance(fold / "metrics.json")
    # the checkpoint alone reproduces the test predictions
    model, info = load_mil_checkpoint(fold / "checkpoint_best.safetensors")
    assert info["model"]["type"] == model_type
    sid = preds["slide_id"][0]
    with h5py.File(c.data_dir / c.backbone / "h5_files" / f"{sid}.h5") as g:
        x = torch.from_numpy(g["features"][()])
    with torch.no_grad():
        prob = torch.softmax(model(x).logits, -1)[0, 1].item()
    assert prob == pytest.approx(preds["prob_1"][0], abs=1e-5)


@pytest.mark.parametrize("model_type", ["max_mil", "att_mil"])
def test_planted_feature_is_learned(tmp_path, model_type):
    c = make_cohort(tmp_path, n_per_class=25)
    summary = train_mil(c.config(**PLANTED, **{"model.type": model_type}))
    assert summary.loc[0, "test_auc"] > 0.95
    # the per-patch scores single out the planted patches of tumour slides
    from sklearn.metrics import roc_auc_score

    scores, planted = [], []
    for sid in (s for s in c.splits["test"] if c.labels[s] == 1):
        with h5py.File(
            tmp_path / "output/mil/camelyon16_conch_maxmil/fold_0/patch_scores" / f"{sid}.h5"
        ) as f:
            scores.append(f["scores"][()])
        with h5py.File(c.data_dir / c.backbone / "h5_files" / f"{sid}.h5") as g:
            planted.append(g["features"][:, PLANTED_FEATURE] > 2.5)
    assert roc_auc_score(np.concatenate(planted), np.concatenate(scores)) > 0.9


def test_sae_1n_maxmil_uses_the_top_neuron(tmp_path):
    c = make_sae_cohort(tmp_path)
    cfg = c.config(
        "camelyon16_conch_sae_1n_maxmil",
        **PLANTED,
        **{"features.sae_unit_summary_path": c.ranking_csv},
    )
    summary = train_mil(cfg)
    assert summary.loc[0, "test_auc"] > 0.95
    info = json.loads(
        (tmp_path / "output/mil/camelyon16_conch_sae_1n_maxmil/summary.json").read_text()
    )
    assert info["selected_units"] == [PLANTED_UNIT] and info["in_dim"] == 1


def test_deterministic_and_resumable(tmp_path, caplog):
    c = make_cohort(tmp_path / "a", n_per_class=6, patches=(5, 15), n_val=2, n_test=2)
    cfg = c.config(**SMALL)
    first = train_mil(cfg)
    pred_path = tmp_path / "a/output/mil/camelyon16_conch_maxmil/fold_0/predictions_test.csv"
    preds = pd.read_csv(pred_path)
    again = train_mil(c.config(**SMALL, results_dir_base=tmp_path / "b"))
    other = pd.read_csv(tmp_path / "b/mil/camelyon16_conch_maxmil/fold_0/predictions_test.csv")
    pd.testing.assert_frame_equal(preds, other)
    pd.testing.assert_frame_equal(first, again)
    # a re-run with the same settings skips the finished fold
    stamp = pred_path.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="sae1n.mil.train"):
        resumed = train_mil(cfg)
    assert "already trained" in caplog.text and pred_path.stat().st_mtime_ns == stamp
    pd.testing.assert_frame_equal(first.astype(str), resumed.astype(str))
    # changed settings refuse (issue 13: nothing is replaced silently) ...
    from sae1n.io.provenance import StaleOutputError

    with pytest.raises(StaleOutputError, match="--overwrite"):
        train_mil(c.config(**{**SMALL, "max_epochs": 2}))
    assert pred_path.stat().st_mtime_ns == stamp
    # ... and retrain with overwrite
    train_mil(c.config(**{**SMALL, "max_epochs": 2}), overwrite=True)
    assert pred_path.stat().st_mtime_ns != stamp


def test_missing_and_empty_slides(tmp_path, caplog):
    c = make_cohort(tmp_path, n_per_class=6, patches=(5, 15), n_val=2, n_test=2)
    splits = {k: list(v) for k, v in c.splits.items()}
    splits["train"].append("ghost_slide")
    write_splits(c.split_dir, splits)
    pd.concat(
        [
            pd.read_csv(c.csv_path),
            pd.DataFrame(
                [{"case_id": "g", "slide_id": "ghost_slide", "label": "tumor", "isup_grade": 1}]
            ),
        ]
    ).to_csv(c.csv_path, index=False)
    with pytest.raises(InputFileError, match="ghost_slide.*--allow_missing"):
        train_mil(c.config(**SMALL))
    # an empty bag is skipped with a warning; --allow_missing skips the ghost
    from sae1n.io import write_bag

    empty = c.splits["train"][0]
    write_bag(
        c.data_dir / c.backbone, empty, np.zeros((0, 8), np.float32), np.zeros((0, 2), np.int64)
    )
    with caplog.at_level(logging.WARNING):
        summary = train_mil(c.config(**SMALL), allow_missing=True)
    assert "ghost_slide" in caplog.text and f"{empty} has no patches" in caplog.text
    assert np.isfinite(summary.loc[0, "test_acc"])


def test_unknown_label_names_the_csv(tmp_path):
    c = make_cohort(tmp_path, n_per_class=3, n_val=1, n_test=1)
    df = pd.read_csv(c.csv_path)
    df.loc[0, "label"] = "benign"
    df.to_csv(c.csv_path, index=False)
    with pytest.raises(InputFileError, match=r"dataset.csv.*unknown label 'benign'"):
        train_mil(c.config(**SMALL))


def test_multiclass_isup_with_kappa(tmp_path):
    c = make_cohort(tmp_path, n_per_class=5, n_classes=4, n_val=1, n_test=2, patches=(5, 15))
    summary = train_mil(c.config(**SMALL, n_classes=4))
    assert {"test_qwk", "val_qwk"} <= set(summary.columns)
    preds = pd.read_csv(tmp_path / "output/mil/camelyon16_conch_maxmil/fold_0/predictions_test.csv")
    assert [f"prob_{i}" for i in range(4)] == list(preds.columns[3:])
    assert set(preds["label"]) == {0, 1, 2, 3}


def test_early_stopping_rule():
    from sae1n.mil.loops import EarlyStopping

    stopper = EarlyStopping(patience=3, stop_epoch=5)
    best = [
        stopper.step(loss, epoch) for epoch, loss in enumerate([1.0, 0.9, 0.95, 0.95, 0.95, 0.95])
    ]
    assert best == [True, True, False, False, False, False]
    assert not stopper.stop  # patience ran out, but not after stop_epoch yet
    stopper.step(0.95, 6)
    assert stopper.stop


def test_best_validation_epoch_is_kept(tmp_path):
    c = make_cohort(tmp_path, n_per_class=6, patches=(5, 15), n_val=3, n_test=2)
    cfg = c.config(
        **{**SMALL, "max_epochs": 12, "early_stopping": True, "patience": 2, "stop_epoch": 3}
    )
    train_mil(cfg)
    fold = tmp_path / "output/mil/camelyon16_conch_maxmil/fold_0"
    log = pd.read_csv(fold / "log.csv")
    preds = pd.read_csv(fold / "predictions_val.csv")
    probs = preds[["prob_0", "prob_1"]].to_numpy()[np.arange(len(preds)), preds["label"]]
    # the saved weights reproduce the lowest validation loss of the log
    assert -np.log(probs).mean() == pytest.approx(log["val_loss"].min(), rel=1e-4)
