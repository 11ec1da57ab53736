"""CLI glue for this stage: parse arguments, call the public API, print."""

from __future__ import annotations

import argparse

from sae1n.cliutil import option


def configure_create_metadata(p: argparse.ArgumentParser) -> None:
    option(p, "--task", required=True, choices=["camelyon16", "panda"], help="dataset")
    option(
        p,
        "--feature_dir",
        required=True,
        help="feature folder (CLAM root, its h5_files/, or a flat folder): one row per slide file",
    )
    option(
        p,
        "--annotation_dir",
        help="camelyon16: test slides with <slide>.xml here are tumour (used without --reference_csv)",
    )
    option(
        p,
        "--reference_csv",
        help="camelyon16: official test reference CSV (slide name + Tumor/Normal) to label test slides",
    )
    option(p, "--panda_csv", help="panda: PANDA train.csv (image_id, data_provider, isup_grade)")
    option(p, "--output_dir", required=True, help="folder for the metadata CSV")
    option(p, "--output_filename", help="CSV name (default <task>_metadata.csv)")
    option(
        p,
        "--overwrite",
        action="store_true",
        help="replace outputs made with other settings or inputs (default: refuse and say which)",
    )


def run_create_metadata(args) -> int:
    from sae1n.datasets import create_metadata

    frame = create_metadata(
        args.task,
        args.feature_dir,
        args.output_dir,
        args.output_filename,
        annotation_dir=args.annotation_dir,
        panda_csv=args.panda_csv,
        reference_csv=args.reference_csv,
        overwrite=args.overwrite,
    )
    print(f"wrote {frame.attrs['path']}: {len(frame)} slides")
    by = ["split", "label"] if "split" in frame.columns else ["data_provider", "label"]
    for keys, n in frame.groupby(by).size().items():
        print(f"  {' / '.join(map(str, keys))}: {n}")
    skipped = frame.attrs["skipped"]
    if skipped:
        shown = ", ".join(skipped[:20]) + (" ..." if len(skipped) > 20 else "")
        print(f"  left out {len(skipped)} slide(s) ({frame.attrs['skip_reason']}): {shown}")
    return 0


def configure_create_splits(p: argparse.ArgumentParser) -> None:
    option(p, "--metadata_path", required=True, help="metadata CSV from create-metadata")
    option(p, "--output_dir", required=True, help="splits go to <output_dir>/<task>_<seed>/")
    option(
        p,
        "--k",
        type=int,
        default=None,
        help="number of folds (default 5 for camelyon16, 10 for panda)",
    )
    option(p, "--seed", type=int, default=42, help="random seed (also names the output folder)")
    option(p, "--task", default="camelyon16", choices=["camelyon16", "panda"], help="dataset")
    option(p, "--repeats", type=int, default=5, help="panda: number of random 80/10/10 splits")
    option(
        p,
        "--overwrite",
        action="store_true",
        help="replace outputs made with other settings or inputs (default: refuse and say which)",
    )


def run_create_splits(args) -> int:
    from sae1n.datasets import create_splits, read_split

    paths = create_splits(
        args.metadata_path,
        args.output_dir,
        task=args.task,
        k=args.k,
        seed=args.seed,
        repeats=args.repeats,
        overwrite=args.overwrite,
    )
    print(f"wrote {len(paths)} split(s) to {paths[0].parent}")
    for path in paths:
        sets = read_split(path)
        print(f"  {path.name}: " + ", ".join(f"{name} {len(ids)}" for name, ids in sets.items()))
    return 0


def configure_patch_labels(p: argparse.ArgumentParser) -> None:
    option(
        p,
        "--coords_dir",
        required=True,
        help="create-patches output (or its patches/) or a feature h5_files/ folder",
    )
    option(
        p,
        "--annotation_dir",
        required=True,
        help="folder of <slide>.xml / .geojson / <slide>_mask.tiff annotations",
    )
    option(
        p,
        "--output_dir",
        required=True,
        help="writes <output_dir>/<slide>.h5 (coords, tumor_fraction, label)",
    )
    option(
        p,
        "--threshold",
        type=float,
        default=0.5,
        help="label = tumour fraction >= threshold (default 0.5)",
    )
    option(
        p,
        "--annotation_format",
        default="auto",
        choices=["auto", "asap", "geojson", "panda_mask"],
        help="annotation file format",
    )
    option(
        p,
        "--classification",
        default="Tumor",
        help="GeoJSON tumour class name(s), comma-separated (default Tumor)",
    )
    option(
        p,
        "--patch_size",
        type=float,
        default=None,
        help="patch side in level-0 pixels (default: from the h5 attributes)",
    )
    option(p, "--panda_csv", help="PANDA masks: CSV with image_id/slide_id and data_provider")
    option(
        p,
        "--data_provider",
        choices=["radboud", "karolinska"],
        help="PANDA masks: one provider for every slide",
    )
    option(
        p,
        "--mask_level",
        type=int,
        default=None,
        help="PANDA masks: pyramid level to read (default: the 16x level)",
    )
    option(
        p,
        "--overwrite",
        action="store_true",
        help="recompute slides whose outputs were made with other settings or inputs (default: refuse and say which)",
    )


def run_patch_labels(args) -> int:
    from sae1n.datasets import create_patch_labels

    summary = create_patch_labels(
        args.coords_dir,
        args.annotation_dir,
        args.output_dir,
        args.threshold,
        annotation_format=args.annotation_format,
        classification=args.classification,
        patch_size=args.patch_size,
        data_provider=args.data_provider,
        panda_csv=args.panda_csv,
        mask_level=args.mask_level,
        overwrite=args.overwrite,
    )
    no_annotation = int((summary["annotation"] == "").sum())
    print(
        f"labelled {len(summary)} slide(s) into {args.output_dir}: {int(summary['n_patches'].sum())} patches, "
        f"{int(summary['n_tumor'].sum())} tumour (fraction >= {args.threshold}); "
        f"{int((summary['status'] == 'kept').sum())} already up to date"
    )
    if no_annotation:
        print(
            f"  {no_annotation} slide(s) had no annotation file and are all normal (see summary.csv)"
        )
    return 0
