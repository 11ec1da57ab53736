import subprocess
import sys

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
