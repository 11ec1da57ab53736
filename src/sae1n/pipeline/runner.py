"""The pipeline driver: order, skip/rerun by fingerprint, and output ownership
(see :mod:`sae1n.pipeline`)."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from sae1n.configs.schema import to_dict
from sae1n.errors import ConfigError, Sae1nError
from sae1n.io.atomic import atomic_write_json
from sae1n.pipeline import graph
from sae1n.pipeline.config import PipelineConfig, load_pipeline_config
from sae1n.pipeline.paths import PipelinePaths
from sae1n.pipeline.results import StageResult, info_dict
from sae1n.pipeline.stages import StageSteps

# folders of the SAE experiment written by stages after train_sae
_SAE_DOWNSTREAM = ("encoded_features", "analysis", "evaluation", "figures", "report.html")


class Pipeline(StageSteps):
    """Runs the stages of one pipeline config; see :mod:`sae1n.pipeline`."""

    STAGES = tuple(graph.stage_names())
    # stages whose public API checks every output's provenance themselves: the
    # pipeline calls them with overwrite=True instead of moving outputs aside
    _SELF_CHECKING = ("create_patches", "extract_features", "create_metadata", "create_splits", "patch_labels")

    def __init__(
        self, cfg: PipelineConfig, *, force: bool = False, echo: Callable[[str], None] = print
    ):
        if not isinstance(cfg, PipelineConfig):
            raise TypeError(f"Pipeline needs a PipelineConfig (load_pipeline_config), not {type(cfg).__name__}")
        self.cfg = cfg
        self.force = force
        self.echo = echo
        self.paths = PipelinePaths(
            Path(cfg.work_dir).resolve(), cfg.task, cfg.encoder.name, cfg.seed, cfg.sae.exp
        )
        self.state_path = self.paths.work / "pipeline_state.json"
        self.state = self._read_state()
        self.results: dict[str, StageResult] = {}

    def _read_state(self) -> dict:
        if not self.state_path.is_file():
            return {}
        try:
            state = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            self.echo(f"warning: {self.state_path} is unreadable; every stage will run")
            return {}
        return state if isinstance(state, dict) else {}

    def fingerprints(self) -> dict[str, str]:
        """Every stage's fingerprint: its own settings plus its upstream fingerprints."""
        return graph.fingerprints(to_dict(self.cfg))

    def _fingerprint(self, name: str) -> str:
        return self.fingerprints()[name]

    # ------------------------------------------------------------------ driver
    def run(self, stages=None) -> dict[str, StageResult]:
        """Run ``stages`` (default all; any spelling) in pipeline order: a stage
        whose fingerprint and outputs are current is skipped; a changed one
        replaces its own outputs (the old ones are restored if it fails)."""
        names = graph.resolve_stages(stages)
        self.paths.work.mkdir(parents=True, exist_ok=True)
        fps = self.fingerprints()
        selected = set(names)
        for name in names:
            stale_up = [
                u
                for u in graph.upstream(name)
                if u not in selected and (self.state.get(u) or {}).get("fingerprint") != fps[u]
            ]
            if stale_up:
                raise ConfigError(
                    f"stage {name} reads the outputs of {', '.join(stale_up)}, which are missing or "
                    f"were made with other settings; add them to --stages (or run without --stages)"
                )
        for name in names:
            self._run_stage(name, fps[name])
        return self.results

    def _run_stage(self, name: str, fp: str) -> None:
        done = self.state.get(name) or {}
        if not self.force and done.get("fingerprint") == fp and self._outputs_exist(name):
            self.results[name] = StageResult(name, "skipped", info=done.get("info", {}), fingerprint=fp)
            self.echo(f"[skip] {name} (complete; settings and inputs unchanged)")
            return
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
            self._restore(moved)
            if isinstance(exc, Sae1nError):
                raise Sae1nError(f"stage {name} failed: {exc}") from exc
            if isinstance(exc, Exception):
                raise Sae1nError(
                    f"stage {name} failed: {type(exc).__name__}: {exc} (re-run with -v for the traceback)"
                ) from exc
            raise
        for _, backup in moved:
            _remove(backup)
        info = info_dict(info)
        secs = time.perf_counter() - t0
        self.results[name] = StageResult(name, "done", secs, info, fp)
        self.state[name] = {"fingerprint": fp, "seconds": round(secs, 2), "info": info}
        atomic_write_json(self.state_path, self.state)
        self.echo(f"       {name} done in {secs:.1f} s")

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

    def _restore(self, moved: list[tuple[Path, Path]]) -> None:
        for original, backup in moved:
            _remove(original)
            os.replace(backup, original)

    def _outputs_exist(self, name: str) -> bool:
        p = self.paths
        check = {
            "create_patches": p.clam_dir / "process_list_autogen.csv",
            "extract_features": p.feat_dir / "h5_files",
            "create_metadata": p.metadata_csv,
            "create_splits": p.split_csv(self.cfg.splits.fold),
            "train_sae": p.sae_dir / "checkpoints" / "sae_best.safetensors",
            "save_sae_features": p.encoded_dir,
            "analyze_sae": p.ranking_csv,
            "patch_labels": p.patch_label_dir if self.cfg.annotations.dir else p.work,
            "train_mil": p.mil_root / "mil" if self.cfg.mil.exps else p.work,
            "evaluate_patches": p.sae_dir / "evaluation" / "patch_metrics.json",
            "heatmaps": p.sae_dir / "figures",
            "report": p.sae_dir / "report.html",
        }[name]
        return check.exists()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def run_pipeline(
    config_path, overrides=(), *, force: bool = False, stages=None, echo=print
) -> dict[str, StageResult]:
    """Run the pipeline YAML ``config_path`` (keys: :class:`PipelineConfig`): every
    stage, or ``stages`` (subcommand or underscore spellings) in pipeline order."""
    names = graph.resolve_stages(stages)  # a misspelt stage fails before any config work
    cfg = load_pipeline_config(config_path, overrides)
    return Pipeline(cfg, force=force, echo=echo).run(names)
