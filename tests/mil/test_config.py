"""The typed MIL config: defaults are _base.yaml's, every shipped config builds,
unknown keys / wrong types / values outside the choices / model keys of another
model type are one ConfigError naming the dotted key (and the YAML file)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from sae1n.configs import PACKAGE_DIR, load_experiment
from sae1n.configs.schema import defaults, describe
from sae1n.errors import ConfigError
from sae1n.mil.config import (
    COMMON_MODEL_KEYS,
    MODEL_ALIASES,
    MODEL_KEYS,
    MILRunConfig,
    ModelConfig,
    as_mapping,
    build_mil_config,
    load_mil_config,
)

SHIPPED = sorted(p.stem for p in (PACKAGE_DIR / "mil").glob("*.yaml") if not p.stem.startswith("_"))


def _yaml(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def test_defaults_equal_base_yaml():
    base = OmegaConf.to_container(OmegaConf.load(PACKAGE_DIR / "mil" / "_base.yaml"))
    mine = defaults(MILRunConfig)
    assert mine.pop("exp_name") == "mil_experiment"  # load_experiment sets it from exp=NAME
    assert mine == base


def test_every_key_is_documented():
    rows = describe(MILRunConfig)
    assert len(rows) > 50
    assert [key for key, _, _, meaning in rows if not meaning] == []


@pytest.mark.parametrize("exp", SHIPPED)
def test_every_shipped_config_builds(exp):
    cfg = load_mil_config(exp)
    assert cfg.exp_name == exp
    assert cfg.model.canonical_type in MODEL_KEYS
    assert build_mil_config(as_mapping(cfg)) == cfg  # the written config.yaml reads back the same
    raw = load_experiment("mil", exp)
    assert cfg.optimizer.lr == raw.optimizer.lr and cfg.model.type == raw.model.type


def test_model_keys_match_the_model_signatures():
    from sae1n.mil import models

    assert set(MODEL_KEYS) == set(models.MODEL_TYPES) and MODEL_ALIASES == models.ALIASES
    for kind, cls in models.MODEL_TYPES.items():
        assert set(MODEL_KEYS[kind]) | {"drop_out", "act"} == models._init_params(cls), kind
    declared = {f.name for f in dataclasses.fields(ModelConfig)}
    assert declared == set(COMMON_MODEL_KEYS).union(*MODEL_KEYS.values())


def test_unknown_key_in_an_override_is_named_with_the_file():
    with pytest.raises(ConfigError, match=r"optimizer\.lrr \(did you mean optimizer\.lr\?\).*demo_maxmil\.yaml"):
        load_mil_config("demo_maxmil", ["+optimizer.lrr=0.1"])
    with pytest.raises(ConfigError, match=r"model\.hiden_dim \(did you mean model\.hidden_dim\?\)"):
        load_mil_config("demo_maxmil", ["+model.hiden_dim=32"])


def test_unknown_key_in_a_yaml_file_is_named_by_dotted_path(tmp_path):
    path = _yaml(tmp_path, "mine", "defaults:\n  - _base\nmodel:\n  type: max_mil\n  hiden_dim: 32\n")
    with pytest.raises(ConfigError, match=rf"model\.hiden_dim .*{path.name}"):
        load_mil_config("mine", search_dirs=[tmp_path])
    _yaml(tmp_path, "top", "defaults:\n  - _base\nmax_epoch: 3\n")
    with pytest.raises(ConfigError, match=r"max_epoch \(did you mean max_epochs\?\).*top\.yaml"):
        load_mil_config("top", search_dirs=[tmp_path])


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.gated=3", r"model\.gated.*expected true/false or null, got 3"),
        ("+model.hidden_dim=wide", r"model\.hidden_dim.*expected an integer or null, got 'wide'"),
        ("split_dir=null", r"split_dir.*expected a string, got None"),
        ("model.in_dim=wide", r"model\.in_dim.*expected an integer, auto or null, got 'wide'"),
    ],
)
def test_wrong_type_names_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_mil_config("demo_maxmil", [override])


def test_wrong_type_in_a_yaml_file(tmp_path):
    _yaml(tmp_path, "bad", "defaults:\n  - _base\npatience: ten\n")
    with pytest.raises(ConfigError, match=r"patience \(in .*bad\.yaml.*expected an integer, got 'ten'"):
        load_mil_config("bad", search_dirs=[tmp_path])


@pytest.mark.parametrize(
    "override, message",
    [
        ("compat=exact", "compat must be default or paper, not 'exact'"),
        ("preloading=maybe", "preloading must be yes, no or auto, not 'maybe'"),
        ("optimizer.type=rmsprop", "optimizer.type must be adam, adamw or sgd, not 'rmsprop'"),
        ("features.file_type=csv", "features.file_type must be h5, pt or sparse, not 'csv'"),
        ("model.type=resnet", "model.type must be max_mil, .* or mambamil, not 'resnet'"),
    ],
)
def test_values_outside_the_choices(override, message):
    with pytest.raises(ConfigError, match=message):
        load_mil_config("demo_maxmil", [override])


def test_choices_accept_aliases_and_yaml_booleans():
    cfg = load_mil_config("demo_maxmil", ["model.type=abmil", "model.gated=false", "preloading=no"])
    assert cfg.model.type == "abmil" and cfg.model.canonical_type == "att_mil"
    assert cfg.model.set_keys() == {
        "type": "att_mil", "in_dim": None, "drop_out": 0.25, "act": "relu", "gated": False
    }
    assert cfg.preloading == "no"  # YAML reads an unquoted no as false
    assert load_mil_config("demo_maxmil", ["preloading=yes"]).preloading == "yes"
    assert load_mil_config("demo_maxmil", ["features.file_type=null"]).features.file_type is None


def test_a_model_key_of_another_model_type_is_refused():
    with pytest.raises(ConfigError, match=r"model\.gated does not apply to model\.type=max_mil"):
        load_mil_config("demo_maxmil", ["model.gated=true"])
    with pytest.raises(ConfigError, match=r"model\.heads, model\.num_landmarks do not apply to model\.type=clam_sb"):
        load_mil_config("camelyon16_conch_transmil", ["model.type=clam_sb"])
    # null means "not set": switching the type back works with the other keys unset
    cfg = load_mil_config("camelyon16_conch_transmil", ["model.type=max_mil", "model.heads=null", "model.num_landmarks=null"])
    assert cfg.model.set_keys()["type"] == "max_mil" and "heads" not in cfg.model.set_keys()


def test_config_is_frozen_and_built_from_a_dict():
    cfg = build_mil_config({"max_epochs": 3, "model": {"type": "max_mil"}})
    assert cfg.max_epochs == 3 and cfg.model.in_dim == 512 and cfg.k == 5
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.max_epochs = 4
    with pytest.raises(ConfigError, match="unknown config keys epochs"):
        build_mil_config({"epochs": 3})


def test_train_mil_takes_a_typed_config_a_dictconfig_or_a_dict(tmp_path):
    from sae1n.mil import train_mil
    from tests.mil.conftest import make_cohort

    c = make_cohort(tmp_path, n_per_class=4, patches=(5, 10), n_val=1, n_test=1)
    ov = c.overrides(max_epochs=1, **{"+model.hidden_dim": 8})
    raw = load_experiment("mil", "demo_maxmil", ov)
    typed = train_mil(load_mil_config("demo_maxmil", ov))
    metrics = tmp_path / "output" / "mil" / "demo_maxmil" / "fold_0" / "metrics.json"
    stamp = metrics.stat().st_mtime_ns
    # the same settings as a dict and as a DictConfig: the same record, so the fold is skipped
    again = train_mil(OmegaConf.to_container(raw, resolve=True))
    pd.testing.assert_frame_equal(typed.astype(str), again.astype(str))
    train_mil(raw)
    assert metrics.stat().st_mtime_ns == stamp
    saved = OmegaConf.load(tmp_path / "output" / "mil" / "demo_maxmil" / "config.yaml")
    assert build_mil_config(saved) == build_mil_config(raw)


@pytest.mark.parametrize(
    "exp, overrides, recorded",
    [
        # fingerprints written by train-mil before the typed config (commit 3e0627b)
        ("demo_maxmil", ["+model.hidden_dim=16", "max_epochs=3"], "63d32805bc0dcc0d"),
        ("camelyon16_conch_clam_sb", [], "e6464cdeeacc8ce6"),
        ("camelyon16_conch_sae_1n_maxmil", [], "92176c28166169ef"),
    ],
)
def test_fold_fingerprint_is_unchanged_so_old_outputs_stay_current(exp, overrides, recorded):
    from sae1n.mil.trainer import MILTrainer

    trainer = MILTrainer.__new__(MILTrainer)  # only the settings the record hashes
    trainer.cfg = load_mil_config(exp, overrides)
    trainer.model_cfg, trainer.in_dim, trainer.units = trainer.cfg.model.set_keys(), 8, None
    assert trainer.fingerprint(0, {"train": ["a", "b"], "val": ["c"], "test": ["d"]}) == recorded
