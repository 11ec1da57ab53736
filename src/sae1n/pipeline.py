"""One-config run of every stage, in order, with resume.

``sae1n pipeline CONFIG.yaml`` (and ``sae1n demo``, which builds such a config
for generated slides) runs: create-patches -> extract-features ->
create-metadata -> create-splits -> train-sae -> save-sae-features ->
analyze-sae -> patch-labels -> train-mil -> evaluate-patches -> heatmap ->
report. Each stage records a fingerprint of its settings in
``<work_dir>/pipeline_state.json`` when it completes; a re-run skips stages
whose settings are unchanged and whose outputs still exist, and every stage
also resumes its own partial work. The run stops at the first failing stage.
Outputs follow the paper's layout inside ``work_dir``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from sae1n.errors import ConfigError, Sae1nError
from sae1n.io.atomic import atomic_write_json

log = logging.getLogger(__name__)

# Every key a pipeline YAML may set, with its default.
DEFAULTS = {
    "work_dir": "./sae1n-run",
    "task": "camelyon16",  # camelyon16 | panda
    "seed": 42,
    "slides": {"dir": None, "ext": ".tif", "backend": "auto"},
    "annotations": {"dir": None, "format": "auto", "threshold": 0.5},
    "reference_csv": None,  # camelyon16: official test labels
    "panda_csv": None,  # panda: train.csv
    "patching": {
        "patch_size": 256,
        "step_size": None,
        "patch_level": 1,
        "preset": "bwh_biopsy",
        "target_mpp": None,
        "magnification": None,
    },
    "encoder": {
        "name": "conch_v1",
        "checkpoint": None,
        "batch_size": 512,
        "num_workers": None,
        "device": "auto",
    },
    "splits": {"k": 5, "repeats": 1, "fold": 0},
    "sae": {"exp": "camelyon16_conch_0", "overrides": []},
    "neurons": {"pooling": "max", "top_n": 10},
    "mil": {"exps": [], "overrides": []},
    "figures": {"n_slides": 2, "gallery": 16},
}


def load_pipeline_config(
    path: str | os.PathLike | None = None, overrides=(), base: dict | None = None
) -> DictConfig:
    """Merge the defaults, an optional base dict, a YAML file and ``key=value`` overrides."""
    from sae1n.configs import apply_overrides

    cfg = OmegaConf.merge(OmegaConf.create(DEFAULTS), OmegaConf.create(base or {}))
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(
                f"pipeline config {p} not found; see README 'Your own cohort' for an example"
            )
        user = OmegaConf.load(p)
        unknown = set(user.keys()) - set(DEFAULTS)
        if unknown:
            raise ConfigError(
                f"{p}: unknown pipeline keys {sorted(unknown)}; known: {sorted(DEFAULTS)}"
            )
        cfg = OmegaConf.merge(cfg, user)
    cfg = apply_overrides(cfg, list(overrides))
    if cfg.task not in ("camelyon16", "panda"):
        raise ConfigError(f"pipeline task must be camelyon16 or panda, not {cfg.task!r}")
    if not cfg.slides.dir:
        raise ConfigError("pipeline config needs slides.dir (the folder of WSIs)")
    return cfg


@dataclass
class PipelinePaths:
    """Where each stage writes, following the paper's layout."""

    work: Path
    task: str
    encoder: str
    seed: int
    sae_exp: str

    @property
    def clam_dir(self) -> Path:
        return self.work / "features" / self.task / "clam_processed"

    @property
    def feat_dir(self) -> Path:
        return self.clam_dir / f"features_{self.encoder}"

    @property
    def metadata_csv(self) -> Path:
        return self.work / "dataset_csv" / f"{self.task}_metadata.csv"

    @property
    def split_dir(self) -> Path:
        return self.work / "splits" / f"{self.task}_{self.seed}"

    def split_csv(self, fold: int) -> Path:
        return self.split_dir / f"splits_{fold}.csv"

    @property
    def patch_label_dir(self) -> Path:
        return self.work / "patch_labels"

    @property
    def sae_root(self) -> Path:
        return self.work / "output" / "sae"

    @property
    def sae_dir(self) -> Path:
        return self.sae_root / self.sae_exp

    @property
    def encoded_dir(self) -> Path:
        from sae1n.sae.encode import dataset_and_feature_set

        dataset, feature_set = dataset_and_feature_set(self.feat_dir)
        return self.sae_dir / "encoded_features" / dataset / feature_set

    @property
    def ranking_csv(self) -> Path:
        return self.sae_dir / "analysis" / "sae_analysis_t_test.csv"

    @property
    def mil_root(self) -> Path:
        return self.work / "output"


@dataclass
class StageResult:
    name: str
    status: str  # done | skipped
    seconds: float = 0.0
    info: dict = field(default_factory=dict)


