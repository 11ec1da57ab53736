"""`sae1n config list|show`: the exp names and a resolved config."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from sae1n.cli import main
from sae1n.configs.commands import resolve_kind
from sae1n.errors import ConfigError


def test_list_names_both_kinds(capsys):
    assert main(["config", "list"]) == 0
    out = capsys.readouterr().out
    assert "camelyon16_conch_0" in out and "camelyon16_conch_abmil" in out


def test_show_applies_overrides(capsys):
    assert main(["config", "show", "exp=demo", "training.lr=0.01"]) == 0
    cfg = OmegaConf.create(capsys.readouterr().out)
    assert cfg.training.lr == 0.01 and cfg.sae.top_k == 8


def test_unknown_exp_is_a_clear_error(capsys):
    assert main(["config", "show", "exp=nope"]) == 1
    assert "no experiment config named 'nope'" in capsys.readouterr().err
    with pytest.raises(ConfigError):
        resolve_kind("nope", None)
    assert resolve_kind("demo_abmil", None) == "mil"


def test_show_checks_the_config_as_training_would(capsys):
    assert main(["config", "show", "exp=demo_maxmil", "model.gated=true"]) == 1
    assert "model.gated does not apply to model.type=max_mil" in capsys.readouterr().err
    assert main(["config", "show", "exp=demo", "sae.b_dec_init=average"]) == 1
    assert "sae.b_dec_init must be zeros, mean or median, not 'average'" in capsys.readouterr().err
