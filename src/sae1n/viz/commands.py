"""CLI glue for this stage: parse arguments, call the public API, print."""

from __future__ import annotations

import argparse
from pathlib import Path

from sae1n.cliutil import option


def configure_heatmap(p: argparse.ArgumentParser) -> None:
    option(
        p,
        "--feature_dir",
        type=Path,
        default=None,
        help="SAE codes folder (h5 or sparse files with coords); default with --exp_dir: its one "
        "encoded_features/<dataset>/<features>/ folder",
    )
    option(p, "--data_slide_dir", type=Path, required=True, help="folder holding the slides")
    option(p, "--slide_ext", default=None, help="slide extension, e.g. .tif (default: any known)")
    option(
        p,
        "--slide_ids",
        nargs="+",
        default=None,
        help="slides to draw (default: every slide with codes)",
    )
    option(p, "--unit", type=int, default=None, help="neuron id (default: --rank of the ranking)")
    option(p, "--rank", type=int, default=1, help="take the neuron at this rank of the ranking CSV")
    option(
        p,
        "--exp_dir",
        type=Path,
        default=None,
        help="output/sae/<exp>: ranking from analysis/, pictures to figures/",
    )
    option(
        p,
        "--ranking_csv",
        type=Path,
        default=None,
        help="ranking CSV (default: <exp_dir>/analysis/sae_analysis_t_test.csv)",
    )
    option(
        p,
        "--attention_dir",
        type=Path,
        default=None,
        help="MIL patch_scores/ folder: ABMIL attention drawn side by side",
    )
    option(
        p,
        "--patch_label_dir",
        type=Path,
        default=None,
        help="patch-label folder: tumour patches outlined",
    )
    option(
        p,
        "--annotation_dir",
        type=Path,
        default=None,
        help="folder of <slide>.geojson or ASAP <slide>.xml annotations (level-0) to outline",
    )
    option(
        p,
        "--output_dir",
        type=Path,
        default=None,
        help="where heatmaps/, geojson/, galleries/ go (default: <exp_dir>/figures)",
    )
    option(
        p,
        "--cmap",
        default="viridis",
        help="matplotlib colour map (default viridis, perceptually uniform; jet is still available)",
    )
    option(p, "--alpha", type=float, default=0.5, help="heatmap opacity in [0, 1]")
    option(
        p,
        "--normalize",
        choices=("minmax", "percentile", "none"),
        default="minmax",
        help="score scaling per slide",
    )
    option(
        p,
        "--vmin",
        type=float,
        default=None,
        help="score drawn as the colour map's low end, the same on every slide (default: per --normalize)",
    )
    option(
        p,
        "--vmax",
        type=float,
        default=None,
        help="score drawn as the colour map's high end, the same on every slide (default: per --normalize)",
    )
    option(p, "--max_size", type=int, default=1024, help="thumbnail's longest side in pixels")
    option(
        p,
        "--gallery",
        type=int,
        default=0,
        help="also save a gallery of the N top-activating patches",
    )
    option(
        p,
        "--geojson",
        action="store_true",
        help="also export QuPath GeoJSON of the patch activations",
    )
    option(
        p,
        "--overwrite",
        action="store_true",
        help="redraw pictures made for another neuron, split or setting (default: keep current ones, refuse stale ones)",
    )


def _encoded_features_dir(exp_dir: Path | None) -> Path:
    """The default --feature_dir: the experiment's one folder of SAE codes."""
    from sae1n.errors import ConfigError

    if exp_dir is None:
        raise ConfigError("pass --feature_dir (the SAE codes folder) or --exp_dir (an SAE experiment with encoded_features/)")
    enc = Path(exp_dir) / "encoded_features"
    found = sorted({p.parent for sub in ("sparse_files", "h5_files") for p in enc.glob(f"*/*/{sub}") if p.is_dir()})
    if len(found) == 1:
        return found[0]
    if not found:
        raise ConfigError(
            f"{enc} holds no SAE codes (<dataset>/<features>/sparse_files or h5_files): "
            "run `sae1n save-sae-features` for this experiment or pass --feature_dir"
        )
    raise ConfigError(
        f"{enc} holds codes of {len(found)} feature sets ({', '.join(str(f.relative_to(enc)) for f in found)}): "
        "pass --feature_dir to choose one"
    )


