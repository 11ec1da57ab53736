"""Training: recovery of planted structure, outputs, exact resumption,
sweeps, and clear errors on bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from sae1n.errors import ConfigError, InputFileError
from sae1n.sae.checkpoints import load_sae
from sae1n.sae.config import expand_sweep, load_sae_config
from sae1n.sae.train import batch_rows, epoch_permutation, train_sae

from .conftest import N_ATOMS, make_planted, small_config


def test_training_recovers_planted_atoms(planted, tmp_path):
    threads = torch.get_num_threads()
    exp = train_sae(small_config(planted, tmp_path, **{"training.num_epochs": 20}))
    assert torch.get_num_threads() == threads
    m = pd.read_csv(exp / "logs" / "metrics.csv")
    for col in (
        "step",
        "train_loss",
        "val_loss",
        "val_mse",
        "val_fvu",
        "val_explained_variance",
        "val_l0_norm",
        "val_dead_frac",
        "val_dense_frac",
    ):
        assert col in m.columns
    last = m.iloc[-1]
    assert last.step == 20 * 22
    # stated bounds: FVU < 0.1; at least 90% of the planted atoms found by a
    # decoder row (cosine > 0.9); at most 30% of the latents dead (64 latents
    # for 48 atoms: 25% are surplus)
    assert last.val_fvu < 0.1
    model = load_sae(exp)
    w = model.W_dec.detach().numpy()
    best_cos = (planted.atoms @ w.T).max(1)
    assert (best_cos > 0.9).mean() >= 0.9
    assert model.dict_size - N_ATOMS == 16
    assert last.val_dead_frac <= 0.3
    assert abs(last.val_l0_norm - 3) < 1.0  # the learned threshold gives about k per patch
    for name in (
        "sae_best.safetensors",
        "config_best.json",
        "sae_final.safetensors",
        "config_final.json",
        "sae_400.safetensors",
        "resume_state.pt",
    ):
        assert (exp / "checkpoints" / name).is_file(), name


def _weights(exp, name="sae_final.safetensors"):
    return load_file(str(exp / "checkpoints" / name))


def test_resume_after_crash_is_bit_identical(planted, tmp_path):
    over = {"training.num_epochs": 2, "training.validation_freq": 10, "training.checkpoint_freq": 0}
    full = train_sae(small_config(planted, tmp_path / "a", **over))

    def crash(step):
        if step == 23:
            raise RuntimeError("power cut")

    cfg = small_config(planted, tmp_path / "b", **over)
    with pytest.raises(RuntimeError, match="power cut"):
        train_sae(cfg, callbacks=[crash])
    state = torch.load(
        tmp_path / "b" / "toy" / "checkpoints" / "resume_state.pt", weights_only=True
    )
    assert state["step"] == 20  # the last validation; steps 21-23 are replayed
    resumed = train_sae(small_config(planted, tmp_path / "b", **over))
    a, b = _weights(full), _weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ma, mb = (
        pd.read_csv(full / "logs" / "metrics.csv"),
        pd.read_csv(resumed / "logs" / "metrics.csv"),
    )
    assert list(ma.step) == list(mb.step)
    np.testing.assert_array_equal(ma.val_loss.to_numpy(), mb.val_loss.to_numpy())
    # a finished run is not trained again
    before = (resumed / "checkpoints" / "sae_final.safetensors").stat().st_mtime_ns
    train_sae(small_config(planted, tmp_path / "b", **over))
    assert (resumed / "checkpoints" / "sae_final.safetensors").stat().st_mtime_ns == before


def test_keyboard_interrupt_saves_state_and_resume_refuses_changed_settings(planted, tmp_path):
    over = {"training.num_epochs": 1, "training.validation_freq": 0, "training.checkpoint_freq": 0}

    def stop(step):
        if step == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_sae(small_config(planted, tmp_path, **over), callbacks=[stop])
    state = torch.load(tmp_path / "toy" / "checkpoints" / "resume_state.pt", weights_only=True)
    assert state["step"] == 7
    with pytest.raises(ConfigError, match="different settings"):
        train_sae(small_config(planted, tmp_path, **over, **{"sae.top_k": 2}))
    exp = train_sae(
        small_config(planted, tmp_path, **over, **{"sae.top_k": 2, "training.resume": False})
    )
    assert (exp / "checkpoints" / "sae_final.safetensors").is_file()


def test_sweep_trains_each_config_like_a_single_run(planted, tmp_path):
    over = {"training.num_epochs": 1, "training.validation_freq": 10}
    cfg = small_config(planted, tmp_path / "sweep", **over)
    cfg.sweep = OmegaConf.create({"sae": {"top_k": [2, 3], "dict_size_ratio": [2]}})
    exp = train_sae(cfg)
    tags = sorted(p.name for p in (exp / "sweep").iterdir())
    assert tags == ["top_k-2_dict_size_ratio-2", "top_k-3_dict_size_ratio-2"]
    single = train_sae(small_config(planted, tmp_path / "single", **over, **{"sae.top_k": 2}))
    a = _weights(exp / "sweep" / "top_k-2_dict_size_ratio-2")
    b = _weights(single)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for tag in tags:
        assert (exp / "sweep" / tag / "logs" / "metrics.csv").is_file()
        assert (exp / "sweep" / tag / "checkpoints" / "sae_best.safetensors").is_file()


def test_sweep_config_parsing():
    cfg = load_sae_config(
        "camelyon16_conch_0",
        ["training.lr=3e-4", "sweep.sae.top_k=[8,16,32]", "sweep.sae.dict_size_ratio=[2,4,8]"],
    )
    runs = expand_sweep(cfg)
    assert len(runs) == 9 and cfg.training.lr == 3e-4
    assert {(r.sae.top_k, r.sae.dict_size_ratio) for _, r in runs} == {
        (k, e) for k in (8, 16, 32) for e in (2, 4, 8)
    }
    assert all(r.training.lr == 3e-4 for _, r in runs)
    listed = load_sae_config(
        "camelyon16_conch_0", ["sweep=[{sae: {top_k: 8}}, {sae: {top_k: 32, l1_coeff: 0.1}}]"]
    )
    assert [r.sae.top_k for _, r in expand_sweep(listed)] == [8, 32]
    with pytest.raises(ConfigError, match="cannot vary"):
        expand_sweep(load_sae_config("camelyon16_conch_0", ["sweep.training.batch_size=[1,2]"]))
    with pytest.raises(ConfigError, match="not a config key"):
        expand_sweep(load_sae_config("camelyon16_conch_0", ["sweep.sae.top_kk=[1,2]"]))


def test_act_size_mismatch_names_a_feature_file(planted, tmp_path):
    with pytest.raises(
        InputFileError, match=r"slide_\d+\.h5.*feature dimension 32 differs from sae.act_size=512"
    ):
        train_sae(small_config(planted, tmp_path, **{"sae.act_size": 512}))


def test_missing_slides_and_bad_split(planted, tmp_path):
    split = tmp_path / "split.csv"
    pd.DataFrame({"train": ["slide_03", "ghost_slide"], "val": ["slide_00", None]}).to_csv(split)
    with pytest.raises(InputFileError, match="ghost_slide"):
        train_sae(small_config(planted, tmp_path, **{"data.split_csv_path": split}))
    exp = train_sae(
        small_config(
            planted,
            tmp_path,
            **{"data.split_csv_path": split, "data.allow_missing": True, "training.num_epochs": 1},
        )
    )
    assert (exp / "checkpoints" / "sae_final.safetensors").is_file()
    with pytest.raises(InputFileError, match="split file not found"):
        train_sae(
            small_config(planted, tmp_path, **{"data.split_csv_path": str(tmp_path / "nope.csv")})
        )


def test_nan_features_are_reported_with_the_file(tmp_path):
    data = make_planted(tmp_path / "d", n_slides=4, patches=20)
    from sae1n.io import write_bag

    x = np.ones((5, 32), dtype=np.float32)
    x[2, 3] = np.nan
    import h5py

    write_bag(
        data.feature_dir, "slide_03", np.zeros((5, 32), np.float32), np.zeros((5, 2), np.int64)
    )
    with h5py.File(data.feature_dir / "h5_files" / "slide_03.h5", "r+") as f:
        f["features"][...] = x
    with pytest.raises(InputFileError, match=r"slide_03\.h5.*NaN"):
        train_sae(small_config(data, tmp_path / "out"))


def test_epoch_order_is_a_seeded_permutation_and_shards_by_rank():
    a, b = epoch_permutation(100, 42, 3), epoch_permutation(100, 42, 3)
    assert np.array_equal(a, b) and sorted(a) == list(range(100))
    assert not np.array_equal(a, epoch_permutation(100, 42, 4))
    full = batch_rows(a, 1, 32)
    shards = [batch_rows(a, 1, 32, rank=r, world_size=4) for r in range(4)]
    assert sorted(np.concatenate(shards)) == sorted(full)


def test_cli_train_sae(planted, tmp_path, monkeypatch):
    from sae1n.cli import main

    cfg = small_config(planted, tmp_path, **{"training.num_epochs": 1})
    cfg.pop("exp_name")
    yaml_path = tmp_path / "my_exp.yaml"
    yaml_path.write_text(OmegaConf.to_yaml(cfg))
    monkeypatch.chdir(tmp_path)
    assert main(["train-sae", f"exp={yaml_path}", "training.validation_freq=5"]) == 0
    assert (tmp_path / "my_exp" / "checkpoints" / "sae_best.safetensors").is_file()
    assert main(["train-sae", f"exp={yaml_path}", "sae.no_such_key=1"]) == 1


def test_demo_config_takes_act_size_from_the_features(planted, tmp_path):
    from sae1n.configs import load_experiment

    cfg = load_experiment(
        "sae",
        "demo",
        [
            f"data.feature_dir={planted.feature_dir}",
            f"data.split_csv_path={planted.split_csv}",
            f"output_dir={tmp_path}",
            "training.num_epochs=1",
            "training.num_threads=1",
        ],
    )
    assert cfg.sae.act_size is None
    exp = train_sae(cfg)
    assert load_sae(exp).act_size == 32 and exp.name == "demo"
