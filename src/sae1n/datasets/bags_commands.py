"""CLI glue for ``sae1n make-bags``: parse arguments, call the public API, print."""

from __future__ import annotations

import argparse
from pathlib import Path

from sae1n.cliutil import option


def configure_make_bags(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("patches (one of)")
    option(src, "--features", type=Path, help="(N, D) .npy matrix of patch features (with --labels)")
    option(src, "--feature_dir", type=Path, help="CLAM feature folder (with --labels: slide_id, x, y, class)")
    option(src, "--tiles", type=Path, help="folder of tile images: labels.csv files (file, class) or DIR/<class>/*.png")
    option(p, "--labels", type=Path, default=None, help="CSV with the class of each patch")
    option(p, "--class_column", default=None, help="class column of --labels (default: tissue_class, class, label or target)")
    option(p, "--encoder", default="handcrafted", help="registry encoder for --tiles (default handcrafted)")
    option(p, "--checkpoint", default=None, help="encoder weights for --tiles")
    option(p, "--device", default="cpu", help="device of the --tiles encoder")
    option(p, "--out_dir", type=Path, required=True, help="where the bag cohort is written")
    option(p, "--positive_class", required=True, help="class whose presence makes a bag positive, e.g. TUM")
    option(p, "--bag_size", default="16", help="patches per bag: N or a range lo:hi (default 16)")
    option(p, "--witness_rate", default="0.2", help="fraction of positive patches in a positive bag: r or lo:hi (default 0.2)")
    option(p, "--n_bags", type=int, default=60, help="bags in all, shared by the splits (default 60)")
    option(p, "--split", default="0.6,0.2,0.2", help="train,val,test fractions of the patches (default 0.6,0.2,0.2)")
    option(p, "--positive_bag_fraction", type=float, default=0.5, help="share of positive bags per split")
    option(p, "--patch_size", type=int, default=224, help="level-0 patch side used for the bag coords")
    option(p, "--seed", type=int, default=0, help="seed of the split and the bag draws")
    option(p, "--overwrite", action="store_true", help="rewrite outputs made with other settings")


def run_make_bags(args) -> int:
    from sae1n.datasets.bags import make_bags
    from sae1n.datasets.patch_sources import (
        encode_tiles,
        list_tiles,
        load_clam_folder,
        load_patch_features,
    )
    from sae1n.errors import ConfigError

    given = [n for n in ("features", "feature_dir", "tiles") if getattr(args, n) is not None]
    if len(given) != 1:
        raise ConfigError("give exactly one of --features, --feature_dir or --tiles")
    if given[0] != "tiles" and args.labels is None:
        raise ConfigError(f"--{given[0]} needs --labels (the class of each patch)")
    ids = None
    if args.features is not None:
        x, cls, ids = load_patch_features(args.features, args.labels, args.class_column)
        inputs = {"features": args.features, "labels": args.labels}
    elif args.feature_dir is not None:
        x, cls, ids = load_clam_folder(args.feature_dir, args.labels, args.class_column)
        inputs = {"feature_dir": str(args.feature_dir.resolve()), "labels": args.labels}
    else:
        files, cls = list_tiles(args.tiles, args.labels, args.class_column)
        x = encode_tiles(files, args.encoder, checkpoint=args.checkpoint, device=args.device)
        ids = [str(f.relative_to(args.tiles)) for f in files]
        inputs = {"tiles": str(args.tiles.resolve()), "tile_files": ids, "encoder": args.encoder, "checkpoint": args.checkpoint}
    res = make_bags(
        x,
        cls,
        args.out_dir,
        positive_class=args.positive_class,
        bag_size=args.bag_size,
        witness_rate=args.witness_rate,
        n_bags=args.n_bags,
        seed=args.seed,
        split=args.split,
        positive_bag_fraction=args.positive_bag_fraction,
        patch_size=args.patch_size,
        patch_ids=ids,
        inputs=inputs,
        overwrite=args.overwrite,
    )
    b = res.bags
    print(("bags are current: " if res.reused else "wrote ") + str(res.out_dir))
    for s in ("train", "val", "test"):
        sel = b[b["split"] == s]
        n_distinct = res.patches.loc[res.patches["split"] == s, "row"].nunique()
        print(f"  {s}: {len(sel)} bags ({int((sel['label'] == 'tumor').sum())} with {args.positive_class}), {n_distinct} distinct patches")
    print(f"  features: {res.feature_dir}\n  patch labels: {res.patch_label_dir}\n  dataset CSV: {res.dataset_csv}\n  split: {res.split_csv}")
    return 0