def run_heatmap(args) -> int:
    from sae1n.errors import ConfigError
    from sae1n.viz.figures import neuron_figures
    from sae1n.viz.reporting import FIGURES_DIR

    ranking = args.ranking_csv
    if ranking is None and args.exp_dir is not None:
        ranking = args.exp_dir / "analysis" / "sae_analysis_t_test.csv"
        if args.unit is not None and not ranking.is_file():
            ranking = None
    out = args.output_dir or (args.exp_dir / FIGURES_DIR if args.exp_dir else None)
    if out is None:
        raise ConfigError("pass --output_dir or --exp_dir")
    feature_dir = args.feature_dir or _encoded_features_dir(args.exp_dir)
    res = neuron_figures(
        feature_dir,
        args.data_slide_dir,
        out,
        unit=args.unit,
        ranking_csv=ranking,
        rank=args.rank,
        slide_ids=args.slide_ids,
        slide_ext=args.slide_ext,
        attention_dir=args.attention_dir,
        patch_label_dir=args.patch_label_dir,
        annotation_dir=args.annotation_dir,
        gallery_n=args.gallery,
        geojson=args.geojson,
        overwrite=args.overwrite,
        cmap=args.cmap,
        alpha=args.alpha,
        normalize=args.normalize,
        vmin=args.vmin,
        vmax=args.vmax,
        max_size=args.max_size,
    )
    print(f"neuron {res['unit']}: {len(res['heatmaps'])} heatmap(s) in {out / 'heatmaps'}")
    if res["geojson"]:
        print(f"{len(res['geojson'])} GeoJSON file(s) in {out / 'geojson'}")
    if res["gallery"]:
        print(f"gallery: {res['gallery']}")
    return 0


def configure_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("exp_dir", type=Path, help="output/sae/<exp>")
    option(p, "--out", type=Path, default=None, help="HTML file (default: <exp_dir>/report.html)")
    option(p, "--title", default=None, help="page title (default: sae1n report: <exp name>)")
    option(
        p,
        "--encoder",
        default=None,
        help="convenience: first run `sae1n name-neurons EXP_DIR --encoder NAME` (same options below); "
        "the report shows analysis/neuron_names.csv whenever it exists",
    )
    option(
        p,
        "--encoder_checkpoint",
        type=Path,
        default=None,
        help="with --encoder: its weights (default: its environment variable, then the hub)",
    )
    option(
        p,
        "--prompts",
        type=Path,
        default=None,
        help="with --encoder: prompt file, one per line (default: a pathology prompt list)",
    )
    option(
        p,
        "--overwrite",
        action="store_true",
        help="rewrite a report made from other inputs (default: keep a current one, refuse a stale one)",
    )


def run_report(args) -> int:
    from sae1n.viz.reporting import report

    named = False
    if args.encoder:  # the same call as `sae1n name-neurons`
        from sae1n.neurons.naming import name_experiment_with_encoder, read_prompts

        names, named = name_experiment_with_encoder(
            args.exp_dir,
            args.encoder,
            encoder_checkpoint=args.encoder_checkpoint,
            prompts=read_prompts(args.prompts) if args.prompts else None,
            overwrite=args.overwrite,
        )
        print(f"neuron names ({args.encoder}'s text tower): {names}" + ("" if named else " (current; kept)"))
    from sae1n.viz.reporting import REPORT_HTML

    target = Path(args.out) if args.out else Path(args.exp_dir) / REPORT_HTML
    before = target.stat().st_mtime_ns if target.is_file() else None
    path = report(args.exp_dir, args.out, title=args.title, overwrite=args.overwrite or named)
    if before is not None and path.stat().st_mtime_ns == before:
        print(f"{path} is current (same inputs and settings); kept")
    else:
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, self-contained)")
    return 0
