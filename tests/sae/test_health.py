"""Dictionary health: dead / dense fractions and the firing-frequency
histogram in metrics.csv and the train log, the end-of-training warning, and
the data-initialised decoder bias that keeps the demo's latents alive."""

from __future__ import annotations

import logging

import pandas as pd
import pytest
import torch

from sae1n.sae.loggers import validation_line, warn_if_dead
from sae1n.sae.metrics import FREQ_BIN_NAMES, frequency_histogram
from sae1n.sae.train import train_sae

from .conftest import small_config


def test_frequency_histogram_bins():
    fired = torch.tensor([0, 0, 5, 50, 500, 5000, 50000, 99999])
    h = frequency_histogram(fired, 100000)
    assert list(h) == list(FREQ_BIN_NAMES)
    assert h == {
        "never": 2 / 8,
        "lt_1e-4": 1 / 8,
        "1e-4_1e-3": 1 / 8,
        "1e-3_1e-2": 1 / 8,
        "1e-2_1e-1": 1 / 8,
        "ge_1e-1": 2 / 8,
    }


def test_warning_only_above_a_quarter_dead(caplog):
    caplog.set_level(logging.WARNING, logger="sae1n.sae.train")
    assert not warn_if_dead("run", {"val_dead_frac": 0.25})
    assert warn_if_dead("run", {"val_dead_frac": 0.4})
    assert "40.0% of the latents are dead" in caplog.text
    assert "validation set" in caplog.text
    caplog.clear()
    assert warn_if_dead("run", {"train_dead_frac": 0.5})  # no validation set
    assert "last n_batches_to_dead training batches" in caplog.text
    assert not warn_if_dead("run", None)


def test_metrics_and_log_report_health_and_warn_when_mostly_dead(planted, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="sae1n.sae.train")
    # 256 latents, one per patch, for 48 planted atoms: most stay dead
    cfg = small_config(
        planted,
        tmp_path,
        **{
            "sae.model_type": "TopKSAE",
            "sae.top_k": 1,
            "sae.dict_size_ratio": 8,
            "training.num_epochs": 1,
            "training.validation_freq": 10,
            "training.tensorboard": False,
        },
    )
    exp = train_sae(cfg)
    m = pd.read_csv(exp / "logs" / "metrics.csv")
    for name in FREQ_BIN_NAMES:
        assert f"val_freq_{name}" in m.columns
    last = m.iloc[-1]
    assert sum(last[f"val_freq_{n}"] for n in FREQ_BIN_NAMES) == pytest.approx(1.0)
    assert last.val_freq_never == pytest.approx(last.val_dead_frac)
    assert 0.25 < last.val_dead_frac and "train_dead_frac" in m.columns
    lines = [r.getMessage() for r in caplog.records]
    assert any("firing freq: never" in ln and "dead" in ln and "dense" in ln for ln in lines)
    assert any("of the latents are dead at the end of training" in ln for ln in lines)


def test_healthy_run_has_no_warning(planted, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="sae1n.sae.train")
    exp = train_sae(small_config(planted, tmp_path, **{"training.num_epochs": 6}))
    last = pd.read_csv(exp / "logs" / "metrics.csv").iloc[-1]
    assert last.val_dead_frac <= 0.25
    assert "dead at the end" not in caplog.text


def test_b_dec_starts_at_the_train_mean(planted, tmp_path):
    from sae1n.sae.checkpoints import load_sae
    from sae1n.sae.data import prepare_data

    cfg = small_config(planted, tmp_path, **{"training.num_tokens": 1, "sae.b_dec_init": "mean"})  # one step
    exp = train_sae(cfg)
    data = prepare_data(cfg)
    mean = data.gather(data.train_rows).mean(0)
    b_dec = load_sae(exp, which="final").b_dec.detach()
    # one Adam step of lr 1e-2 moves each coordinate by at most about lr
    assert float((b_dec - mean).abs().max()) < 0.02
    zeros = train_sae(
        small_config(planted, tmp_path / "z", **{"training.num_tokens": 1, "sae.b_dec_init": "zeros"})
    )
    assert float(load_sae(zeros, which="final").b_dec.detach().abs().max()) < 0.02


def test_validation_line_formats_a_row():
    row = {
        "step": 5,
        "val_loss": 0.5,
        "val_fvu": 0.1,
        "val_l0_norm": 8.0,
        "val_dead_frac": 0.05,
        "val_dense_frac": 0.01,
        "tokens_per_s": 1000.0,
        **{f"val_freq_{n}": 1 / 6 for n in FREQ_BIN_NAMES},
    }
    line = validation_line("demo", row)
    assert line.startswith("demo step 5, val loss 0.5, FVU 0.1000, L0 8.0, dead 5.0%, dense 1.0%")
    assert "firing freq: never 16.7% | lt_1e-4 16.7%" in line


def test_health_summary_for_the_demo_line(tmp_path):
    from sae1n.sae.loggers import health_summary

    path = tmp_path / "metrics.csv"
    assert health_summary(path) is None
    pd.DataFrame([{"step": 1, "val_dead_frac": 0.5}, {"step": 2, "val_dead_frac": 0.031, "val_dense_frac": 0.2, "val_fvu": 0.111}]).to_csv(path, index=False)
    assert health_summary(path) == "3.1% dead latents (< 10%), 20.0% dense, FVU 0.111"
    pd.DataFrame([{"step": 1, "val_dead_frac": 0.871}]).to_csv(path, index=False)
    assert health_summary(path).startswith("87.1% dead latents (over 25%")
