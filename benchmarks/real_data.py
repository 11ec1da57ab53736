"""Real-data evidence: the chosen SAE neuron against its baselines, over seeds.

One command per data set (each reads ../shared/data, which a fresh clone
lacks; see docs/real_data.md for the measured tables):

    python benchmarks/real_data.py uni              # real UNI v1 embeddings of NCT-CRC-HE patches, TUM
    python benchmarks/real_data.py uni-classes      # one neuron per tissue class, from bag labels alone
    python benchmarks/real_data.py pcam             # real PCam tiles through the handcrafted encoder
    python benchmarks/real_data.py camelyon-tiles   # CAMELYON16 DIDSR tiles: bags, and `demo --tiles`

Every run: ``make_bags`` (weak labels) -> SAE training per seed -> encoding
-> Welch-t ranking on train bags -> ``evaluate_patches`` on test bags with
every baseline (``seed_stability``). Outputs under ``--out`` (default
./real_data_output/<command>); a markdown table is printed and written to
``<out>/table.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
UNI = SHARED / "embeddings" / "uni_nctcrc_subset"
PCAM = SHARED / "tiles" / "pcam_96"
DIDSR = SHARED / "tiles" / "camelyon16_didsr_256"

# The paper's UNI SAE (Supplementary Table 3; configs/sae/camelyon16_uni_0.yaml):
# 1024-d -> 4096 latents (ratio 4), BatchTopK k = 32, batch 4096, 100 epochs, lr 1e-3.
# Scaled to ~400 training rows (a few hundred distinct patches): 256 latents
# (ratio 0.25), k = 8, aux k 64, batch 64, 100 epochs; everything else as the paper.
UNI_SAE = [
    "sae.dict_size_ratio=0.25",
    "sae.top_k=8",
    "sae.top_k_aux=64",
    "training.batch_size=64",
    "training.num_epochs=100",
]
# handcrafted features (64-d): 256 latents (ratio 4), k = 8, zero decoder-bias init (as measured)
HANDCRAFTED_SAE = [
    "sae.act_size=null",
    "sae.dict_size_ratio=4",
    "sae.b_dec_init=zeros",
    "sae.top_k=8",
    "sae.top_k_aux=64",
    "training.batch_size=64",
    "training.num_epochs=100",
]
COMMON_SAE = [
    "sae.device=cpu",
    "training.validation_freq=50",
    "training.checkpoint_freq=0",
    "training.tensorboard=false",
]
UNI_BAGS = dict(bag_size=10, witness_rate=0.2, n_bags=80, split=(0.5, 0.2, 0.3))


def _f(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.3f}"


def stability_table(summary: list[dict]) -> str:
    """Markdown: mean +- std [min, max] over seeds, one row per method."""
    lines = [
        "| method | oracle | patch AUROC | patch AP | F1 (val thr.) | slide AUROC |",
        "|---|---|---|---|---|---|",
    ]
    for r in summary:
        cells = []
        for m in ("patch_auroc", "patch_ap", "f1", "slide_auroc"):
            cells.append(f"{_f(r[m + '_mean'])} ± {_f(r[m + '_std'])} [{_f(r[m + '_min'])}, {_f(r[m + '_max'])}]")
        lines.append(f"| {r['method']} | {'**yes** (patch labels)' if r['oracle'] else 'no'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def single_table(rows: list[dict], key: str | None = None) -> str:
    head = f"| {key} " if key else ""
    lines = [
        head + "| method | oracle | patch AUROC | patch AP | F1 (val thr.) | slide AUROC |",
        ("|---" if key else "") + "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            (f"| {r.get(key, '')} " if key else "")
            + f"| {r['method']} | {'**yes**' if r.get('oracle') else 'no'} | {_f(r['patch_auroc'])} | "
            f"{_f(r['patch_ap'])} | {_f(r['f1'])} | {_f(r['slide_auroc'])} |"
        )
    return "\n".join(lines)


def bag_stability(x, cls, positive, out: Path, bags_kw: dict, sae_overrides: list[str], seeds: int, *, exp="camelyon16_uni_0", inputs=None, ids=None) -> dict:
    """make_bags + seed_stability with every baseline; returns the stability result."""
    from sae1n.datasets.bags import make_bags
    from sae1n.neurons.stability import seed_stability

    b = make_bags(x, cls, out / "bags", positive_class=positive, seed=0, patch_ids=ids, inputs=inputs, **bags_kw)
    over = [
        f"data.feature_dir={b.feature_dir}",
        "data.file_type=h5",
        f"data.split_csv_path={b.split_csv}",
        f"output_dir={out / 'sae'}",
        *sae_overrides,
        *COMMON_SAE,
    ]
    res = seed_stability(
        exp,
        seeds=seeds,
        overrides=over,
        dataset_csv=b.dataset_csv,
        patch_label_dir=b.patch_label_dir,
        input_feature_dir=b.feature_dir,
    )
    summ = json.loads((out / "bags" / "bags.json").read_text())
    res["bags"] = {k: summ[k] for k in ("n_bags", "n_positive_bags", "n_distinct_patches")}
    return res


def _report(out: Path, title: str, command: str, res: dict, extra: str = "") -> str:
    md = [
        f"### {title}",
        "",
        f"`{command}`",
        "",
        f"Bags: {json.dumps(res['bags'])}. Seeds {res['seeds']}; chosen neurons {list(res['chosen_units'].values())}; "
        f"decoder cosine between the seeds' chosen neurons: mean {res['pairwise_cosine_mean']:.3f} (min {res['pairwise_cosine_min']:.3f}); "
        f"closest neuron of another seed: mean cosine {res['best_match_cosine_mean']:.3f}, and it is that seed's chosen neuron in "
        f"{100 * res['best_match_is_chosen_share']:.0f}% of seed pairs (chance level: mean |cosine| of a chosen neuron with all neurons "
        f"of another seed, {res['chance_abs_cosine_mean']:.3f}).",
        "",
        stability_table(res["summary"]),
        "",
        extra,
        f"Files: `{res['out_dir']}/stability_summary.csv`, `stability_runs.csv`, `decoder_cosine.csv`, `stability_strip.png`.",
        "",
    ]
    text = "\n".join(md)
    (out / "table.md").write_text(text)
    print(text)
    return text


def cmd_uni(args) -> None:
    from sae1n.datasets.patch_sources import load_patch_features

    x, cls, ids = load_patch_features(UNI / "features.npy", UNI / "labels.csv")
    out = Path(args.out or ("real_data_output/uni_paper" if args.paper_sae else "real_data_output/uni"))
    sae = [] if args.paper_sae else UNI_SAE  # --paper_sae: the paper's UNI SAE unscaled (4096 latents, k 32, batch 4096)
    res = bag_stability(x, cls, "TUM", out, UNI_BAGS, sae, args.seeds, inputs={"features": UNI / "features.npy", "labels": UNI / "labels.csv"}, ids=ids)
    _report(out, "UNI v1 embeddings (NCT-CRC-HE-100K subset), TUM positive" + (", the paper's SAE unscaled" if args.paper_sae else ""),
            f"python benchmarks/real_data.py uni --seeds {args.seeds}" + (" --paper_sae" if args.paper_sae else ""), res)


def class_eval(exp_dir: Path, x, cls, positive: str, out: Path, exp_id: str, sae_bags_patches: pd.DataFrame, ids=None, inputs=None) -> dict:
    """Bags labelled by ``positive`` from the same patch split as the SAE's bags,
    encoded with that (unchanged) SAE, ranked and evaluated with the baselines."""
    from sae1n.datasets.bags import make_bags
    from sae1n.neurons.evaluate import evaluate_patches
    from sae1n.neurons.ranking import analyze_sae
    from sae1n.sae import save_sae_features

    b = make_bags(x, cls, out / "bags", positive_class=positive, seed=0, patch_ids=ids, inputs=inputs, **UNI_BAGS)
    seen = set(sae_bags_patches.loc[sae_bags_patches["split"] == "train", "row"])
    for split in ("val", "test"):  # no patch the SAE trained on is evaluated
        assert not seen & set(b.patches.loc[b.patches["split"] == split, "row"]), split
    enc = save_sae_features(exp_dir, b.feature_dir, out_dir=out / exp_id / "encoded").out_dir
    analyze_sae(exp_id, b.split_csv, enc, b.dataset_csv, out)
    seed = int(exp_id.rsplit("_", 1)[-1]) if exp_id.rsplit("_", 1)[-1].isdigit() else 0
    return evaluate_patches(exp_id, b.split_csv, enc, b.patch_label_dir, out, top_n=0, dataset_csv=b.dataset_csv,
                            input_feature_dir=b.feature_dir, baseline_seed=seed)


def cmd_uni_classes(args) -> None:
    from sae1n.datasets.patch_sources import load_patch_features

    x, cls, ids = load_patch_features(UNI / "features.npy", UNI / "labels.csv")
    uni = Path(args.uni_out or "real_data_output/uni")
    runs = sorted((uni / "sae" / "camelyon16_uni_0" / "stability" / "runs").glob("seed_*"))
    if not runs:
        raise SystemExit(f"no UNI SAE runs under {uni}: run `python benchmarks/real_data.py uni` first")
    sae_patches = pd.read_csv(uni / "bags" / "patches.csv")
    root = Path(args.out or "real_data_output/uni_classes")
    rows = []
    inputs = {"features": UNI / "features.npy", "labels": UNI / "labels.csv"}
    for c in args.classes:
        per = []
        for run in runs:
            ev = class_eval(run, x, cls, c, root / c, run.name, sae_patches, ids, inputs)
            per += [{"seed": run.name, **r} for r in [ev.chosen, *ev.baselines]]
        df = pd.DataFrame(per)
        for (m, o), g in df.groupby(["method", "oracle"], sort=False):
            rows.append({"class": c, "method": m, "oracle": o, "n_seeds": len(g), **{k: float(g[k].mean()) for k in ("patch_auroc", "patch_ap", "f1", "slide_auroc")},
                         "patch_auroc_min": float(g["patch_auroc"].min())})
    text = "\n".join([
        f"### UNI v1: one neuron per tissue class, each chosen from bag labels alone (mean over the {len(runs)} SAEs of the `uni` run)",
        "",
        f"`python benchmarks/real_data.py uni-classes --classes {' '.join(args.classes)}` (after `uni`)",
        "",
        single_table(rows, "class"),
        "",
    ])
    root.mkdir(parents=True, exist_ok=True)
    (root / "table.md").write_text(text)
    pd.DataFrame(rows).to_csv(root / "classes.csv", index=False)
    print(text)


def cmd_pcam(args) -> None:
    from sae1n.datasets.patch_sources import encode_tiles, list_tiles

    out = Path(args.out or "real_data_output/pcam")
    t0 = time.perf_counter()
    files, cls = list_tiles(PCAM)
    x = encode_tiles(files, "handcrafted")
    enc_s = time.perf_counter() - t0
    ids = [str(f.relative_to(PCAM)) for f in files]
    res = bag_stability(
        x, cls, "tumor", out, dict(bag_size=16, witness_rate=0.25, n_bags=80, split=(0.5, 0.2, 0.3)), HANDCRAFTED_SAE, args.seeds,
        exp="demo", inputs={"tiles": str(PCAM), "tile_files": ids, "encoder": "handcrafted"}, ids=ids,
    )
    _report(out, "PatchCamelyon tiles (96 px, CAMELYON16 lymph nodes) through the handcrafted encoder, tumour positive",
            f"python benchmarks/real_data.py pcam --seeds {args.seeds}", res, f"Encoding {len(files)} tiles: {enc_s:.0f} s on CPU.\n")


def cmd_camelyon_tiles(args) -> None:
    from sae1n.datasets.patch_sources import encode_tiles, list_tiles

    out = Path(args.out or "real_data_output/camelyon_tiles")
    files, cls = list_tiles(DIDSR)
    x = encode_tiles(files, "handcrafted")
    ids = [str(f.relative_to(DIDSR)) for f in files]
    res = bag_stability(
        x, cls, "tumor", out / "bags_run", dict(bag_size=6, witness_rate=0.34, n_bags=30, split=(0.5, 0.2, 0.3)), HANDCRAFTED_SAE, args.seeds,
        exp="demo", inputs={"tiles": str(DIDSR), "tile_files": ids, "encoder": "handcrafted"}, ids=ids,
    )
    _report(out / "bags_run", "CAMELYON16 DIDSR tiles (57 real 256-px patches) as bags, handcrafted encoder",
            f"python benchmarks/real_data.py camelyon-tiles --seeds {args.seeds}", res)
    if args.skip_demo:
        return
    # the same tiles as mosaic slides through the whole pipeline (`sae1n demo --tiles`)
    from sae1n.demo.run import demo_config, run_demo
    from sae1n.neurons.evaluate import evaluate_patches
    from sae1n.pipeline import Pipeline, load_pipeline_config

    demo_out = (out / "demo").resolve()
    t0 = time.perf_counter()
    r = run_demo(demo_out, quick=args.quick, tiles_dir=DIDSR, echo=lambda *a: None)
    demo_s = time.perf_counter() - t0
    p = Pipeline(load_pipeline_config(None, base=demo_config(demo_out, args.quick, DIDSR))).paths
    mil = [p.mil_root / "mil" / e for e in ("demo_abmil", "demo_maxmil") if (p.mil_root / "mil" / e).is_dir()]
    ev = evaluate_patches(
        p.sae_exp, p.split_csv(0), p.encoded_dir, p.patch_label_dir, p.sae_root, top_n=0,
        dataset_csv=p.metadata_csv, mil_dir=mil, fold=0, input_feature_dir=p.feat_dir,
    )
    rows = [ev.chosen, *ev.baselines]
    text = "\n".join([
        f"### `sae1n demo --tiles {DIDSR}`{' --quick' if args.quick else ''} (mosaic slides of the same tiles), with the baselines",
        "",
        f"`python benchmarks/real_data.py camelyon-tiles{' --quick' if args.quick else ''}` (demo: {demo_s:.0f} s on CPU; MIL slide AUROC: "
        + ", ".join(f"{k} {_f(v)}" for k, v in r.mil_test_auc.items()) + ")",
        "",
        single_table(rows),
        "",
        f"Files: `{p.sae_dir}/evaluation/patch_metrics.csv`, `roc_curve.png`.",
        "",
    ])
    (out / "demo_table.md").write_text(text)
    print(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, fn in (("uni", cmd_uni), ("uni-classes", cmd_uni_classes), ("pcam", cmd_pcam), ("camelyon-tiles", cmd_camelyon_tiles)):
        p = sub.add_parser(name)
        p.set_defaults(fn=fn)
        p.add_argument("--out", default=None, help="output folder")
        p.add_argument("--seeds", type=int, default=5, help="SAE seeds")
        if name == "uni":
            p.add_argument("--paper_sae", action="store_true", help="the paper's UNI SAE as is (4096 latents, k 32, batch 4096, 100 epochs)")
        if name == "uni-classes":
            p.add_argument("--classes", nargs="+", default=["TUM", "LYM", "STR", "ADI", "MUC", "NORM"])
            p.add_argument("--uni_out", default=None, help="output folder of the `uni` run (its SAEs are reused)")
        if name == "camelyon-tiles":
            p.add_argument("--quick", action="store_true", help="the demo's quick size")
            p.add_argument("--skip_demo", action="store_true", help="only the bag run")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not SHARED.is_dir():
        raise SystemExit(f"real data not found at {SHARED}: these benchmarks need ../shared/data")
    args.fn(args)


if __name__ == "__main__":
    main()
