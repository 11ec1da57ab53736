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
    option(
        p,
        "--compat",
        default="default",
        choices=["default", "paper"],
        help="paper: the paper's float32 t-test, sort and tie-break (5-column CSV)",
    )
    option(p, "--overwrite", action="store_true", help="recompute a ranking made with other settings or inputs")
    _pooling_options(p)


def run_analyze_sae(args) -> int:
    from sae1n.neurons.ranking import analyze_sae
    from sae1n.neurons.ranking_csv import ranking_csv_path

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
        compat=args.compat,
        overwrite=args.overwrite,
    )
    stat = "spearman_rho" if args.multiclass else "t_statistic"
    print(f"ranked {len(df)} neurons ({args.pooling} pooling); top 5:")
    cols = ["rank", "unit_id", stat, "p_value", "q_value", "slide_auroc", "direction"]
    print(df[[c for c in cols if c in df.columns]].head(5).to_string(index=False))
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
    option(p, "--label_column", default="label", help="slide label column of --dataset_csv (e.g. one made by make-bags for another class)")
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
        label_column=args.label_column,
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
    from sae1n.viz.evaluation import plot_patch_evaluation

    plot_patch_evaluation(res)
    c = res.chosen

    def f(v):
        return "n/a" if v is None else f"{v:.4f}"

    print(
        f"neuron {res.chosen_unit}: patch AUROC {f(c['patch_auroc'])}, AP {f(c['patch_ap'])}, "
        f"F1 {f(c['f1'])} (P {f(c['precision'])}, R {f(c['recall'])}) at val threshold {f(c['threshold'])}, "
        f"slide AUROC {f(c['slide_auroc'])} on {c['n_slides']} test slides"
    )
    for b in res.baselines:
        name = b["method"] + (" (oracle)" if b["oracle"] else "")
        print(
            f"{name:>26}: patch AUROC {f(b['patch_auroc'])}, AP {f(b['patch_ap'])}, F1 {f(b['f1'])}, "
            f"slide AUROC {f(b['slide_auroc'])}"
        )
    print(f"wrote {Path(args.output_dir) / args.exp_id / 'evaluation'}")
    return 0


def configure_stability(p: argparse.ArgumentParser) -> None:
    p.add_argument("exp", help="SAE experiment config (as for train-sae exp=<name>)")
    p.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. data.feature_dir=...")
    option(p, "--seeds", type=int, nargs="+", default=[5], help="a count N (seeds cfg.seed+0..N-1) or several explicit seeds (default 5)")
    option(p, "--dataset_csv", type=Path, required=True, help="metadata CSV with slide labels")
    option(p, "--patch_label_dir", type=Path, required=True, help="folder of <slide>.h5 patch labels")
    option(p, "--split_csv_path", type=Path, default=None, help="split (default: the config's data.split_csv_path)")
    option(p, "--output_dir", type=Path, default=None, help="SAE output root (default: the config's output_dir); writes <output_dir>/<exp>/stability/")
    option(p, "--input_feature_dir", type=Path, default=None, help="the SAE's input features: evaluates the baselines for every seed too")
    option(p, "--baselines", nargs="+", default=None, choices=("raw_dim", "pca", "random_sae", "linear_probe"), help="feature baselines (default: all, with --input_feature_dir)")
    option(p, "--mil_dir", type=Path, nargs="+", default=None, help="MIL experiment folder(s) with patch_scores")
    option(p, "--pooling", choices=_POOLINGS, default="max", help="slide pooling of the ranking (paper: max)")
    option(p, "--label_column", default="label", help="slide label column of --dataset_csv")


def run_stability(args) -> int:
    from sae1n.neurons.stability import seed_stability

    seeds = args.seeds[0] if len(args.seeds) == 1 else args.seeds
    res = seed_stability(
        args.exp,
        seeds=seeds,
        overrides=args.overrides,
        split_csv_path=args.split_csv_path,
        dataset_csv=args.dataset_csv,
        patch_label_dir=args.patch_label_dir,
        output_dir=args.output_dir,
        input_feature_dir=args.input_feature_dir,
        baselines=args.baselines,
        mil_dir=args.mil_dir,
        pooling=args.pooling,
        label_column=args.label_column,
    )
    print(f"seeds {res['seeds']}: chosen neurons {list(res['chosen_units'].values())}")
    print(
        f"decoder cosine of the chosen neurons: mean {res['pairwise_cosine_mean']:.3f}, min {res['pairwise_cosine_min']:.3f}; "
        f"best match in another seed: mean cosine {res['best_match_cosine_mean']:.3f}, "
        f"is that seed's chosen neuron in {100 * res['best_match_is_chosen_share']:.0f}% of pairs "
        f"(chance: mean |cosine| {res['chance_abs_cosine_mean']:.3f})"
    )
    for r in res["summary"]:
        name = r["method"] + (" (oracle)" if r["oracle"] else "")
        print(
            f"{name:>22}: patch AUROC {r['patch_auroc_mean']:.3f} +- {r['patch_auroc_std']:.3f} "
            f"[{r['patch_auroc_min']:.3f}, {r['patch_auroc_max']:.3f}], slide AUROC {r['slide_auroc_mean']:.3f} +- {r['slide_auroc_std']:.3f}"
        )
    print(f"wrote {res['out_dir']}")
    return 0


def configure_name_neurons(p: argparse.ArgumentParser) -> None:
    p.add_argument("exp_dir", type=Path, help="output/sae/<exp> (its checkpoints/ hold the SAE)")
    option(
        p,
        "--encoder",
        required=True,
        help="CLIP-family encoder whose text tower names the neurons (conch_v1, clip_vit_b16, plip); "
        "the SAE must be trained on its features",
    )
    option(
        p,
        "--encoder_checkpoint",
        type=Path,
        default=None,
        help="its weights (default: its environment variable, then the hub); random weights give meaningless names",
    )
    option(
        p,
        "--prompts",
        type=Path,
        default=None,
        help="prompt file, one per line, # comments (default: a built-in list of 20 pathology prompts)",
    )
    option(
        p,
        "--sae_checkpoint",
        type=Path,
        default=None,
        help="SAE checkpoint file (default: the experiment's best)",
    )
    option(p, "--top_k", type=int, default=3, help="best-matching prompts kept per neuron")
    option(p, "--device", default="cpu", help="device of the text tower")
    option(
        p,
        "--overwrite",
        action="store_true",
        help="rename when the names were made with other settings or inputs (default: refuse and say which)",
    )


def run_name_neurons(args) -> int:
    from sae1n.neurons.naming import name_experiment_with_encoder, read_prompts

    prompts = read_prompts(args.prompts) if args.prompts else None
    path, written = name_experiment_with_encoder(
        args.exp_dir,
        args.encoder,
        encoder_checkpoint=args.encoder_checkpoint,
        prompts=prompts,
        sae_checkpoint=args.sae_checkpoint,
        top_k=args.top_k,
        device=args.device,
        overwrite=args.overwrite,
    )
    if written:
        print(f"named the neurons with {args.encoder}'s text tower -> {path} (report and browse show them)")
    else:
        print(f"{path} is current (same SAE, encoder and prompts); kept")
    return 0
