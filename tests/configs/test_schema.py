"""Typed configs: unknown keys by name, types, choices, defaults, docs rows."""

from dataclasses import FrozenInstanceError, dataclass

import pytest
from omegaconf import OmegaConf

from sae1n.configs.schema import build, defaults, describe, section, setting, to_dict
from sae1n.errors import ConfigError


@dataclass(frozen=True)
class Inner:
    lr: float = setting(1e-4, "learning rate")
    kind: str = setting("adam", "optimiser", choices=("adam", "sgd"))


@dataclass(frozen=True)
class Outer:
    name: str = setting(help="run name")
    epochs: int = setting(10, "epochs")
    flag: bool = setting(False, "a switch")
    sizes: tuple[int, ...] = setting([1, 2], "sizes")
    col: str | None = setting(None, "optional column")
    extra: dict = setting({}, "free-form mapping")
    opt: Inner = section(Inner, "optimiser settings")


def test_build_fills_defaults_and_converts_types():
    cfg = build(Outer, OmegaConf.create({"name": "a", "epochs": 3.0, "opt": {"lr": 1}}))
    assert cfg == Outer(name="a", epochs=3, opt=Inner(lr=1.0))
    assert isinstance(cfg.epochs, int) and isinstance(cfg.opt.lr, float)
    assert cfg.sizes == (1, 2)
    with pytest.raises(FrozenInstanceError):
        cfg.epochs = 4


def test_unknown_keys_are_named_with_their_dotted_path_and_a_suggestion():
    with pytest.raises(ConfigError, match=r"opt\.lrr \(did you mean opt\.lr\?\) \(in x\.yaml\)"):
        build(Outer, {"name": "a", "opt": {"lrr": 1}}, where=" (in x.yaml)")
    with pytest.raises(ConfigError, match=r"unknown config keys epoch \(did you mean epochs\?\), bogus;"):
        build(Outer, {"name": "a", "epoch": 1, "bogus": 2})
    # every level at once, in one error
    with pytest.raises(ConfigError, match=r"unknown pipeline keys bogus, opt\.lrr .*, opt\.zzz;"):
        build(Outer, {"name": "a", "bogus": 1, "opt": {"lrr": 1, "zzz": 2}}, label="pipeline")


@pytest.mark.parametrize(
    "mapping, message",
    [
        ({"name": "a", "epochs": 2.5}, "epochs: expected an integer, got 2.5"),
        ({"name": "a", "epochs": True}, "epochs: expected an integer, got True"),
        ({"name": "a", "flag": "yes"}, "flag: expected true/false, got 'yes'"),
        ({"name": "a", "sizes": "12"}, "sizes: expected a list"),
        ({"name": "a", "sizes": [1, "x"]}, r"sizes\[1\]: expected an integer"),
        ({"name": "a", "opt": {"kind": "rmsprop"}}, "opt.kind must be adam or sgd, not 'rmsprop'"),
        ({"name": "a", "opt": 3}, "opt must be a mapping"),
        ({}, "name is not set"),
    ],
)
def test_bad_values_are_one_config_error_naming_the_key(mapping, message):
    with pytest.raises(ConfigError, match=message):
        build(Outer, mapping)


def test_defaults_to_dict_and_describe_agree():
    assert defaults(Outer) == {
        "epochs": 10,
        "flag": False,
        "sizes": [1, 2],
        "col": None,
        "extra": {},
        "opt": {"lr": 1e-4, "kind": "adam"},
    }
    cfg = build(Outer, {"name": "n"})
    assert to_dict(cfg) == {"name": "n", **defaults(Outer)}
    rows = {key: (default, kind, meaning) for key, default, kind, meaning in describe(Outer)}
    assert rows["name"] == ("(required)", "a string", "run name")
    assert rows["opt.kind"] == ('"adam"', "a string", "optimiser (one of adam, sgd)")
    assert rows["col"][1] == "a string or null"
    assert list(rows) == ["name", "epochs", "flag", "sizes", "col", "extra", "opt.lr", "opt.kind"]
