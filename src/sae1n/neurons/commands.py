"""CLI glue for this stage: parse arguments, call the public API, print."""

from __future__ import annotations

import argparse
from pathlib import Path

from sae1n.cliutil import option

_POOLINGS = ("max", "mean", "topk_mean", "quantile")


def _pooling_options(p: argparse.ArgumentParser) -> None:
    option(
        p,
        "--pooling",
        choices=_POOLINGS,
        default="max",
        help="how each neuron's patch activations become one slide value (paper: max)",
    )
    option(p, "--topk", type=int, default=10, help="patches averaged by --pooling topk_mean")
    option(p, "--quantile", type=float, default=0.9, help="quantile taken by --pooling quantile")
    option(
        p,
        "--file_type",
        choices=("sparse", "h5", "pt"),
        default=None,
        help="which code files to read (default: sparse if present, else h5, else pt)",
    )
    option(
        p,
        "--allow_missing",
        action="store_true",
        help="skip slides without codes/labels instead of stopping",
    )


def configure_analyze_sae(p: argparse.ArgumentParser) -> None:
    p.add_argument("exp_id", help="experiment id (the SAE's output folder name)")
    option(
        p,
        "--split_csv_path",
        type=Path,
        required=True,
        help="splits_<k>.csv; its train column is analysed",
    )
    option(
        p,
        "--feature_dir",
        type=Path,
        required=True,
        help="SAE codes: encoded_features/<dataset>/<features> or its pt_files/h5_files/sparse_files",
    )
    option(
        p,
        "--dataset_csv",
        type=Path,
        required=True,
        help="metadata CSV with slide_id and label (tumor/normal)",
    )
    option(
        p,
        "--output_dir",
        type=Path,
        required=True,
        help="writes <output_dir>/<exp_id>/analysis/sae_analysis_t_test.csv",
    )
    option(
        p,
        "--num_features",
        type=int,
        default=None,
        help="SAE dictionary size (checked against the codes; inferred if omitted)",
    )
    option(
        p,
        "--multiclass",
        action="store_true",
        help="also rank by Spearman correlation with --grade_column (e.g. PANDA ISUP)",
    )
    option(p, "--grade_column", default="isup_grade", help="numeric grade column for --multiclass")
    option(p, "--label_column", default="label", help="tumour/normal label column")
    _pooling_options(p)


def run_analyze_sae(args) -> int:
    from sae1n.neurons.ranking import analyze_sae, ranking_csv_path

    df = analyze_sae(
        args.exp_id,
        args.split_csv_path,
        args.feature_dir,
        args.dataset_csv,
        args.output_dir,
        num_features=args.num_features,
        pooling=args.pooling,
        multiclass=args.multiclass,
        topk=args.topk,
        quantile=args.quantile,
        label_column=args.label_column,
        grade_column=args.grade_column,
        file_type=args.file_type,
        allow_missing=args.allow_missing,
    )
    stat = "spearman_rho" if args.multiclass else "t_statistic"
    print(f"ranked {len(df)} neurons ({args.pooling} pooling); top 5:")
    print(
        df[["rank", "unit_id", stat, "p_value", "q_value", "slide_auroc", "direction"]]
        .head(5)
        .to_string(index=False)
    )
    print(f"wrote {ranking_csv_path(args.output_dir, args.exp_id, args.multiclass)}")
    return 0


