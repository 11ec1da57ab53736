"""CLI glue for this stage: parse arguments, call the public API, print."""

from __future__ import annotations

import argparse

from sae1n.cliutil import option
from sae1n.wsi.readers import AUTO_HELP, BACKENDS


def configure_extract_features(p: argparse.ArgumentParser) -> None:
    from sae1n.encoders.registry import available_encoders, spec_table

    p.epilog = "encoders (details: --list-models):\n" + spec_table()
    option(
        p,
        "--list_models",
        action="store_true",
        help="print every encoder (dim, text tower, input, expected mpp, licence, weights) and exit",
    )
    option(
        p,
        "--data_h5_dir",
        default=None,
        help="folder holding patches/<slide>.h5 (create-patches --save_dir); required",
    )
    option(p, "--data_slide_dir", default=None, help="folder holding the slides; required")
    option(
        p,
        "--csv_path",
        default=None,
        help="CSV with a slide_id column (CLAM process_list_autogen.csv); default: every patch file",
    )
    option(
        p,
        "--feat_dir",
        default=None,
        help="output folder: h5_files/ and pt_files/ are written here; required",
    )
    option(p, "--batch_size", type=int, default=256, help="patches per encoder batch (default 256)")
    option(p, "--slide_ext", default=".svs", help="slide file extension (default .svs)")
    option(
        p,
        "--model_name",
        default="resnet50_trunc",
        choices=available_encoders(),
        help="encoder from the registry (default resnet50_trunc)",
    )
    option(
        p,
        "--no_auto_skip",
        action="store_true",
        help="re-extract slides whose outputs already exist",
    )
    option(
        p,
        "--overwrite",
        action="store_true",
        help="re-extract slides whose outputs were made with other settings (default: refuse and say which)",
    )
    option(
        p,
        "--target_patch_size",
        type=int,
        default=None,
        help="encoder input size (default: the encoder's, 224)",
    )
    option(
        p,
        "--checkpoint",
        default=None,
        help="local weight file/folder (default: the encoder's environment variable, then the hub)",
    )
    option(p, "--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    option(
        p,
        "--num_workers",
        type=int,
        default=None,
        help="DataLoader workers reading patches (default min(8, CPUs))",
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
        "--shard",
        default=None,
        metavar="RANK/WORLD",
        help="process only sorted(slides)[RANK::WORLD], e.g. 0/4",
    )


def run_extract_features(args) -> int:
    from sae1n.distributed import env_info
    from sae1n.encoders.sharding import extract_features_sharded
    from sae1n.errors import ConfigError

    if args.list_models:
        from sae1n.encoders.registry import models_table

        print(models_table())
        return 0
    missing = [f"--{k}" for k in ("data_h5_dir", "data_slide_dir", "feat_dir") if not getattr(args, k)]
    if missing:
        raise ConfigError(f"extract-features needs {', '.join(missing)} (or --list-models)")
    shard = None
    if args.shard:
        try:
            rank, world = (int(v) for v in args.shard.split("/"))
        except ValueError:
            raise ConfigError(
                f"--shard must look like RANK/WORLD (e.g. 0/4), got {args.shard!r}"
            ) from None
        shard = (rank, world)
    # under torchrun: every process takes its share of the slides (else a plain call)
    s = extract_features_sharded(
        data_h5_dir=args.data_h5_dir,
        data_slide_dir=args.data_slide_dir,
        feat_dir=args.feat_dir,
        model_name=args.model_name,
        csv_path=args.csv_path,
        slide_ext=args.slide_ext,
        batch_size=args.batch_size,
        checkpoint=args.checkpoint,
        auto_skip=not args.no_auto_skip,
        num_workers=args.num_workers,
        device=args.device,
        backend=args.backend,
        target_patch_size=args.target_patch_size,
        shard=shard,
        overwrite=args.overwrite,
    )
    if not env_info().is_main:  # one summary (of every rank), from rank 0
        return 1 if s.failed else 0
    print(
        f"{s.encoder} ({s.dim}-d): {s.count('extracted')} extracted, {s.count('skipped')} skipped, "
        f"{s.count('busy')} done by another process, "
        f"{s.count('empty')} empty, {len(s.failed)} failed in {s.seconds:.1f} s "
        f"({s.patches_per_second:.1f} patches/s) -> {s.feat_dir}"
    )
    for r in s.failed:
        print(f"  failed {r.slide_id}: {r.reason}")
    if s.failed:
        print(
            f"  details: {s.status_csv}; re-run to retry the failed slides (finished ones are skipped)"
        )
    return 1 if s.failed else 0
