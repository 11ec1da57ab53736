"""One small demo experiment shared by the browse tests: the demo's own cohort
generator and pipeline (the same code `sae1n demo` runs), on fewer, smaller slides."""

from __future__ import annotations

from types import SimpleNamespace

import pytest


@pytest.fixture(scope="session")
def demo_exp(tmp_path_factory):
    from sae1n.demo.cohort import generate_cohort
    from sae1n.demo.run import demo_config
    from sae1n.pipeline import Pipeline, load_pipeline_config

    out = tmp_path_factory.mktemp("browse") / "demo"
    generate_cohort(out / "data", n_normal=4, n_tumor=4, n_test=2, size=(1536, 1536), seed=0)
    base = demo_config(out, quick=True)
    base["sae"]["overrides"] = ["training.num_epochs=3", "sae.device=cpu"]
    base["mil"]["exps"] = ["demo_abmil"]
    base["mil"]["overrides"] = ["max_epochs=2", "device=cpu"]
    base["splits"]["k"] = 4
    from omegaconf import OmegaConf

    (out / "pipeline.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(base)))
    cfg = load_pipeline_config(None, base=base)
    pipe = Pipeline(cfg, echo=lambda *a, **k: None)
    pipe.run([s for s in Pipeline.STAGES if s not in ("heatmaps", "report")])  # the browser needs neither
    exp = pipe.paths.sae_dir
    return SimpleNamespace(root=out, exp=exp, slides=out / "data" / "slides", annotations=out / "data" / "annotations")
