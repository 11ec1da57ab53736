"""The work of each pipeline stage: one method per stage calling the stage's
public API with the typed config (:class:`~sae1n.pipeline.config.PipelineConfig`)
and the paper's paths (:class:`~sae1n.pipeline.paths.PipelinePaths`).

:class:`StageSteps` is a mixin of :class:`sae1n.pipeline.runner.Pipeline`,
which owns the order, the fingerprints and the outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sae1n.errors import Sae1nError
from sae1n.pipeline.config import PipelineConfig
from sae1n.pipeline.paths import PipelinePaths
from sae1n.pipeline.results import (
    AnalysisInfo,
    EncodingInfo,
    EvaluationInfo,
    ExtractionInfo,
    FiguresInfo,
    LabelsInfo,
    MetadataInfo,
    MilRunInfo,
    PatchingInfo,
    ReportInfo,
    SaeInfo,
    SplitsInfo,
)


class StageSteps:
    """``_stage_<name>()`` for every stage of :data:`sae1n.pipeline.graph.GRAPH`."""

    cfg: PipelineConfig
    paths: PipelinePaths
    force: bool
    echo: Callable[[str], None]

    def _stage_create_patches(self):
        from sae1n.wsi import create_patches

        c = self.cfg.patching
        frame = create_patches(
            source=self.cfg.slides.dir,
            save_dir=self.paths.clam_dir,
            patch_size=c.patch_size,
            step_size=c.step_size,
            patch_level=c.patch_level,
            preset=c.preset,
            target_mpp=c.target_mpp,
            magnification=c.magnification,
            backend=self.cfg.slides.backend,
            overwrite=True,  # the pipeline owns its work_dir: stale slides are redone
            auto_skip=not self.force,  # --force: every slide
        )
        counts = frame["status"].value_counts().to_dict() if "status" in frame else {}
        n_ok = sum(v for k, v in counts.items() if k in ("processed", "already_exist"))
        if n_ok == 0:
            raise Sae1nError(
                f"no slide was patched ({counts}); see {self.paths.clam_dir / 'process_list_autogen.csv'}"
            )
        return PatchingInfo({str(k): int(v) for k, v in counts.items()})

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
            batch_size=e.batch_size,
            checkpoint=e.checkpoint,
            num_workers=e.num_workers,
            device=e.device,
            backend=self.cfg.slides.backend,
            overwrite=True,
            auto_skip=not self.force,
        )
        if summary.failed:
            names = ", ".join(r.slide_id for r in summary.failed[:5])
            self.echo(
                f"       warning: feature extraction failed for {len(summary.failed)} slide(s): {names}"
            )
        return ExtractionInfo(
            summary.dim,
            summary.count("extracted"),
            summary.count("skipped"),
            len(summary.failed),
            round(summary.patches_per_second, 1),
        )

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
            overwrite=True,
        )
        return MetadataInfo(
            len(frame), {str(k): int(v) for k, v in frame["label"].value_counts().items()}
        )

    def _stage_create_splits(self):
        from sae1n.datasets import create_splits

        s = self.cfg.splits
        paths = create_splits(
            self.paths.metadata_csv,
            self.paths.work / "splits",
            task=self.cfg.task,
            k=s.k,
            seed=self.cfg.seed,
            repeats=s.repeats,
            overwrite=True,
        )
        return SplitsInfo([p.name for p in paths])

    def sae_config(self):
        """The SAE experiment's config, pointed at this run's features and split."""
        from sae1n.sae.config import load_sae_config

        p = self.paths
        overrides = [
            f"output_dir={p.sae_root}",
            f"data.feature_dir={p.feat_dir}",
            f"data.split_csv_path={p.split_csv(self.cfg.splits.fold)}",
            f"seed={self.cfg.seed}",
            f"compat={self.cfg.compat}",
            *self.cfg.sae.overrides,
        ]
        return load_sae_config(self.cfg.sae.exp, overrides)

    def _stage_train_sae(self):
        from sae1n.sae.train import train_sae

        out = train_sae(self.sae_config())
        return SaeInfo(str(out))

    def _stage_save_sae_features(self):
        from sae1n.sae.encode import save_sae_features

        summary = save_sae_features(
            self.paths.sae_dir, self.paths.feat_dir, out_dir=self.paths.encoded_dir, compat=self.cfg.compat
        )
        return EncodingInfo(len(summary.encoded), len(summary.skipped))

    def _stage_analyze_sae(self):
        from sae1n.neurons.ranking import analyze_sae

        p = self.paths
        frame = analyze_sae(
            p.sae_exp,
            p.split_csv(self.cfg.splits.fold),
            p.encoded_dir,
            p.metadata_csv,
            p.sae_root,
            pooling=self.cfg.neurons.pooling,
            compat=self.cfg.compat,
        )
        top = frame.iloc[0]
        return AnalysisInfo(int(top["unit_id"]), float(top["p_value"]), float(top["t_statistic"]))

    def _stage_patch_labels(self):
        from sae1n.datasets import create_patch_labels

        a = self.cfg.annotations
        if not a.dir:
            self.echo(
                "       no annotations.dir: patch labels skipped (patch-level evaluation needs them)"
            )
            return LabelsInfo(skipped=True)
        frame = create_patch_labels(
            self.paths.clam_dir / "patches",
            a.dir,
            self.paths.patch_label_dir,
            threshold=a.threshold,
            annotation_format=a.format,
            panda_csv=self.cfg.panda_csv,
            overwrite=True,
        )
        return LabelsInfo(slides=len(frame))

    def mil_overrides(self, exp: str) -> list[str]:
        """Point a MIL experiment at this run's folders (SAE variants at its SAE codes)."""
        from sae1n.configs import load_experiment

        p = self.paths
        cfg = load_experiment("mil", exp)
        uses_sae = "encoded_features" in str(cfg.dataset.data_dir) or bool(
            cfg.features.get("use_sae_selected_units") and "sae" in exp
        )
        fold = self.cfg.splits.fold
        ov = [
            f"dataset.csv_path={p.metadata_csv}",
            f"split_dir={p.split_dir}",
            f"results_dir_base={p.mil_root}",
            f"seed={self.cfg.seed}",
            f"compat={self.cfg.compat}",
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
            info[exp] = MilRunInfo(_num(row.get("test_auc")), _num(row.get("val_auc")), _num(row.get("test_acc")))
        return info

    def _mil_dirs(self) -> list[Path]:
        """Every MIL run of this pipeline (their patch scores are baselines)."""
        root = self.paths.mil_root / "mil"
        return [root / e for e in self.cfg.mil.exps if (root / e).is_dir()]

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
            return EvaluationInfo(skipped=True)
        result = evaluate_patches(
            p.sae_exp,
            p.split_csv(self.cfg.splits.fold),
            p.encoded_dir,
            p.patch_label_dir,
            p.sae_root,
            top_n=self.cfg.neurons.top_n,
            dataset_csv=p.metadata_csv,
            mil_dir=self._mil_dirs(),
            fold=self.cfg.splits.fold,
            pooling=self.cfg.neurons.pooling,
            input_feature_dir=p.feat_dir,  # the raw_dim / pca / random_sae / linear-probe baselines
        )
        from sae1n.viz.evaluation import plot_patch_evaluation

        plot_patch_evaluation(result)
        chosen = result.chosen
        return EvaluationInfo(
            unit=int(result.chosen_unit),
            **{k: _num(chosen.get(k)) for k in ("patch_auroc", "patch_ap", "slide_auroc", "f1")},
        )

    def figure_slides(self) -> list[str]:
        """Test slides to draw: tumour slides first (most tumour patches), then others."""
        from sae1n.datasets import read_split
        from sae1n.io.tables import read_csv

        split = read_split(self.paths.split_csv(self.cfg.splits.fold))
        test = list(split["test"]) or list(split["val"])
        labels = read_csv(self.paths.metadata_csv, "metadata CSV", "re-run create-metadata")
        labels = labels.set_index("slide_id")["label"].to_dict()
        tumour = [s for s in test if str(labels.get(s)) == "tumor"]
        rest = [s for s in test if s not in tumour]
        return (tumour + rest)[: self.cfg.figures.n_slides]

    def _stage_heatmaps(self):
        from sae1n.viz.figures import neuron_figures

        p = self.paths
        abmil = self._abmil_dir()
        attention = abmil / f"fold_{self.cfg.splits.fold}" / "patch_scores" if abmil else None
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
            gallery_n=self.cfg.figures.gallery,
            geojson=True,
            overwrite=True,
        )
        n_files = len(out["heatmaps"]) + len(out["geojson"]) + (1 if out.get("gallery") else 0)
        return FiguresInfo(int(out["unit"]), n_files)

    def _stage_report(self):
        from sae1n.viz.reporting import report

        return ReportInfo(str(report(self.paths.sae_dir, overwrite=True)))


def _num(v):
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if f != f else round(f, 4)
