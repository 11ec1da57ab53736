"""CLI glue for this stage: parse arguments, call the public API, print."""

from __future__ import annotations

import argparse

from sae1n.cliutil import option
from sae1n.wsi.readers import AUTO_HELP, BACKENDS


def configure_create_patches(p: argparse.ArgumentParser) -> None:
    option(p, "--source", required=True, help="folder of slides (or one slide file)")
    option(
        p,
        "--save_dir",
        required=True,
        help="output folder: patches/, masks/, stitches/, geojson/, process_list_autogen.csv",
    )
    option(
        p,
        "--patch_size",
        type=int,
        default=256,
        help="patch side in pixels at --patch_level (default 256)",
    )
    option(
        p,
        "--step_size",
        type=int,
        default=None,
        help="grid step in pixels at --patch_level (default: --patch_size)",
    )
    option(p, "--patch_level", type=int, default=0, help="pyramid level to patch at (default 0)")
    option(
        p,
        "--preset",
        default=None,
        help="bwh_biopsy, bwh_resection, tcga (built in) or a CLAM preset CSV path",
    )
    option(p, "--seg", action="store_true", help="segment tissue")
    option(p, "--patch", action="store_true", help="write patch coordinates")
    option(p, "--stitch", action="store_true", help="write stitched previews")
    option(
        p,
        "--process_list",
        default=None,
        help="CSV of slides and per-slide parameters (e.g. an edited process_list_autogen.csv)",
    )
    option(
        p,
        "--no_auto_skip",
        dest="auto_skip",
        action="store_false",
        help="redo slides whose patch file exists",
    )
    option(
        p,
        "--overwrite",
        action="store_true",
        help="recompute slides whose outputs were made with other settings (default: refuse and say which)",
    )
    option(
        p,
        "--target_mpp",
        type=float,
        default=None,
        help="physical patch scale in microns per pixel (overrides --patch_level)",
    )
    option(
        p,
        "--magnification",
        type=float,
        default=None,
        help="physical patch scale as objective power, e.g. 20 (= 0.5 um/px)",
    )
    option(
        p,
        "--backend",
        default="auto",
        choices=BACKENDS,
        help=AUTO_HELP,
    )
    option(
        p,
        "--no_geojson",
        dest="geojson",
        action="store_false",
        help="do not write geojson/<slide>.geojson",
    )


def run_create_patches(args) -> int:
    from sae1n.wsi.patch_slides import create_patches
    from sae1n.wsi.process_list import summarize

    if not (args.seg or args.patch or args.stitch):
        print(
            "note: none of --seg --patch --stitch given; only masks/ previews are written (as CLAM does)"
        )
    df = create_patches(
        args.source,
        args.save_dir,
        patch_size=args.patch_size,
        step_size=args.step_size,
        patch_level=args.patch_level,
        preset=args.preset,
        seg=args.seg,
        patch=args.patch,
        stitch=args.stitch,
        process_list=args.process_list,
        auto_skip=args.auto_skip,
        target_mpp=args.target_mpp,
        magnification=args.magnification,
        backend=args.backend,
        save_geojson=args.geojson,
        overwrite=args.overwrite,
    )
    text, all_failed = summarize(df)
    print(text)
    return 1 if all_failed else 0
