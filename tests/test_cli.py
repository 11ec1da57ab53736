import subprocess
import sys

import pytest

from sae1n.cli import COMMANDS, build_parser, main

PAPER_COMMANDS = [
    "create-patches", "extract-features", "create-metadata", "create-splits", "train-sae",
    "save-sae-features", "analyze-sae", "train-mil", "patch-labels", "evaluate-patches",
    "heatmap", "report", "demo",
]


def test_help_lists_every_subcommand():
    out = subprocess.run([sys.executable, "-m", "sae1n", "--help"], capture_output=True, text=True, check=True).stdout
    for name in PAPER_COMMANDS:
        assert name in out
    assert set(PAPER_COMMANDS) <= set(COMMANDS)


def test_every_subcommand_has_help():
    parser = build_parser()
    for name in COMMANDS:
        sub = parser._subparsers._group_actions[0].choices[name]
        assert sub.format_help()


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_standalone_stages_take_overwrite():
    """Every standalone stage that refuses stale outputs offers --overwrite."""
    parser = build_parser()
    choices = parser._subparsers._group_actions[0].choices
    for name in ("create-patches", "extract-features", "create-metadata", "create-splits", "patch-labels"):
        help_text = " ".join(choices[name].format_help().split())
        assert "--overwrite" in help_text and "other settings" in help_text, name


def _subparsers():
    return build_parser()._subparsers._group_actions[0].choices


def test_every_subcommand_help_exits_0_and_says_what_it_reads_and_writes(capsys):
    for name in COMMANDS:
        try:
            main([name, "--help"])
        except SystemExit as exc:
            assert exc.code == 0, name
        text = capsys.readouterr().out.lower()
        assert "reads" in text and "writes" in text, name


def test_every_option_with_a_default_shows_it():
    import argparse

    for name, sub in _subparsers().items():
        formatter = sub._get_formatter()
        for action in sub._actions:
            if not action.option_strings or action.default in (None, argparse.SUPPRESS) or isinstance(action.default, bool):
                continue
            assert "default" in formatter._expand_help(action), (name, action.dest)


def test_defaults_are_shown_once():
    text = " ".join(_subparsers()["extract-features"].format_help().split())
    assert "(default 256)" in text and "(default 256) (default" not in text
    text = " ".join(_subparsers()["heatmap"].format_help().split())
    assert "opacity in [0, 1] (default: 0.5)" in text
    assert "--vmin" in text and "colour map's low end" in text


def test_paper_underscore_flags_and_dashed_aliases_both_parse():
    parser = build_parser()
    a = parser.parse_args(["create-patches", "--source", "s", "--save_dir", "o", "--patch_size", "512"])
    b = parser.parse_args(["create-patches", "--source", "s", "--save-dir", "o", "--patch-size", "512"])
    assert a.save_dir == b.save_dir == "o" and a.patch_size == b.patch_size == 512


def test_train_help_lists_experiments_and_points_at_the_keys():
    for name, exp in (("train-sae", "camelyon16_conch_0"), ("train-mil", "camelyon16_conch_maxmil")):
        text = _subparsers()[name].format_help()
        assert exp in text, name
        assert "docs/config_keys.md" in text and "sae1n config show exp=NAME" in text, name


def test_demo_tiles_metavar_is_dir():
    assert "--tiles DIR" in _subparsers()["demo"].format_help()


def test_top_level_help_does_not_import_torch():
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "sae1n", "--help"], capture_output=True, text=True, check=True
    )
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert "torch" not in imported and "sae1n.cli" in imported


def _codes(exp, dataset, features, sub="sparse_files"):
    d = exp / "encoded_features" / dataset / features / sub
    d.mkdir(parents=True)
    return d.parent


def test_heatmap_feature_dir_comes_from_the_experiment(tmp_path):
    from sae1n.errors import ConfigError
    from sae1n.viz.commands import _encoded_features_dir

    exp = tmp_path / "exp"
    with pytest.raises(ConfigError, match="save-sae-features"):
        _encoded_features_dir(exp)
    one = _codes(exp, "camelyon16", "conch")
    assert _encoded_features_dir(exp) == one
    _codes(exp, "camelyon16", "uni", "h5_files")
    with pytest.raises(ConfigError, match="2 feature sets.*--feature_dir"):
        _encoded_features_dir(exp)
    with pytest.raises(ConfigError, match="--feature_dir"):
        _encoded_features_dir(None)


def test_heatmap_without_feature_dir_or_exp_dir_is_one_clear_error(tmp_path, capsys):
    assert main(["heatmap", "--data_slide_dir", str(tmp_path), "--output_dir", str(tmp_path / "o")]) == 1
    assert "--feature_dir" in capsys.readouterr().err


def test_pipeline_command_lives_apart_from_the_demo():
    from sae1n.devtools.layers import LAYERS, layer_of

    assert COMMANDS["pipeline"][0] == "sae1n.pipeline.commands"
    assert COMMANDS["name-neurons"][0] == "sae1n.neurons.commands"
    assert layer_of("sae1n.pipeline.commands") == LAYERS["cli"]
    import sae1n.demo.commands as demo_commands

    assert not hasattr(demo_commands, "run_pipeline")


def test_every_option_and_argument_has_help():
    for name, sub in _subparsers().items():
        for action in sub._actions:
            assert action.help, (name, action.dest)