def configure_evaluate_patches(p: argparse.ArgumentParser) -> None:
    p.add_argument("exp_id", help="experiment id (as given to analyze-sae)")
    option(
        p,
        "--split_csv_path",
        type=Path,
        required=True,
        help="splits_<k>.csv: thresholds from val, metrics on test",
    )
    option(
        p,
        "--feature_dir",
        type=Path,
        required=True,
        help="SAE codes folder (h5 or sparse files: coords are needed)",
    )
    option(
        p,
        "--patch_label_dir",
        type=Path,
        required=True,
        help="folder of <slide>.h5 patch labels (sae1n patch-labels)",
    )
    option(
        p, "--output_dir", type=Path, required=True, help="writes <output_dir>/<exp_id>/evaluation/"
    )
    option(
        p,
        "--unit",
        type=int,
        default=None,
        help="neuron to evaluate (default: rank 1 of the ranking)",
    )
    option(
        p,
        "--ranking_csv",
        type=Path,
        default=None,
        help="ranking CSV (default: <output_dir>/<exp_id>/analysis/sae_analysis_t_test.csv)",
    )
    option(p, "--top_n", type=int, default=10, help="also evaluate the top-N ranked neurons")
    option(
        p,
        "--threshold",
        type=float,
        default=None,
        help="tumour fraction at which a patch is tumour (default: the label files' own, else 0.5)",
    )
    option(
        p,
        "--dataset_csv",
        type=Path,
        default=None,
        help="metadata CSV: slide labels (normal slides then need no label file)",
    )
    option(
        p,
        "--mil_dir",
        type=Path,
        nargs="+",
        default=None,
        help="<results_dir_base>/mil/<exp> folder(s): ABMIL attention / MaxMIL score baselines from fold_<k>/patch_scores",
    )
    option(
        p,
        "--input_feature_dir",
        type=Path,
        default=None,
        help="the features the SAE was trained on: adds the raw_dim, pca, random_sae and linear_probe (oracle) baselines",
    )
    option(
        p,
        "--baselines",
        nargs="+",
        default=None,
        choices=("raw_dim", "pca", "random_sae", "linear_probe"),
        help="which feature baselines (default: all, with --input_feature_dir)",
    )
    option(p, "--sae_checkpoint", type=Path, default=None, help="SAE whose shape random_sae copies (default: the one that encoded the codes)")
    option(p, "--n_components", type=int, default=32, help="principal components ranked by the pca baseline")
    option(p, "--baseline_seed", type=int, default=0, help="seed of the random_sae and pca baselines")
    option(p, "--fold", type=int, default=None, help="MIL fold (default: from splits_<k>.csv)")
    _pooling_options(p)


def run_evaluate_patches(args) -> int:
    from sae1n.neurons.evaluate import evaluate_patches

    res = evaluate_patches(
        args.exp_id,
        args.split_csv_path,
        args.feature_dir,
        args.patch_label_dir,
        args.output_dir,
        unit=args.unit,
        ranking_csv=args.ranking_csv,
        top_n=args.top_n,
        threshold=args.threshold,
        dataset_csv=args.dataset_csv,
        mil_dir=args.mil_dir,
        fold=args.fold,
        pooling=args.pooling,
        topk=args.topk,
        quantile=args.quantile,
        file_type=args.file_type,
        allow_missing=args.allow_missing,
        input_feature_dir=args.input_feature_dir,
        baselines=args.baselines,
        sae_checkpoint=args.sae_checkpoint,
        n_components=args.n_components,
        baseline_seed=args.baseline_seed,
    )
    c = res["chosen"]

    def f(v):
        return "n/a" if v is None else f"{v:.4f}"

    print(
        f"neuron {res['chosen_unit']}: patch AUROC {f(c['patch_auroc'])}, AP {f(c['patch_ap'])}, "
        f"F1 {f(c['f1'])} (P {f(c['precision'])}, R {f(c['recall'])}) at val threshold {f(c['threshold'])}, "
        f"slide AUROC {f(c['slide_auroc'])} on {c['n_slides']} test slides"
    )
    for b in res.get("baselines", []):
        name = b["method"] + (" (oracle)" if b["oracle"] else "")
        print(
            f"{name:>26}: patch AUROC {f(b['patch_auroc'])}, AP {f(b['patch_ap'])}, F1 {f(b['f1'])}, "
            f"slide AUROC {f(b['slide_auroc'])}"
        )
    print(f"wrote {Path(args.output_dir) / args.exp_id / 'evaluation'}")
    return 0
