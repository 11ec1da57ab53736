"""CLI glue for this stage: parse arguments, call the public API, print."""

from __future__ import annotations

import argparse

from sae1n.cliutil import experiments_epilog, option


def configure_train_sae(p: argparse.ArgumentParser) -> None:
    p.epilog = experiments_epilog("sae")
    p.add_argument(
        "args",
        nargs=argparse.REMAINDER,
        metavar="exp=NAME key=value",
        help="experiment name and config overrides (e.g. training.lr=3e-4, sweep.sae.top_k=[8,16,32])",
    )


def run_train_sae(args) -> int:
    from sae1n.configs import split_exp_args
    from sae1n.distributed import env_info
    from sae1n.sae.train import train_from_args

    exp, overrides = split_exp_args(args.args)
    out = train_from_args(exp, overrides)
    if env_info().is_main:  # under torchrun: one summary, from rank 0
        print(f"SAE outputs: {out}")
    return 0


def configure_save_sae_features(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "exp_dir",
        help="experiment folder, e.g. output/sae/camelyon16_conch_0 (or a checkpoint file)",
    )
    option(
        p,
        "--feature_dir",
        default=None,
        help="features to encode (default: the folder the SAE was trained on)",
    )
    option(
        p,
        "--file_type",
        default=None,
        choices=["h5", "pt"],
        help="feature files to read (default: h5, else pt)",
    )
    option(p, "--batch_size", type=int, default=8192, help="patches per encoding batch")
    option(p, "--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    option(
        p,
        "--checkpoint",
        default="best",
        help="which checkpoint: best (default), final, or a step number",
    )
    option(
        p,
        "--out_dir",
        default=None,
        help="output folder (default: <exp_dir>/encoded_features/<dataset>/<feature_set>)",
    )
    option(p, "--no_sparse", action="store_true", help="skip the compact sparse_files/ codes")
    option(
        p,
        "--no_dense",
        action="store_true",
        help="skip the dense h5_files/ and pt_files/ (paper layout)",
    )
    option(
        p,
        "--compat",
        default="default",
        choices=["default", "paper"],
        help="paper: encode exactly as the paper's save_sae_features.py (every .h5, eval threshold)",
    )
    option(p, "--overwrite", action="store_true", help="re-encode outputs made with other settings or another checkpoint")


def run_save_sae_features(args) -> int:
    from sae1n.distributed import env_info
    from sae1n.sae.encode import save_sae_features

    s = save_sae_features(
        args.exp_dir,
        args.feature_dir,
        file_type=args.file_type,
        dense=not args.no_dense,
        sparse=not args.no_sparse,
        batch_size=args.batch_size,
        device=args.device,
        checkpoint=args.checkpoint,
        out_dir=args.out_dir,
        compat=args.compat,
        overwrite=args.overwrite,
    )
    if not env_info().is_main:  # under torchrun: one summary (of every rank), from rank 0
        return 0
    mb = 1 << 20
    sizes = []
    if s.dense_bytes:
        sizes.append(f"dense {s.dense_bytes / mb:.1f} MiB")
    if s.sparse_bytes:
        sizes.append(f"sparse {s.sparse_bytes / mb:.1f} MiB")
    print(
        f"encoded {len(s.encoded)} slides ({', '.join(sizes) or 'nothing new'}), skipped {len(s.skipped)} complete -> {s.out_dir}"
    )
    return 0


def configure_export_sae(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "exp_dir",
        help="experiment folder, e.g. output/sae/camelyon16_conch_0 (or a checkpoint file)",
    )
    option(p, "--format", default="saelens", choices=["saelens"], help="on-disk layout (default: saelens)")
    option(
        p,
        "--checkpoint",
        default="best",
        help="which checkpoint of the experiment: best (default), final, or a step number",
    )
    option(
        p,
        "--out_dir",
        default=None,
        help="output folder (default: <exp_dir>/export/<format>): cfg.json + sae_weights.safetensors",
    )
    option(p, "--overwrite", action="store_true", help="replace an export made from another checkpoint")


def run_export_sae(args) -> int:
    from sae1n.sae.export import export_sae

    out = export_sae(
        args.exp_dir,
        args.out_dir,
        fmt=args.format,
        which=str(args.checkpoint),
        overwrite=args.overwrite,
    )
    print(f"SAE exported ({args.format}) -> {out}")
    return 0
