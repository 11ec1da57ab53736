"""Provenance of SAE checkpoints: what made the weights travels in their
metadata, and an existing run is never resumed with other settings or other
data (the error names what differs, nothing on disk changes)."""

from __future__ import annotations

import stat

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sae1n.errors import ConfigError
from sae1n.io import read_provenance, write_bag
from sae1n.sae.data import prepare_data
from sae1n.sae.train import train_sae

from .conftest import make_planted, small_config

OVER = {"training.num_epochs": 1, "training.validation_freq": 10, "training.checkpoint_freq": 20}


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_checkpoints_carry_settings_and_input_identity(planted, tmp_path):
    cfg = small_config(planted, tmp_path, **OVER, **{"checkpoint.paper_pt": True})
    exp = train_sae(cfg)
    ckpt = exp / "checkpoints"
    prov = read_provenance(ckpt / "sae_best.safetensors")
    assert prov.kind == "sae-checkpoint"
    assert prov.settings["sae"]["top_k"] == 3 and prov.settings["seed"] == 42
    assert "checkpoint_freq" not in prov.settings["training"]  # bookkeeping is not a setting
    store = prepare_data(cfg).store
    assert prov.inputs["features"]["store_fingerprint"] == store.fingerprint
    assert prov.inputs["features"]["train_slides"] == 7
    assert prov.inputs["split_csv"]["name"] == "splits_0.csv" and "sha256" in prov.inputs["split_csv"]
    for name in ("sae_final.safetensors", "sae_20.safetensors"):
        assert read_provenance(ckpt / name).matches(prov)
    # the paper's files beside ours: plain state dicts, same tensors, mode 0644
    for stem in ("sae_best", "sae_20", "sae_final"):
        pt = ckpt / f"{stem}.pt"
        state = torch.load(pt, weights_only=True)
        ours = load_file(str(ckpt / f"{stem}.safetensors"))
        assert state.keys() == ours.keys()
        assert all(torch.equal(state[k], ours[k]) for k in ours)
        assert _mode(pt) == 0o644
    for name in ("sae_best.safetensors", "resume_state.pt"):
        assert _mode(ckpt / name) == 0o644


def test_changed_setting_refuses_to_resume_and_names_it(planted, tmp_path):
    exp = train_sae(small_config(planted, tmp_path, **OVER))
    final = exp / "checkpoints" / "sae_final.safetensors"
    before = final.stat().st_mtime_ns
    with pytest.raises(ConfigError, match=r"settings\.sae\.top_k: 3 -> 2"):
        train_sae(small_config(planted, tmp_path, **OVER, **{"sae.top_k": 2}))
    with pytest.raises(ConfigError, match=r"settings\.training\.lr: 0\.01 -> 0\.02"):
        train_sae(small_config(planted, tmp_path, **OVER, **{"training.lr": 0.02}))
    assert final.stat().st_mtime_ns == before
    # bookkeeping keys may change: the finished run is simply current
    train_sae(small_config(planted, tmp_path, **{**OVER, "training.validation_freq": 7}))
    assert final.stat().st_mtime_ns == before


def test_changed_features_refuse_to_resume(tmp_path):
    data = make_planted(tmp_path / "d", n_slides=5, patches=100)
    exp = train_sae(small_config(data, tmp_path / "out", **OVER))
    final = exp / "checkpoints" / "sae_final.safetensors"
    before = final.stat().st_mtime_ns
    rng = np.random.default_rng(1)
    write_bag(
        data.feature_dir,
        "slide_04",
        rng.normal(size=(100, 32)).astype(np.float32),
        np.zeros((100, 2), np.int64),
    )
    with pytest.raises(ConfigError, match=r"inputs\.features\.store_fingerprint"):
        train_sae(small_config(data, tmp_path / "out", **OVER))
    assert final.stat().st_mtime_ns == before
    # a fresh start on the new features is one flag away
    train_sae(small_config(data, tmp_path / "out", **OVER, **{"training.resume": False}))
    assert read_provenance(final).inputs["features"]["store_fingerprint"] == (
        prepare_data(small_config(data, tmp_path / "out")).store.fingerprint
    )
