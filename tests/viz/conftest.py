"""One small experiment folder shared by the viz tests: a cohort with codes,
ranking, patch evaluation, slides, heatmaps and a gallery."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from tests.neurons import synth


@pytest.fixture(scope="session")
def experiment(tmp_path_factory):
    from sae1n.neurons.evaluate import evaluate_patches
    from sae1n.neurons.ranking import analyze_sae
    from sae1n.viz.evaluation import plot_patch_evaluation
    from sae1n.viz.figures import neuron_figures

    root = tmp_path_factory.mktemp("viz")
    coh = synth.make_cohort(root, formats=("sparse", "h5"), mil_scores=True)
    out = root / "output" / "sae"
    exp = out / "exp0"
    analyze_sae("exp0", coh.split_csv, coh.enc_dir, coh.dataset_csv, out)
    evaluation = evaluate_patches(
        "exp0",
        coh.split_csv,
        coh.enc_dir,
        coh.label_dir,
        out,
        dataset_csv=coh.dataset_csv,
        mil_dir=coh.mil_dir,
        top_n=3,
    )
    plot_patch_evaluation(evaluation)
    shown = coh.split["test"][:2]
    synth.write_slides(coh, shown + coh.split["test"][-1:])
    figs = neuron_figures(
        coh.enc_dir,
        coh.slide_dir,
        exp / "figures",
        ranking_csv=exp / "analysis" / "sae_analysis_t_test.csv",
        slide_ids=shown,
        attention_dir=coh.mil_dir / "fold_0" / "patch_scores",
        patch_label_dir=coh.label_dir,
        gallery_n=8,
        geojson=True,
    )
    (exp / "logs").mkdir(parents=True)
    steps = np.arange(0, 1000, 50)
    pd.DataFrame(
        {
            "step": steps,
            "mse": np.exp(-steps / 300),
            "l0": np.linspace(90, 32, len(steps)),
            "dead_fraction": 0.01,
        }
    ).to_csv(exp / "logs" / "metrics.csv", index=False)
    (exp / "checkpoints").mkdir()
    (exp / "checkpoints" / "config_best.json").write_text(
        '{"dict_size": 48, "k": 8, "optimizer": {"lr": 0.0004}}'
    )
    names = pd.DataFrame(
        {
            "unit_id": [synth.TUMOR_UNIT, 5],
            "name": ["tumor", "adipose tissue"],
            "cosine": [0.31, 0.2],
            "top_prompts": ["tumor; necrosis", "adipose tissue; stroma"],
            "top_cosines": ["0.31; 0.1", "0.2; 0.1"],
        }
    )
    (exp / "analysis" / "neuron_names.csv").write_text(names.to_csv(index=False))
    return SimpleNamespace(cohort=coh, exp=exp, out=out, figures=figs, shown=shown)
