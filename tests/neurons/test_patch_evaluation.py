"""The patch-evaluation artifact: one writer, one reader, clear errors."""

import json

import numpy as np
import pytest

from sae1n.errors import InputFileError
from sae1n.neurons.patch_evaluation import (
    METRICS_JSON,
    PatchEvaluation,
    read_patch_evaluation,
    write_patch_evaluation,
)


def _evaluation(tmp_path):
    row = {"method": "sae_neuron", "unit_id": 3, "patch_auroc": 0.91, "patch_ap": None}
    base = {"method": "pca", "unit_id": None, "patch_auroc": 0.8, "oracle": False}
    return PatchEvaluation(
        exp_id="e",
        chosen_unit=3,
        chosen=row,
        top_n=[row],
        baseline=None,
        baselines=[base],
        settings={"fold": 0},
        files={"csv": "patch_metrics.csv"},
        eval_dir=tmp_path / "e" / "evaluation",
        curves={"neuron 3": (np.array([0, 1]), np.array([0.1, 0.9]))},
    )


def test_round_trip_keeps_everything_but_the_curves(tmp_path):
    ev = _evaluation(tmp_path)
    path = write_patch_evaluation(ev)
    assert path == ev.eval_dir / METRICS_JSON
    assert list(json.loads(path.read_text())) == [
        "exp_id", "chosen_unit", "chosen", "top_n", "baseline", "baselines", "settings", "files",
    ]
    back = read_patch_evaluation(ev.eval_dir)
    assert back.to_json() == ev.to_json() and back.curves == {}
    assert back.eval_dir == ev.eval_dir
    assert [r["method"] for r in back.rows()] == ["sae_neuron", "pca"]


def test_missing_and_damaged_files_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(InputFileError, match="no patch evaluation here.*evaluate-patches"):
        read_patch_evaluation(tmp_path)
    (tmp_path / METRICS_JSON).write_text("{not json")
    with pytest.raises(InputFileError, match=rf"{METRICS_JSON}: unreadable patch evaluation"):
        read_patch_evaluation(tmp_path)
    (tmp_path / METRICS_JSON).write_text("[1, 2]")
    with pytest.raises(InputFileError, match="not a patch evaluation"):
        read_patch_evaluation(tmp_path / METRICS_JSON)
