"""The ``sae1n`` command: one subcommand per pipeline stage.

This module only routes: each subcommand's arguments and call live in its
stage's ``commands`` module, which calls that stage's public API.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from sae1n import __version__

# command -> (module, help). The module defines configure_<cmd>(parser) and run_<cmd>(args).
COMMANDS: dict[str, tuple[str, str]] = {
    "create-patches": ("sae1n.wsi.commands", "tissue segmentation, patch coordinates, stitched previews (CLAM create_patches_fp)"),
    "extract-features": ("sae1n.encoders.commands", "patch features with an encoder from the registry (CLAM extract_features_fp)"),
    "create-metadata": ("sae1n.datasets.commands", "dataset CSV for Camelyon16 or PANDA"),
    "create-splits": ("sae1n.datasets.commands", "k-fold / 80-10-10 splits in CLAM's CSV format"),
    "patch-labels": ("sae1n.datasets.commands", "tumour fraction per patch from annotations"),
    "make-bags": ("sae1n.datasets.bags_commands", "slide-like bags from labelled patches or tiles (weak labels for testing)"),
    "train-sae": ("sae1n.sae.commands", "train a sparse autoencoder: exp=<name> key=value ..."),
    "save-sae-features": ("sae1n.sae.commands", "encode every slide with a trained SAE"),
    "export-sae": ("sae1n.sae.commands", "write a trained SAE in SAELens' layout (cfg.json + sae_weights.safetensors)"),
    "analyze-sae": ("sae1n.neurons.commands", "rank SAE neurons by slide labels (Welch t-test)"),
    "evaluate-patches": ("sae1n.neurons.commands", "patch-level metrics of the selected neuron(s)"),
    "stability": ("sae1n.neurons.commands", "train the SAE with several seeds: is the chosen neuron as good, and the same direction?"),
    "heatmap": ("sae1n.viz.commands", "paint a neuron's (or attention) scores on the slide"),
    "report": ("sae1n.viz.commands", "self-contained HTML report of an SAE experiment"),
    "browse": ("sae1n.browse.commands", "local web app: every neuron on zoomable slides, notes, QuPath export"),
    "train-mil": ("sae1n.mil.commands", "train MIL slide classifiers: exp=<name> key=value ..."),
    "demo": ("sae1n.demo.commands", "run the whole pipeline on generated slides"),
    "pipeline": ("sae1n.demo.commands", "run every stage on a cohort from one YAML config"),
    "config": ("sae1n.configs.commands", "list the exp= configs or print one resolved"),
}


def _fn(command: str, prefix: str):
    module = importlib.import_module(COMMANDS[command][0])
    return getattr(module, f"{prefix}_{command.replace('-', '_')}")


EPILOG = """\
stage order (each reads what the one before it wrote):
  create-patches -> extract-features -> create-metadata -> create-splits ->
  train-sae -> save-sae-features -> analyze-sae -> patch-labels ->
  train-mil -> evaluate-patches -> heatmap -> report
  (`pipeline CONFIG.yaml` runs them all from one config)

start with `sae1n demo`: the whole pipeline on generated slides, no GPU or
downloads needed. `sae1n COMMAND --help` says what a command reads and writes.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sae1n",
        description="Weakly supervised single-neuron phenotype identification in pathology embeddings.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"sae1n {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        _fn(name, "configure")(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    from sae1n.errors import Sae1nError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        rc = _fn(args.command, "run")(args)
    except Sae1nError as exc:
        if args.verbose:
            raise
        print(f"sae1n {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `sae1n ... | head`: the reader left; not an error of ours
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print(f"sae1n {args.command}: interrupted; completed outputs are kept, re-run to resume", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
