"""One-config run of every stage, in order, with resume.

``sae1n pipeline CONFIG.yaml`` (and ``sae1n demo``, which builds such a config
for generated slides) runs: create-patches -> extract-features ->
create-metadata -> create-splits -> train-sae -> save-sae-features ->
analyze-sae -> patch-labels -> train-mil -> evaluate-patches -> heatmap ->
report, as a dependency graph (:data:`GRAPH`): each stage declares the stages
whose outputs it reads and the config keys it uses, and its fingerprint is a
hash of those settings (and the identity of the user files they name) plus the
fingerprints of its upstream stages. ``<work_dir>/pipeline_state.json`` records
each completed stage's fingerprint; a re-run skips a stage whose fingerprint
is unchanged and whose outputs exist, and reruns exactly the stages downstream
of a change. The pipeline owns its ``work_dir``: a changed stage replaces its
outputs (stages with per-file provenance are called with ``overwrite=True``;
the others' old outputs are moved aside, deleted on success and restored on
failure), so a changed SAE setting starts a new SAE run. The run stops at the
first failing stage. Outputs follow the paper's layout inside ``work_dir``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
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
    "compat": "default",  # paper: train-sae, save-sae-features, analyze-sae, train-mil as the paper's code
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
    if str(cfg.compat) not in ("default", "paper"):
        raise ConfigError(f"pipeline compat must be default or paper, not {cfg.compat!r}")
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


@dataclass(frozen=True)
class Stage:
    """One node of the pipeline graph: the stages whose outputs it reads and
    the config keys (dotted) that shape its own outputs."""

    name: str
    reads: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()


# The graph, in run order. A stage's fingerprint is a hash of its keys' values
# (and the identity of the files they name) plus the fingerprints of the
# stages it reads, so a change anywhere reruns exactly what lies downstream.
GRAPH: tuple[Stage, ...] = (
    Stage("create_patches", (), ("slides.dir", "slides.ext", "patching")),
    Stage("extract_features", ("create_patches",), ("slides.dir", "slides.ext", "encoder.name", "encoder.checkpoint")),
    Stage("create_metadata", ("extract_features",), ("task", "annotations.dir", "reference_csv", "panda_csv")),
    Stage("create_splits", ("create_metadata",), ("task", "seed", "splits.k", "splits.repeats")),
    Stage("train_sae", ("extract_features", "create_splits"), ("sae", "seed", "splits.fold", "compat")),
    Stage("save_sae_features", ("train_sae", "extract_features"), ("compat",)),
    Stage(
        "analyze_sae", ("save_sae_features", "create_splits", "create_metadata"), ("neurons.pooling", "splits.fold", "compat")
    ),
    Stage("patch_labels", ("create_patches",), ("annotations", "panda_csv")),
    Stage(
        "train_mil",
        ("extract_features", "save_sae_features", "analyze_sae", "create_splits", "create_metadata"),
        ("mil", "seed", "splits.fold", "compat"),
    ),
    Stage(
        "evaluate_patches",
        ("save_sae_features", "analyze_sae", "patch_labels", "create_splits", "create_metadata", "train_mil"),
        ("neurons", "splits.fold"),
    ),
    Stage(
        "heatmaps",
        ("save_sae_features", "analyze_sae", "patch_labels", "train_mil", "create_splits", "create_metadata"),
        ("figures", "slides.dir", "slides.ext", "annotations.dir", "splits.fold"),
    ),
    Stage(
        "report",
        ("train_sae", "analyze_sae", "evaluate_patches", "heatmaps", "train_mil"),
        (),
    ),
)
STAGE_SCHEMA = 1
# subcommand spellings that differ from the stage name beyond '-' vs '_'
_ALIASES = {"heatmap": "heatmaps", "patch_label": "patch_labels"}
# folders of the SAE experiment written by stages after train_sae
_SAE_DOWNSTREAM = ("encoded_features", "analysis", "evaluation", "figures", "report.html")


def stage_names() -> list[str]:
    return [s.name for s in GRAPH]


def resolve_stages(names) -> list[str]:
    """Stage names in pipeline order from subcommand (``train-sae``) or
    underscore (``train_sae``) spellings; unknown names are one error listing the valid ones."""
    valid = stage_names()
    if not names:
        return valid
    wanted, unknown = set(), []
    for raw in names:
        for part in str(raw).split(","):
            key = part.strip().lower().replace("-", "_")
            if not key:
                continue
            key = _ALIASES.get(key, key)
            (wanted.add(key) if key in valid else unknown.append(part))
    if unknown:
        raise ConfigError(
            f"unknown stage(s) {', '.join(map(repr, unknown))}; valid stages (in order): "
            + ", ".join(n.replace("_", "-") for n in valid)
        )
    return [n for n in valid if n in wanted]


@dataclass
class StageResult:
    """What one stage did: ``done`` or ``skipped`` (fingerprint and outputs current)."""

    name: str
    status: str
    seconds: float = 0.0
    info: dict = field(default_factory=dict)
    fingerprint: str = ""


@dataclass
class PatchingInfo:
    statuses: dict


@dataclass
class ExtractionInfo:
    dim: int
    extracted: int
    skipped: int
    failed: int
    patches_per_second: float


@dataclass
class MetadataInfo:
    slides: int
    labels: dict


@dataclass
class SplitsInfo:
    files: list


@dataclass
class SaeInfo:
    exp_dir: str


@dataclass
class EncodingInfo:
    encoded: int
    skipped: int


@dataclass
class AnalysisInfo:
    top_unit: int
    p_value: float
    t_statistic: float


@dataclass
class LabelsInfo:
    slides: int = 0
    skipped: bool = False


@dataclass
class EvaluationInfo:
    unit: int | None = None
    patch_auroc: float | None = None
    patch_ap: float | None = None
    slide_auroc: float | None = None
    f1: float | None = None
    skipped: bool = False


@dataclass
class FiguresInfo:
    unit: int
    files: int


@dataclass
class ReportInfo:
    report: str


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
        self.state = self._read_state()
        self.results: dict[str, StageResult] = {}

    STAGES = tuple(stage_names())

    def _read_state(self) -> dict:
        if not self.state_path.is_file():
            return {}
        try:
            state = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            self.echo(f"warning: {self.state_path} is unreadable; every stage will run")
            return {}
        return state if isinstance(state, dict) else {}

    # ------------------------------------------------------------ fingerprints
    def fingerprints(self) -> dict[str, str]:
        """Every stage's fingerprint: its own settings plus its upstream fingerprints."""
        from sae1n.io.provenance import Provenance

        container = OmegaConf.to_container(self.cfg, resolve=True)
        out: dict[str, str] = {}
        for stage in GRAPH:
            settings = {k: _select(container, k) for k in stage.keys}
            prov = Provenance.make(
                f"pipeline_stage:{stage.name}",
                STAGE_SCHEMA,
                settings,
                {
                    **{f"stage:{u}": out[u] for u in stage.reads},
                    **self._file_inputs(stage, settings),
                },
            )
            out[stage.name] = prov.fingerprint()
        return out

    def _file_inputs(self, stage: Stage, settings: dict) -> dict:
        """Identity of the user's files a stage reads (slides, annotations, label CSVs)."""
        from sae1n.io.provenance import fingerprint_of, input_identity

        ids = {}
        for key, value in settings.items():
            if key in ("reference_csv", "panda_csv") and value:
                ids[key] = input_identity(value)
            if key in ("slides.dir", "annotations.dir", "annotations") and value:
                folder = value.get("dir") if isinstance(value, dict) else value
                if folder and Path(folder).is_dir():
                    ids[f"{key}:files"] = fingerprint_of(
                        [
                            (p.name, p.stat().st_size, p.stat().st_mtime_ns)
                            for p in sorted(Path(folder).iterdir())
                            if p.is_file()
                        ]
                    )
        return ids

    def _fingerprint(self, name: str) -> str:
        return self.fingerprints()[name]

    # ------------------------------------------------------------------ driver
    def run(self, stages=None) -> dict[str, StageResult]:
        """Run ``stages`` (default all; any spelling) in pipeline order: a stage
        whose fingerprint and outputs are current is skipped; a changed one
        replaces its own outputs (the old ones are restored if it fails)."""
        names = resolve_stages(stages)
        self.paths.work.mkdir(parents=True, exist_ok=True)
        fps = self.fingerprints()
        selected = set(names)
        for name in names:
            stale_up = [
                u
                for u in _upstream(name)
                if u not in selected and (self.state.get(u) or {}).get("fingerprint") != fps[u]
            ]
            if stale_up:
                raise ConfigError(
                    f"stage {name} reads the outputs of {', '.join(stale_up)}, which are missing or "
                    f"were made with other settings; add them to --stages (or run without --stages)"
                )
        for name in names:
            fp = fps[name]
            done = self.state.get(name) or {}
            if not self.force and done.get("fingerprint") == fp and self._outputs_exist(name):
                self.results[name] = StageResult(name, "skipped", info=done.get("info", {}), fingerprint=fp)
                self.echo(f"[skip] {name} (complete; settings and inputs unchanged)")
                continue
            changed = bool(done) or self.force
            self.echo(f"[run ] {name}" + (" (settings or inputs changed)" if done and not self.force else ""))
            # until it completes, the stage is not done (a crash leaves it to be rerun)
            self.state.pop(name, None)
            atomic_write_json(self.state_path, self.state)
            t0 = time.perf_counter()
            moved = self._set_aside(name) if changed else []
            try:
                info = getattr(self, f"_stage_{name}")()
            except BaseException as exc:
                self._restore(name, moved)
                if isinstance(exc, Sae1nError):
                    raise Sae1nError(f"stage {name} failed: {exc}") from exc
                if isinstance(exc, Exception):
                    raise Sae1nError(
                        f"stage {name} failed: {type(exc).__name__}: {exc} (re-run with -v for the traceback)"
                    ) from exc
                raise
            _drop(moved)
            info = asdict(info) if info is not None and hasattr(info, "__dataclass_fields__") else dict(info or {})
            secs = time.perf_counter() - t0
            self.results[name] = StageResult(name, "done", secs, info, fp)
            self.state[name] = {"fingerprint": fp, "seconds": round(secs, 2), "info": info}
            atomic_write_json(self.state_path, self.state)
            self.echo(f"       {name} done in {secs:.1f} s")
        return self.results

    # ------------------------------------------------------------- outputs
    def owned_outputs(self, name: str) -> list[Path]:
        """The paths a stage owns inside work_dir, which it may replace."""
        p = self.paths
        if name == "train_sae":
            if not p.sae_dir.is_dir():
                return []
            return [c for c in p.sae_dir.iterdir() if c.name not in _SAE_DOWNSTREAM and not c.name.startswith(".")]
        return {
            "save_sae_features": [p.encoded_dir],
            "analyze_sae": [p.sae_dir / "analysis"],
            "train_mil": [p.mil_root / "mil"],
            "evaluate_patches": [p.sae_dir / "evaluation"],
            "heatmaps": [p.sae_dir / "figures"],
            "report": [p.sae_dir / "report.html"],
        }.get(name, [])

    # stages whose public API checks every output's provenance themselves: the
    # pipeline calls them with overwrite=True instead of moving outputs aside
    _SELF_CHECKING = ("create_patches", "extract_features", "create_metadata", "create_splits", "patch_labels")

    def _set_aside(self, name: str) -> list[tuple[Path, Path]]:
        from sae1n.io.provenance import sidecar_path

        if name in self._SELF_CHECKING:
            return []
        moved = []
        for path in self.owned_outputs(name):
            for q in (path, sidecar_path(path)):
                if q.exists() or q.is_symlink():
                    backup = q.with_name(f".{q.name}.pipeline-old-{os.getpid()}")
                    _remove(backup)
                    os.replace(q, backup)
                    moved.append((q, backup))
        return moved

    def _restore(self, name: str, moved: list[tuple[Path, Path]]) -> None:
        for original, backup in moved:
            _remove(original)
            os.replace(backup, original)

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
            "patch_labels": p.patch_label_dir if self.cfg.annotations.dir else p.work,
            "train_mil": p.mil_root / "mil" if list(self.cfg.mil.exps) else p.work,
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
            batch_size=int(e.batch_size),
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
            k=int(s.k),
            seed=int(self.cfg.seed),
            repeats=int(s.repeats),
            overwrite=True,
        )
        return SplitsInfo([p.name for p in paths])

    def sae_config(self):
        from sae1n.sae.config import load_sae_config

        p = self.paths
        overrides = [
            f"output_dir={p.sae_root}",
            f"data.feature_dir={p.feat_dir}",
            f"data.split_csv_path={p.split_csv(int(self.cfg.splits.fold))}",
            f"seed={int(self.cfg.seed)}",
            f"compat={self.cfg.compat}",
            *list(self.cfg.sae.overrides),
        ]
        return load_sae_config(self.cfg.sae.exp, overrides)

    def _stage_train_sae(self):
        from sae1n.sae.train import train_sae

        out = train_sae(self.sae_config())
        return SaeInfo(str(out))

    def _stage_save_sae_features(self):
        from sae1n.sae.encode import save_sae_features

        summary = save_sae_features(
            self.paths.sae_dir, self.paths.feat_dir, out_dir=self.paths.encoded_dir, compat=str(self.cfg.compat)
        )
        return EncodingInfo(len(summary.encoded), len(summary.skipped))

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
            compat=str(self.cfg.compat),
        )
        top = frame.iloc[0]
        return AnalysisInfo(int(top["unit_id"]), float(top["p_value"]), float(top["t_statistic"]))

    def _stage_patch_labels(self):
        from sae1n.datasets import create_patch_labels

        if not self.cfg.annotations.dir:
            self.echo(
                "       no annotations.dir: patch labels skipped (patch-level evaluation needs them)"
            )
            return LabelsInfo(skipped=True)
        frame = create_patch_labels(
            self.paths.clam_dir / "patches",
            self.cfg.annotations.dir,
            self.paths.patch_label_dir,
            threshold=float(self.cfg.annotations.threshold),
            annotation_format=self.cfg.annotations.format,
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
        fold = int(self.cfg.splits.fold)
        ov = [
            f"dataset.csv_path={p.metadata_csv}",
            f"split_dir={p.split_dir}",
            f"results_dir_base={p.mil_root}",
            f"seed={int(self.cfg.seed)}",
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
            info[exp] = {
                "test_auc": _num(row.get("test_auc")),
                "val_auc": _num(row.get("val_auc")),
                "test_acc": _num(row.get("test_acc")),
            }
        return info

    def _mil_dirs(self) -> list[Path]:
        """Every MIL run of this pipeline (their patch scores are baselines)."""
        return [self.paths.mil_root / "mil" / e for e in self.cfg.mil.exps if (self.paths.mil_root / "mil" / e).is_dir()]

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
            p.split_csv(int(self.cfg.splits.fold)),
            p.encoded_dir,
            p.patch_label_dir,
            p.sae_root,
            top_n=int(self.cfg.neurons.top_n),
            dataset_csv=p.metadata_csv,
            mil_dir=self._mil_dirs(),
            fold=int(self.cfg.splits.fold),
            pooling=self.cfg.neurons.pooling,
            input_feature_dir=p.feat_dir,  # the raw_dim / pca / random_sae / linear-probe baselines
        )
        from sae1n.viz.evaluation import plot_patch_evaluation

        plot_patch_evaluation(result)
        chosen = result["chosen"]
        return EvaluationInfo(
            unit=int(result["chosen_unit"]),
            **{k: _num(chosen.get(k)) for k in ("patch_auroc", "patch_ap", "slide_auroc", "f1")},
        )

    def figure_slides(self) -> list[str]:
        """Test slides to draw: tumour slides first (most tumour patches), then others."""

        from sae1n.datasets import read_split

        split = read_split(self.paths.split_csv(int(self.cfg.splits.fold)))
        test = list(split["test"]) or list(split["val"])
        from sae1n.io.tables import read_csv

        labels = read_csv(self.paths.metadata_csv, "metadata CSV", "re-run create-metadata")
        labels = labels.set_index("slide_id")["label"].to_dict()
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
        n_files = len(out["heatmaps"]) + len(out["geojson"]) + (1 if out.get("gallery") else 0)
        return FiguresInfo(int(out["unit"]), n_files)

    def _stage_report(self):
        from sae1n.viz.reporting import report

        return ReportInfo(str(report(self.paths.sae_dir, overwrite=True)))


def _select(container: dict, key: str):
    node = container
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _upstream(name: str) -> set[str]:
    """Every stage ``name`` reads from, directly or through others."""
    by_name = {s.name: s for s in GRAPH}
    out, todo = set(), list(by_name[name].reads)
    while todo:
        u = todo.pop()
        if u not in out:
            out.add(u)
            todo.extend(by_name[u].reads)
    return out


def _remove(path: Path) -> None:
    import shutil

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _drop(moved: list[tuple[Path, Path]]) -> None:
    for _, backup in moved:
        _remove(backup)


def _num(v):
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if f != f else round(f, 4)


def run_pipeline(
    config_path, overrides=(), *, force: bool = False, stages=None, echo=print
) -> dict[str, StageResult]:
    """Run the pipeline YAML ``config_path`` (see :data:`DEFAULTS`): every stage,
    or ``stages`` (subcommand or underscore spellings) in pipeline order."""
    names = resolve_stages(stages)  # a misspelt stage fails before any config work
    cfg = load_pipeline_config(config_path, overrides)
    return Pipeline(cfg, force=force, echo=echo).run(names)
