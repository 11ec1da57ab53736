"""The result of ``evaluate-patches``: :class:`PatchEvaluation`, its one
writer and its one reader (``<exp>/evaluation/patch_metrics.json``).

The JSON holds the chosen neuron's row, the top-N neurons' rows, the
baselines' rows (each row as in ``patch_metrics.csv``), the settings and the
names of the files written beside it. The curve data the figures are drawn
from and the folder travel with the returned object only.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sae1n.errors import InputFileError
from sae1n.io import atomic_write_json

METRICS_CSV = "patch_metrics.csv"
METRICS_JSON = "patch_metrics.json"
ROC_PNG = "roc_curve.png"
PR_PNG = "pr_curve.png"
_JSON_KEYS = ("exp_id", "chosen_unit", "chosen", "top_n", "baseline", "baselines", "settings", "files")


@dataclass(frozen=True)
class PatchEvaluation:
    """Patch-level metrics of the chosen neuron, the top-N neurons and the baselines."""

    exp_id: str
    chosen_unit: int | None
    chosen: dict  # the chosen neuron's row of patch_metrics.csv (NaN -> None)
    top_n: list[dict]  # every evaluated neuron's row, by rank
    baseline: dict | None  # the ABMIL attention row, when its patch scores were given
    baselines: list[dict]  # every baseline's row (raw_dim, pca, random_sae, MIL scores, oracle)
    settings: dict
    files: dict  # what was written beside the JSON: csv, roc, pr
    eval_dir: Path | None = None
    # legend name -> (patch labels, scores) of the curves to draw; not in the JSON
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in _JSON_KEYS}

    def rows(self) -> list[dict]:
        """The neuron rows, then the baseline rows (the CSV's content)."""
        return [*self.top_n, *self.baselines]


def write_patch_evaluation(evaluation: PatchEvaluation) -> Path:
    """Write ``<eval_dir>/patch_metrics.json`` atomically; return its path."""
    path = Path(evaluation.eval_dir) / METRICS_JSON
    atomic_write_json(path, evaluation.to_json())
    return path


def read_patch_evaluation(path: str | os.PathLike) -> PatchEvaluation:
    """Read ``patch_metrics.json`` (or the ``evaluation`` folder holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_JSON
    if not path.is_file():
        raise InputFileError(path, "no patch evaluation here", "run sae1n evaluate-patches first")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputFileError(path, f"unreadable patch evaluation ({exc})", "rerun sae1n evaluate-patches --overwrite") from exc
    if not isinstance(data, dict) or "exp_id" not in data:
        raise InputFileError(path, "not a patch evaluation (no exp_id)", "rerun sae1n evaluate-patches --overwrite")
    return PatchEvaluation(
        exp_id=str(data["exp_id"]),
        chosen_unit=data.get("chosen_unit"),
        chosen=data.get("chosen") or {},
        top_n=list(data.get("top_n") or []),
        baseline=data.get("baseline"),
        baselines=list(data.get("baselines") or []),
        settings=data.get("settings") or {},
        files=data.get("files") or {},
        eval_dir=path.parent,
    )
