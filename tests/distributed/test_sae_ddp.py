"""SAE training on 2 gloo processes equals 1 process; resume; the rank-global
BatchTopK selection."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from sae1n.sae.train import train_sae

from .conftest import TRAIN_SIZES, run_ranks, sae_config, sae_overrides

# columns that must agree between runs (timings differ)
CURVE = ["train_loss", "train_l2_loss", "train_aux_loss", "train_l0_norm", "val_loss"]
CURVE += ["val_mse", "val_l0_norm", "val_dead_frac", "val_dead_frac_train"]


def _train(rank, cohort, out, overrides, interrupt_at=None):
    def stop(step):
        if step == interrupt_at:
            raise KeyboardInterrupt

    try:
        return str(train_sae(sae_config(cohort, out, *overrides), callbacks=[stop]))
    except KeyboardInterrupt:
        return "interrupted"


def _assert_same_curves(a: Path, b: Path, rtol: float, cols=CURVE) -> None:
    ma, mb = pd.read_csv(a / "logs" / "metrics.csv"), pd.read_csv(b / "logs" / "metrics.csv")
    assert ma["step"].tolist() == mb["step"].tolist()
    for col in cols + (["val_threshold"] if "val_threshold" in ma else []):
        np.testing.assert_allclose(mb[col], ma[col], rtol=rtol, atol=1e-7, err_msg=col)


def _assert_same_weights(a: Path, b: Path, atol: float, name="sae_final.safetensors") -> None:
    wa, wb = load_file(str(a / "checkpoints" / name)), load_file(str(b / "checkpoints" / name))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=0, atol=atol, msg=k)


@pytest.fixture(scope="module")
def two_processes(cohort, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("two")
    exps = run_ranks(out / "launch", _train, cohort, out, ())
    assert exps[0] == exps[1]
    return Path(exps[0])


def test_two_processes_match_one_process_loss_curve(one_process, two_processes):
    # the shapes of the test: 833 train rows in 64-row batches, so each
    # epoch's last batch has one row and rank 1's share of it is empty
    assert sum(TRAIN_SIZES) % 64 == 1
    m = pd.read_csv(two_processes / "logs" / "metrics.csv")
    assert m["step"].tolist() == list(range(1, 29))
    _assert_same_curves(one_process, two_processes, rtol=2e-5)
    _assert_same_weights(one_process, two_processes, atol=2e-6)
    for name in ("sae_best.safetensors", "sae_final.safetensors", "resume_state.pt"):
        assert (two_processes / "checkpoints" / name).is_file()
    # the training actually moved the weights (the comparison is not of two inits)
    first, last = m.iloc[0], m.iloc[-1]
    assert last.val_loss < 0.5 * first.val_loss
    # rank 0 wrote the logs once: no temp files or duplicate rows are left
    assert not list(two_processes.rglob(".*.tmp-*"))


SWEEP = (
    "sweep=[{sae: {model_type: TopKSAE}}, {sae: {model_type: VanillaSAE, l1_coeff: 0.01}}, "
    "{sae: {model_type: JumpReLUSAE, l1_coeff: 0.01}}, {sae: {fast_kernels: false}}, "
    "{sae: {input_unit_norm: true, paper_compat_update_in_eval: true}}, "
    "{sae: {model_type: MatryoshkaBatchTopKSAE}}]"
)


def test_every_model_type_and_the_dense_path_match_too(cohort, tmp_path):
    over = (SWEEP, "training.num_epochs=1", "training.validation_freq=4")
    one = train_sae(sae_config(cohort, tmp_path / "one", *over))
    two = Path(run_ranks(tmp_path / "launch", _train, cohort, tmp_path / "two", over)[0])
    tags = sorted(p.name for p in (one / "sweep").iterdir())
    assert len(tags) == 6
    for tag in tags:
        _assert_same_curves(one / "sweep" / tag, two / "sweep" / tag, rtol=2e-5)
        _assert_same_weights(one / "sweep" / tag, two / "sweep" / tag, atol=2e-6)


def test_resume_after_interrupt(cohort, two_processes, tmp_path):
    out = tmp_path / "run"
    res = run_ranks(tmp_path / "a", _train, cohort, out, (), 10)
    assert res == ["interrupted", "interrupted"]
    state = torch.load(out / "toy" / "checkpoints" / "resume_state.pt", weights_only=True)
    assert state["step"] == 10
    shutil.copytree(out, tmp_path / "copy")
    # same world size: the finished run is the uninterrupted one, bit for bit
    exp = Path(run_ranks(tmp_path / "b", _train, cohort, out, ())[0])
    _assert_same_curves(two_processes, exp, rtol=0)
    _assert_same_weights(two_processes, exp, atol=0)
    # one process goes on from the two-process state too (to float tolerance)
    exp1 = train_sae(sae_config(cohort, tmp_path / "copy"))
    _assert_same_weights(two_processes, exp1, atol=2e-6)


def _select(rank, pre_all, k, oversample, sync_free):
    from sae1n.sae.distributed import BatchStatsSync

    sync = BatchStatsSync(oversample=oversample, slack=0)
    sync.global_rows = pre_all.shape[0]
    mine = pre_all[rank::2]
    codes, _ = sync.batch_topk_codes(mine, k, None, sync_free=sync_free)
    keep = codes.vals > 0
    rows = torch.arange(pre_all.shape[0])[rank::2][codes.rows[keep]]
    return (
        sorted(zip(rows.tolist(), codes.cols[keep].tolist())),
        sync.full_gathers,
        float(sync.min(codes.vals[keep].min())),
        sync.any(torch.arange(4) == rank).tolist(),
    )


@pytest.mark.parametrize("sync_free", [False, True])
def test_global_batch_topk_selects_what_one_process_selects(tmp_path, sync_free):
    from sae1n.sae.sparse_codes import batch_topk_codes

    gen = torch.Generator().manual_seed(3)
    pre = torch.randn(37, 50, generator=gen)
    pre[:, :10] -= 3  # a few latents rarely positive
    ref, _ = batch_topk_codes(pre, 4 * 37)
    expected = sorted(zip(ref.rows.tolist(), ref.cols.tolist()))
    # 1.2 x the fair share is enough; 0.3 x forces the fallback to a full exchange
    for oversample, fallback in ((1.2, 0), (0.3, 1)):
        res = run_ranks(tmp_path / f"o{oversample}", _select, pre, 4, oversample, sync_free)
        got = sorted(res[0][0] + res[1][0])
        assert got == expected
        assert [r[1] for r in res] == [fallback, fallback]
        # the statistics: the global minimum kept value, OR of the fired masks
        assert res[0][2] == res[1][2] == pytest.approx(float(ref.vals.min()))
        assert res[0][3] == res[1][3] == [True, True, False, False]


def test_torchrun_cli_trains_like_one_process(cohort, one_process, tmp_path):
    """``torchrun --standalone --nproc_per_node 2 -m sae1n train-sae ...``:
    the processes create their group from torchrun's variables."""
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "sae1n", "train-sae", "exp=camelyon16_conch_0"]
    cmd += sae_overrides(cohort, tmp_path)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("SAE outputs:") == 1  # rank 0 reports, once
    assert "x 2 processes" in proc.stderr
    exp = tmp_path / "camelyon16_conch_0"
    _assert_same_curves(one_process, exp, rtol=2e-5)
    _assert_same_weights(one_process, exp, atol=2e-6)