class Pipeline:
    """Runs the stages of one pipeline config; see the module docstring."""

    def __init__(
        self, cfg: DictConfig, *, force: bool = False, echo: Callable[[str], None] = print
    ):
        self.cfg = cfg
        self.force = force
        self.echo = echo
        self.paths = PipelinePaths(
            Path(cfg.work_dir).resolve(), cfg.task, cfg.encoder.name, int(cfg.seed), cfg.sae.exp
        )
        self.state_path = self.paths.work / "pipeline_state.json"
        self.state = json.loads(self.state_path.read_text()) if self.state_path.is_file() else {}
        self.results: dict[str, StageResult] = {}

    # ------------------------------------------------------------------ driver
    STAGES = (
        "create_patches",
        "extract_features",
        "create_metadata",
        "create_splits",
        "train_sae",
        "save_sae_features",
        "analyze_sae",
        "patch_labels",
        "train_mil",
        "evaluate_patches",
        "heatmaps",
        "report",
    )

    def run(self, stages=None) -> dict[str, StageResult]:
        self.paths.work.mkdir(parents=True, exist_ok=True)
        for name in stages or self.STAGES:
            fp = self._fingerprint(name)
            done = self.state.get(name)
            if (
                not self.force
                and done
                and done.get("fingerprint") == fp
                and self._outputs_exist(name)
            ):
                self.results[name] = StageResult(name, "skipped", info=done.get("info", {}))
                self.echo(f"[skip] {name} (complete; settings unchanged)")
                continue
            self.echo(f"[run ] {name}")
            t0 = time.perf_counter()
            try:
                info = getattr(self, f"_stage_{name}")() or {}
            except Sae1nError as exc:
                raise Sae1nError(f"stage {name} failed: {exc}") from exc
            except Exception as exc:
                raise Sae1nError(
                    f"stage {name} failed: {type(exc).__name__}: {exc} (re-run with -v for the traceback)"
                ) from exc
            secs = time.perf_counter() - t0
            self.results[name] = StageResult(name, "done", secs, info)
            self.state[name] = {"fingerprint": fp, "seconds": round(secs, 2), "info": info}
            atomic_write_json(self.state_path, self.state)
            self.echo(f"       {name} done in {secs:.1f} s")
        return self.results

    def _fingerprint(self, name: str) -> str:
        # A stage depends on every section that a stage before it or itself reads.
        keys = {
            "create_patches": ["slides", "patching"],
            "extract_features": ["slides", "patching", "encoder"],
            "create_metadata": [
                "slides",
                "patching",
                "encoder",
                "annotations",
                "reference_csv",
                "panda_csv",
                "task",
            ],
            "create_splits": ["splits", "seed"],
            "train_sae": ["splits", "seed", "sae", "encoder", "patching"],
            "save_sae_features": ["sae", "encoder", "patching"],
            "analyze_sae": ["sae", "splits", "neurons"],
            "patch_labels": ["annotations", "patching"],
            "train_mil": ["mil", "sae", "splits", "neurons", "encoder"],
            "evaluate_patches": ["sae", "splits", "neurons", "annotations", "mil"],
            "heatmaps": ["sae", "figures", "neurons"],
            "report": ["sae", "figures", "neurons", "mil"],
        }[name]
        blob = json.dumps(
            {k: OmegaConf.to_container(self.cfg, resolve=True).get(k) for k in keys},
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(f"{name}|{blob}".encode()).hexdigest()[:16]

    def _outputs_exist(self, name: str) -> bool:
        p = self.paths
        check = {
            "create_patches": p.clam_dir / "process_list_autogen.csv",
            "extract_features": p.feat_dir / "h5_files",
            "create_metadata": p.metadata_csv,
            "create_splits": p.split_csv(int(self.cfg.splits.fold)),
            "train_sae": p.sae_dir / "checkpoints" / "sae_best.safetensors",
            "save_sae_features": p.encoded_dir,
            "analyze_sae": p.ranking_csv,
            "patch_labels": p.patch_label_dir,
            "train_mil": p.mil_root / "mil",
            "evaluate_patches": p.sae_dir / "evaluation" / "patch_metrics.json",
            "heatmaps": p.sae_dir / "figures",
            "report": p.sae_dir / "report.html",
        }[name]
        return check.exists()

    # ------------------------------------------------------------------ stages
    def _stage_create_patches(self):
        from sae1n.wsi import create_patches

        c = self.cfg.patching
        frame = create_patches(
            source=self.cfg.slides.dir,
            save_dir=self.paths.clam_dir,
            patch_size=int(c.patch_size),
            step_size=c.step_size,
            patch_level=int(c.patch_level),
            preset=c.preset,
            target_mpp=c.target_mpp,
            magnification=c.magnification,
            backend=self.cfg.slides.backend,
        )
        counts = frame["status"].value_counts().to_dict() if "status" in frame else {}
        n_ok = sum(v for k, v in counts.items() if k in ("processed", "already_exist"))
        if n_ok == 0:
            raise Sae1nError(
                f"no slide was patched ({counts}); see {self.paths.clam_dir / 'process_list_autogen.csv'}"
            )
        return {"statuses": {str(k): int(v) for k, v in counts.items()}}

    def _stage_extract_features(self):
        from sae1n.encoders.extract import extract_features

        e = self.cfg.encoder
        summary = extract_features(
            data_h5_dir=self.paths.clam_dir,
            data_slide_dir=self.cfg.slides.dir,
            feat_dir=self.paths.feat_dir,
            model_name=e.name,
            csv_path=None,
            slide_ext=self.cfg.slides.ext,
            batch_size=int(e.batch_size),
            checkpoint=e.checkpoint,
            num_workers=e.num_workers,
            device=e.device,
            backend=self.cfg.slides.backend,
        )
        if summary.failed:
            names = ", ".join(r.slide_id for r in summary.failed[:5])
            self.echo(
                f"       warning: feature extraction failed for {len(summary.failed)} slide(s): {names}"
            )
        return {"dim": summary.dim, "patches_per_second": round(summary.patches_per_second, 1)}

    def _stage_create_metadata(self):
        from sae1n.datasets import create_metadata

        frame = create_metadata(
            self.cfg.task,
            self.paths.feat_dir / "h5_files",
            self.paths.metadata_csv.parent,
            self.paths.metadata_csv.name,
            annotation_dir=self.cfg.annotations.dir,
            panda_csv=self.cfg.panda_csv,
            reference_csv=self.cfg.reference_csv,
        )
        return {
            "slides": len(frame),
            "labels": {str(k): int(v) for k, v in frame["label"].value_counts().items()},
        }

    def _stage_create_splits(self):
        from sae1n.datasets import create_splits

        s = self.cfg.splits
        paths = create_splits(
            self.paths.metadata_csv,
            self.paths.work / "splits",
            task=self.cfg.task,
            k=int(s.k),
            seed=int(self.cfg.seed),
            repeats=int(s.repeats),
        )
        return {"files": len(paths)}

    def sae_config(self):
        from sae1n.sae.config import load_sae_config

        p = self.paths
        overrides = [
            f"output_dir={p.sae_root}",
            f"data.feature_dir={p.feat_dir}",
            f"data.split_csv_path={p.split_csv(int(self.cfg.splits.fold))}",
            f"seed={int(self.cfg.seed)}",
            *list(self.cfg.sae.overrides),
        ]
        return load_sae_config(self.cfg.sae.exp, overrides)

    def _stage_train_sae(self):
        from sae1n.sae.train import train_sae

        out = train_sae(self.sae_config())
        return {"exp_dir": str(out)}

    def _stage_save_sae_features(self):
        from sae1n.sae.encode import save_sae_features

        summary = save_sae_features(
            self.paths.sae_dir, self.paths.feat_dir, out_dir=self.paths.encoded_dir
        )
        return {"encoded": len(summary.encoded), "skipped": len(summary.skipped)}

    def _stage_analyze_sae(self):
        from sae1n.neurons.ranking import analyze_sae

        p = self.paths
        frame = analyze_sae(
            p.sae_exp,
            p.split_csv(int(self.cfg.splits.fold)),
            p.encoded_dir,
            p.metadata_csv,
            p.sae_root,
            pooling=self.cfg.neurons.pooling,
        )
        top = frame.iloc[0]
        return {
            "top_unit": int(top["unit_id"]),
            "p_value": float(top["p_value"]),
            "t_statistic": float(top["t_statistic"]),
        }

    def _stage_patch_labels(self):
        from sae1n.datasets import create_patch_labels

        if not self.cfg.annotations.dir:
            self.echo(
                "       no annotations.dir: patch labels skipped (patch-level evaluation needs them)"
            )
            return {"skipped": True}
        frame = create_patch_labels(
            self.paths.clam_dir / "patches",
            self.cfg.annotations.dir,
            self.paths.patch_label_dir,
            threshold=float(self.cfg.annotations.threshold),
            annotation_format=self.cfg.annotations.format,
            panda_csv=self.cfg.panda_csv,
        )
        return {"slides": len(frame)}

    def mil_overrides(self, exp: str) -> list[str]:
        """Point a MIL experiment at this run's folders (SAE variants at its SAE codes)."""
        from sae1n.configs import load_experiment

        p = self.paths
        cfg = load_experiment("mil", exp)
        uses_sae = "encoded_features" in str(cfg.dataset.data_dir) or bool(
            cfg.features.get("use_sae_selected_units") and "sae" in exp
        )
        fold = int(self.cfg.splits.fold)
        ov = [
            f"dataset.csv_path={p.metadata_csv}",
            f"split_dir={p.split_dir}",
            f"results_dir_base={p.mil_root}",
            f"seed={int(self.cfg.seed)}",
        ]
        if uses_sae:
            ov += [
                f"dataset.data_dir={p.encoded_dir.parent}",
                f"features.backbone={p.encoded_dir.name}",
                f"features.sae_unit_summary_path={p.ranking_csv}",
                f"k_start={fold}",
                f"k_end={fold + 1}",
            ]
        else:
            ov += [f"dataset.data_dir={p.clam_dir}", f"features.backbone={p.feat_dir.name}"]
        return ov + list(self.cfg.mil.overrides)

    def _stage_train_mil(self):
        from sae1n.mil.train import train_mil_experiment

        info = {}
        for exp in self.cfg.mil.exps:
            summary = train_mil_experiment(exp, self.mil_overrides(exp))
            mean = summary[summary["folds"].astype(str) == "mean"]
            row = mean.iloc[0] if len(mean) else summary.iloc[0]
            info[exp] = {
                "test_auc": _num(row.get("test_auc")),
                "val_auc": _num(row.get("val_auc")),
                "test_acc": _num(row.get("test_acc")),
            }
        return info

    def _abmil_dir(self) -> Path | None:
        for exp in self.cfg.mil.exps:
            if "abmil" in exp and (self.paths.mil_root / "mil" / exp).is_dir():
                return self.paths.mil_root / "mil" / exp
        return None

    def _stage_evaluate_patches(self):
        from sae1n.neurons.evaluate import evaluate_patches

        p = self.paths
        if not p.patch_label_dir.is_dir():
            self.echo("       no patch labels: patch-level evaluation skipped")
            return {"skipped": True}
        result = evaluate_patches(
            p.sae_exp,
            p.split_csv(int(self.cfg.splits.fold)),
            p.encoded_dir,
            p.patch_label_dir,
            p.sae_root,
            top_n=int(self.cfg.neurons.top_n),
            dataset_csv=p.metadata_csv,
            mil_dir=self._abmil_dir(),
            fold=int(self.cfg.splits.fold),
            pooling=self.cfg.neurons.pooling,
        )
        chosen = result["chosen"]
        return {
            "unit": int(result["chosen_unit"]),
            **{
                k: _num(chosen.get(k))
                for k in ("patch_auroc", "patch_ap", "slide_auroc", "test_f1")
            },
        }

    def figure_slides(self) -> list[str]:
        """Test slides to draw: tumour slides first (most tumour patches), then others."""
        import pandas as pd

        from sae1n.datasets import read_split

        split = read_split(self.paths.split_csv(int(self.cfg.splits.fold)))
        test = list(split["test"]) or list(split["val"])
        labels = pd.read_csv(self.paths.metadata_csv).set_index("slide_id")["label"].to_dict()
        tumour = [s for s in test if str(labels.get(s)) == "tumor"]
        rest = [s for s in test if s not in tumour]
        return (tumour + rest)[: int(self.cfg.figures.n_slides)]

    def _stage_heatmaps(self):
        from sae1n.viz.figures import neuron_figures

        p = self.paths
        abmil = self._abmil_dir()
        attention = abmil / f"fold_{int(self.cfg.splits.fold)}" / "patch_scores" if abmil else None
        out = neuron_figures(
            p.encoded_dir,
            self.cfg.slides.dir,
            p.sae_dir / "figures",
            ranking_csv=p.ranking_csv,
            slide_ids=self.figure_slides(),
            slide_ext=self.cfg.slides.ext,
            attention_dir=attention if attention and attention.is_dir() else None,
            patch_label_dir=p.patch_label_dir if p.patch_label_dir.is_dir() else None,
            annotation_dir=self.cfg.annotations.dir,
            gallery_n=int(self.cfg.figures.gallery),
            geojson=True,
            overwrite=True,
        )
        return {"files": len(out) if hasattr(out, "__len__") else 0}

    def _stage_report(self):
        from sae1n.viz.reporting import report

        return {"report": str(report(self.paths.sae_dir, overwrite=True))}


def _num(v):
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if f != f else round(f, 4)


def run_pipeline(
    config_path, overrides=(), *, force: bool = False, stages=None, echo=print
) -> dict[str, StageResult]:
    """Run every stage of the pipeline YAML ``config_path`` (see :data:`DEFAULTS`)."""
    cfg = load_pipeline_config(config_path, overrides)
    return Pipeline(cfg, force=force, echo=echo).run(stages)
