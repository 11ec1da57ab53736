"""``sae1n demo``: the whole method on generated slides, no downloads, no GPU.

Generates a small CAMELYON16-like cohort (or mosaics of real tiles with
``tiles_dir``), writes the equivalent pipeline YAML next to it, and runs every
stage through :class:`sae1n.pipeline.Pipeline` — the same public functions the
subcommands call — with the ``handcrafted`` encoder.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from sae1n.io.atomic import atomic_write_text

FULL = {
    "n_normal": 12,
    "n_tumor": 12,
    "n_test": 8,
    "size": (4096, 4096),
    "sae_epochs": 20,
    "mil_epochs": 20,
}
QUICK = {
    "n_normal": 5,
    "n_tumor": 5,
    "n_test": 4,
    "size": (2560, 2560),
    "sae_epochs": 8,
    "mil_epochs": 8,
}


@dataclass
class DemoResult:
    out_dir: Path
    report: Path
    unit: int
    patch_auroc: float | None
    patch_ap: float | None
    neuron_slide_auroc: float | None
    mil_test_auc: dict
    seconds: float
    n_test_slides: int | None = None  # slides behind each slide AUROC


# below this many test slides a slide AUROC is not worth a headline
MIN_SLIDES_FOR_AUROC = 10


def demo_config(out_dir: Path, quick: bool, tiles_dir=None, seed: int = 0) -> dict:
    """The pipeline settings the demo uses (also written to ``<out>/pipeline.yaml``)."""
    size = QUICK if quick else FULL
    data = out_dir / "data"
    return {
        "work_dir": str(out_dir),
        "task": "camelyon16",
        "seed": 42,
        "slides": {"dir": str(data / "slides"), "ext": ".tif", "backend": "auto"},
        "annotations": {"dir": str(data / "annotations"), "format": "asap", "threshold": 0.5},
        "reference_csv": str(data / "reference.csv"),
        "patching": {"patch_size": 256, "patch_level": 0, "preset": "bwh_biopsy"},
        "encoder": {"name": "handcrafted", "batch_size": 256, "num_workers": 0, "device": "cpu"},
        "splits": {"k": 5, "repeats": 1, "fold": 0},
        "sae": {
            "exp": "demo",
            # real tiles vary more than painted tissue: a 256-latent dictionary
            # (the generated slides' features are low-rank: 32, see configs/sae/demo.yaml)
            "overrides": [f"training.num_epochs={size['sae_epochs']}", "sae.device=cpu"]
            + ([] if tiles_dir is None else ["sae.dict_size_ratio=4"]),
        },
        "neurons": {"pooling": "max", "top_n": 5},
        "mil": {
            "exps": ["demo_maxmil", "demo_abmil", "demo_sae_1n_maxmil"],
            "overrides": [f"max_epochs={size['mil_epochs']}", "device=cpu"],
        },
        "figures": {"n_slides": 2, "gallery": 16},
    }


def run_demo(
    out_dir: str | os.PathLike = "./sae1n-demo",
    *,
    quick: bool = False,
    tiles_dir=None,
    seed: int = 0,
    workers: int = 2,
    force: bool = False,
    echo=print,
) -> DemoResult:
    """Generate the demo cohort into ``out_dir`` and run the whole pipeline on it."""
    from sae1n.demo.cohort import generate_cohort
    from sae1n.pipeline import Pipeline, load_pipeline_config

    t0 = time.perf_counter()
    out = Path(out_dir).resolve()
    size = QUICK if quick else FULL
    echo(
        f"Generating {size['n_normal'] + size['n_tumor'] + size['n_test']} slides into {out / 'data'} ..."
    )
    generate_cohort(
        out / "data",
        n_normal=size["n_normal"],
        n_tumor=size["n_tumor"],
        n_test=size["n_test"],
        size=size["size"],
        seed=seed,
        tiles_dir=tiles_dir,
        workers=workers,
    )
    base = demo_config(out, quick, tiles_dir, seed)
    atomic_write_text(
        out / "pipeline.yaml",
        "# the demo as a `sae1n pipeline` config\n" + OmegaConf.to_yaml(OmegaConf.create(base)),
    )
    cfg = load_pipeline_config(None, base=base)
    pipe = Pipeline(cfg, force=force, echo=echo)
    results = pipe.run()
    ev = results["evaluate_patches"].info
    from sae1n.datasets import read_split

    n_test = len(read_split(pipe.paths.split_csv(int(cfg.splits.fold)))["test"])
    mil = {k: v.get("test_auc") for k, v in results["train_mil"].info.items()}
    result = DemoResult(
        out_dir=out,
        report=pipe.paths.sae_dir / "report.html",
        unit=int(
            ev["unit"] if ev.get("unit") is not None else results["analyze_sae"].info.get("top_unit", -1)
        ),
        patch_auroc=ev.get("patch_auroc"),
        patch_ap=ev.get("patch_ap"),
        neuron_slide_auroc=ev.get("slide_auroc"),
        mil_test_auc=mil,
        seconds=time.perf_counter() - t0,
        n_test_slides=n_test,
    )
    return result


def format_summary(r: DemoResult) -> str:
    """The demo's closing summary; slide AUROCs from fewer than
    ``MIN_SLIDES_FOR_AUROC`` test slides are marked not meaningful."""

    def f(v):
        return "n/a" if v is None else f"{v:.3f}"

    def slide_auc(v):
        n = r.n_test_slides
        if v is not None and n is not None and n < MIN_SLIDES_FOR_AUROC:
            return f"not meaningful ({n} test slides; measured {v:.3f})"
        return f(v) + (f" ({n} test slides)" if n is not None else "")

    lines = [
        "",
        "sae1n demo summary",
        f"  selected neuron (rank 1 by Welch t-test on train slides): unit {r.unit}",
        f"  patch-level tumour detection on test slides:  AUROC {f(r.patch_auroc)}   AP {f(r.patch_ap)}",
        f"  slide AUROC of the neuron's max-pooled activation: {slide_auc(r.neuron_slide_auroc)}",
    ]
    for exp, auc in r.mil_test_auc.items():
        lines.append(f"  slide AUROC {exp}: {slide_auc(auc)}")
    lines += _sae_health_lines(r.report.parent / "logs" / "metrics.csv")
    lines += [f"  total time: {r.seconds:.0f} s", f"  report: {r.report}", f"  explore every neuron: sae1n browse {r.report.parent} --slides {r.out_dir / 'data' / 'slides'} --annotations {r.out_dir / 'data' / 'annotations'}", ""]
    return "\n".join(lines)


def _sae_health_lines(metrics_csv: Path) -> list[str]:
    """The SAE's last validation: dead / dense latents and FVU (sae1n.sae.loggers)."""
    from sae1n.sae.loggers import health_summary

    line = health_summary(metrics_csv)
    return [f"  SAE dictionary (validation): {line}"] if line else []
