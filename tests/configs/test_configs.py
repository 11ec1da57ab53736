import pytest

from sae1n.configs import apply_overrides, load_experiment, split_exp_args
from sae1n.errors import ConfigError


@pytest.fixture
def exp_dir(tmp_path, monkeypatch):
    d = tmp_path / "experiments" / "sae" / "exp"
    d.mkdir(parents=True)
    (d / "_base.yaml").write_text("seed: 42\ntraining:\n  lr: 0.001\n  num_epochs: 100\n")
    (d / "mine.yaml").write_text("defaults: [_base]\ntraining:\n  num_epochs: 5\n")
    (d / "loop.yaml").write_text("defaults: [loop]\n")
    monkeypatch.chdir(tmp_path)
    return d


def test_inheritance_and_overrides(exp_dir):
    cfg = load_experiment("sae", "mine", ["training.lr=0.01", "+extra.flag=true"])
    assert cfg.seed == 42 and cfg.training.num_epochs == 5
    assert cfg.training.lr == 0.01 and cfg.extra.flag is True
    assert cfg.exp_name == "mine"


def test_unknown_key_and_unknown_exp(exp_dir):
    with pytest.raises(ConfigError, match="unknown config key 'training.lrr'.*did you mean training.lr"):
        load_experiment("sae", "mine", ["training.lrr=1"])
    with pytest.raises(ConfigError, match=r"'training.zzz'.*spell it \+training.zzz=1 to add"):
        load_experiment("sae", "mine", ["training.zzz=1"])
    with pytest.raises(ConfigError, match="no sae config named 'nope'.*mine"):
        load_experiment("sae", "nope")
    with pytest.raises(ConfigError, match="inherits from itself"):
        load_experiment("sae", "loop")


def test_split_exp_args():
    assert split_exp_args(["exp=a", "x.y=1"]) == ("a", ["x.y=1"])
    with pytest.raises(ConfigError):
        apply_overrides(load_cfg := __import__("omegaconf").OmegaConf.create({}), ["novalue"])
    del load_cfg
