"""Figures of a patch-level evaluation: ROC and precision-recall curves of every
method that :func:`sae1n.neurons.evaluate.evaluate_patches` scored."""

from __future__ import annotations

from pathlib import Path

from sae1n.io.provenance import read_provenance, write_sidecar
from sae1n.neurons.patch_evaluation import METRICS_CSV, PR_PNG, ROC_PNG, PatchEvaluation
from sae1n.viz.curves import plot_pr_curves, plot_roc_curves


def plot_patch_evaluation(result: PatchEvaluation) -> dict[str, Path]:
    """Draw ``evaluation/roc_curve.png`` and ``pr_curve.png`` from an
    ``evaluate_patches`` result; each picture carries the metrics' provenance.
    Returns the written paths (none when the result has no curve data)."""
    curves = result.curves
    if not curves or result.eval_dir is None:
        return {}
    eval_dir = Path(result.eval_dir)
    out = {
        "roc": plot_roc_curves(curves, eval_dir / ROC_PNG),
        "pr": plot_pr_curves(curves, eval_dir / PR_PNG),
    }
    prov = read_provenance(eval_dir / METRICS_CSV)
    if prov is not None:
        for path in out.values():
            write_sidecar(path, prov)
    return out
