"""One-config run of every stage, in order, with resume.

``sae1n pipeline CONFIG.yaml`` (and ``sae1n demo``, which builds such a config
for generated slides) runs: create-patches -> extract-features ->
create-metadata -> create-splits -> train-sae -> save-sae-features ->
analyze-sae -> patch-labels -> train-mil -> evaluate-patches -> heatmap ->
report, as a dependency graph (:data:`GRAPH`, in :mod:`.graph`): each stage
declares the stages whose outputs it reads and the config keys it uses, and
its fingerprint is a hash of those settings (and the identity of the user
files they name) plus the fingerprints of its upstream stages.
``<work_dir>/pipeline_state.json`` records each completed stage's fingerprint;
a re-run skips a stage whose fingerprint is unchanged and whose outputs exist,
and reruns exactly the stages downstream of a change. The pipeline owns its
``work_dir``: a changed stage replaces its outputs (stages with per-file
provenance are called with ``overwrite=True``; the others' old outputs are
moved aside, deleted on success and restored on failure), so a changed SAE
setting starts a new SAE run. The run stops at the first failing stage.
Outputs follow the paper's layout inside ``work_dir`` (:mod:`.paths`).

Modules: :mod:`.config` (the typed config, :class:`PipelineConfig`, and
:func:`load_pipeline_config`), :mod:`.graph` (stages and fingerprints),
:mod:`.runner` (:class:`Pipeline`, :func:`run_pipeline`), :mod:`.stages` (each
stage's work), :mod:`.results` (what each stage reports), :mod:`.commands`
(the CLI). Exports load on first use, so ``sae1n --help`` stays fast.
"""

from __future__ import annotations

from sae1n._lazy import lazy_exports

_EXPORTS = {
    "PipelineConfig": "sae1n.pipeline.config",
    "load_pipeline_config": "sae1n.pipeline.config",
    "GRAPH": "sae1n.pipeline.graph",
    "Stage": "sae1n.pipeline.graph",
    "resolve_stages": "sae1n.pipeline.graph",
    "stage_names": "sae1n.pipeline.graph",
    "PipelinePaths": "sae1n.pipeline.paths",
    "StageResult": "sae1n.pipeline.results",
    "Pipeline": "sae1n.pipeline.runner",
    "run_pipeline": "sae1n.pipeline.runner",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
