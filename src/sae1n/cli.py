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
from sae1n.cliutil import HelpFormatter

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
    "name-neurons": ("sae1n.neurons.commands", "name SAE neurons with a CLIP-family text tower (writes analysis/neuron_names.csv)"),
    "heatmap": ("sae1n.viz.commands", "paint a neuron's (or attention) scores on the slide"),
    "report": ("sae1n.viz.commands", "self-contained HTML report of an SAE experiment"),
    "browse": ("sae1n.browse.commands", "local web app: every neuron on zoomable slides, notes, QuPath export"),
    "train-mil": ("sae1n.mil.commands", "train MIL slide classifiers: exp=<name> key=value ..."),
    "demo": ("sae1n.demo.commands", "run the whole pipeline on generated slides"),
    "pipeline": ("sae1n.pipeline.commands", "run every stage on a cohort from one YAML config"),
    "config": ("sae1n.configs.commands", "list the exp= configs or print one resolved"),
}

# command -> what it reads and writes (shown in `sae1n COMMAND --help`)
READS_WRITES: dict[str, str] = {
    "create-patches": "reads: the slides in --source.\nwrites: <save_dir>/patches/<slide>.h5 (coords), masks/, stitches/, geojson/, process_list_autogen.csv.",
    "extract-features": "reads: <data_h5_dir>/patches/<slide>.h5 and the slides in --data_slide_dir.\nwrites: <feat_dir>/h5_files/<slide>.h5 (features + coords) and pt_files/<slide>.pt.",
    "create-metadata": "reads: the slide list of --feature_dir, plus annotations / --reference_csv (camelyon16) or --panda_csv.\nwrites: <output_dir>/<task>_metadata.csv (slide_id, label, ...).",
    "create-splits": "reads: the metadata CSV (--metadata_path).\nwrites: <output_dir>/<task>_<seed>/splits_<k>.csv (train/val/test columns, CLAM format).",
    "patch-labels": "reads: patch coords (--coords_dir) and annotations (--annotation_dir).\nwrites: <output_dir>/<slide>.h5 (coords, tumor_fraction, label) and summary.csv.",
    "make-bags": "reads: patch features (--features/--feature_dir) or tile images (--tiles) with their classes.\nwrites: <out_dir>/: a feature folder, patch labels, a dataset CSV and a split CSV.",
    "train-sae": "reads: the exp config and the feature folder it names (data.feature_dir).\nwrites: <output_dir>/<exp>/: checkpoints/, logs/metrics.csv, the resolved config.",
    "save-sae-features": "reads: the SAE checkpoint in exp_dir and the features it was trained on (or --feature_dir).\nwrites: <exp_dir>/encoded_features/<dataset>/<features>/: sparse_files/, h5_files/, pt_files/.",
    "export-sae": "reads: a checkpoint of exp_dir.\nwrites: <exp_dir>/export/<format>/cfg.json + sae_weights.safetensors.",
    "analyze-sae": "reads: SAE codes (--feature_dir), the split (train column) and slide labels (--dataset_csv).\nwrites: <output_dir>/<exp_id>/analysis/sae_analysis_t_test.csv (the ranking).",
    "evaluate-patches": "reads: SAE codes, the split, patch labels, the ranking CSV (and optionally MIL patch scores, input features).\nwrites: <output_dir>/<exp_id>/evaluation/ (metrics CSV/JSON, ROC and PR plots).",
    "stability": "reads: the exp config, its features, slide labels and patch labels.\nwrites: one SAE per seed and <output_dir>/<exp>/stability/ (per-seed and summary CSVs).",
    "name-neurons": "reads: the decoder of the SAE in exp_dir and an encoder's text tower (with its weights).\nwrites: <exp_dir>/analysis/neuron_names.csv (read by report and browse).",
    "heatmap": "reads: SAE codes, the slides, the ranking (and optionally attention, patch labels, annotations).\nwrites: <output_dir>/heatmaps/, geojson/, galleries/ (default output_dir: <exp_dir>/figures).",
    "report": "reads: <exp_dir>/analysis/ (ranking, neuron_names.csv), evaluation/, figures/, logs/, neuron_notes.json.\nwrites: <exp_dir>/report.html (self-contained).",
    "browse": "reads: <exp_dir>/ (analysis/, encoded_features/, evaluation/), the slides and annotations.\nwrites: <exp_dir>/neuron_notes.json (your notes) and QuPath exports you ask for.",
    "train-mil": "reads: the exp config: features, dataset CSV, splits (and SAE codes / ranking for SAE inputs).\nwrites: <results_dir_base>/mil/<exp>/fold_<k>/ (checkpoint, predictions, patch_scores/) and summary.csv.",
    "demo": "reads: nothing (or tile images with --tiles).\nwrites: <out>/: generated slides in data/, pipeline.yaml, every stage's outputs and the report.",
    "pipeline": "reads: the pipeline YAML and the cohort it names (slides, annotations).\nwrites: every stage's outputs under the config's work_dir (skips complete stages).",
}


def _fn(command: str, prefix: str):
    module = importlib.import_module(COMMANDS[command][0])
    return getattr(module, f"{prefix}_{command.replace('-', '_')}")


EPILOG = """\
stage order (each reads what the one before it wrote):
  create-patches -> extract-features -> create-metadata -> create-splits ->
  train-sae -> save-sae-features -> analyze-sae -> patch-labels ->
  train-mil -> evaluate-patches -> heatmap -> [name-neurons] -> report
  (name-neurons needs a CLIP-family encoder: conch_v1, clip_vit_b16, plip)
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
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter)
        _fn(name, "configure")(p)
        if name in READS_WRITES:
            p.description = f"{p.description}\n\n{READS_WRITES[name]}"
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
