"""compat=paper SAE training against the recorded runs of the paper's code
(../shared/data/paper_reference/sae_training, see its README).

Tolerances: everything discrete (the row ids of every train and val batch,
the dead-latent counters after every forward and step, l0, which step is
best) must be identical. Float values are compared with rtol 2e-6 / atol 1e-6
(final weights atol 1e-6): the paper's init is reproduced bit for bit and the
step-0 forward too, but the backward GEMMs' float32 summation order depends on
the CPU's BLAS kernel (MKL picks it from the instruction set), so gradients
already differ in the last bits at step 0 between machines (measured here:
max 7.5e-9 on W_enc.grad, any MKL_CBWR setting); over 58 steps that stays
below 5e-7 on every loss and 2.1e-7 on every weight.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from sae1n.sae import paper_exact as pe
from tests.conftest import PAPER_REFERENCE, paper_reference_fixture

RTOL, ATOL, WATOL = 2e-6, 1e-6, 1e-6
_ROOT = PAPER_REFERENCE / "sae_training"
VARIANTS = sorted(p.name for p in (_ROOT / "runs").glob("*") if (p / "summary.json").is_file()) or [
    "btk", "btk_given", "topk", "topk_given", "btk_l1un"
]


ref = paper_reference_fixture("sae_training")


def _btk_variant(ref):
    for v in VARIANTS:
        s = _summary(ref, v)
        if s["paper_exp_config_resolved"]["sae"]["model_type"] == "BatchTopKSAE" and not str(s.get("init", "")).startswith("given"):
            return v
    pytest.skip("no BatchTopK run with the paper's init")


def _summary(ref, variant):
    return json.loads((ref / "runs" / variant / "summary.json").read_text())


def _cfg(ref, variant):
    s = json.loads((ref / "runs" / variant / "summary.json").read_text())["paper_exp_config_resolved"]
    s["data"]["feature_dir"] = str(ref / "inputs")
    s["data"]["split_csv_path"] = str(ref / "inputs" / "splits_0.csv")
    return OmegaConf.create(s)


def _given(ref, variant):
    from safetensors.torch import load_file

    if not str(_summary(ref, variant).get("init", "")).startswith("given"):
        return None
    state = load_file(str(ref / "inputs" / "given_init.safetensors"))
    if _summary(ref, variant)["paper_exp_config_resolved"]["sae"]["model_type"] == "TopKSAE":
        state.pop("threshold", None)
    return state


def test_paper_init_is_bit_identical(ref):
    from safetensors.torch import load_file

    (init_file,) = sorted((ref / "runs").glob("init_weights_paper_seed*.safetensors"))
    want = load_file(str(init_file))
    for variant in VARIANTS:
        summary = _summary(ref, variant)
        s = summary["paper_exp_config_resolved"]
        model = pe.build_paper_sae(s["sae"], seed=int(s["seed"]))
        got = model.state_dict()
        btk = s["sae"]["model_type"] == "BatchTopKSAE"
        assert list(got) == ["b_dec", "b_enc", "W_enc", "W_dec"] + (["threshold"] if btk else [])
        for k, v in want.items():
            if k in got:
                assert torch.equal(got[k], v), k
        assert sum(p.numel() for p in model.parameters()) == summary["trainable_params_reported_by_main_py"]
    # without the two DataLoader draws the weights differ
    torch.manual_seed(int(s["seed"]))
    assert not torch.equal(pe.PaperSAE(s["sae"]).W_enc, want["W_enc"])


@pytest.mark.parametrize("variant", VARIANTS)
def test_training_matches_recorded_run(ref, variant):
    from safetensors.torch import load_file

    torch.set_num_threads(1)
    run = pe.run_paper_training(_cfg(ref, variant), init_state=_given(ref, variant), record=True)
    rec = np.load(ref / "runs" / variant / "records.npz")
    summary = _summary(ref, variant)
    assert run.num_steps == summary["num_steps"]
    assert [v["step"] for v in run.val_steps] == summary["validation_steps"]
    # data stream: identical rows in every train and val batch
    np.testing.assert_array_equal(np.stack(run.train["rows"]), rec["train_batch_rows"])
    np.testing.assert_array_equal(np.stack([b["rows"] for b in run.val_batches]), rec["val_batch_rows"])
    np.testing.assert_array_equal([b["at_step"] for b in run.val_batches], rec["val_batch_at_step"])
    # dead counters identical after every train forward, every step and every val batch
    for mine, theirs in (("nbna_after_train_forward", "nbna_after_train_forward"), ("nbna_after_step", "nbna_after_step")):
        np.testing.assert_array_equal(np.stack(run.train[mine]).astype(np.int16), rec[theirs])
    np.testing.assert_array_equal(np.stack([b["nbna"] for b in run.val_batches]).astype(np.int16), rec["nbna_after_valbatch"])
    np.testing.assert_array_equal(run.train["l0_norm"], rec["train_l0_norm"])
    np.testing.assert_array_equal(run.train["num_dead_features"], rec["train_num_dead_features"])
    for k in ("loss", "l2_loss", "l1_loss", "aux_loss", "l1_norm"):
        np.testing.assert_allclose(np.float32(run.train[k]), rec[f"train_{k}"], rtol=RTOL, atol=ATOL, err_msg=k)
        np.testing.assert_allclose(np.float32([b[k] for b in run.val_batches]), rec[f"valbatch_{k}"], rtol=RTOL, atol=ATOL, err_msg=k)
    np.testing.assert_array_equal([b["num_dead_features"] for b in run.val_batches], rec["valbatch_num_dead_features"])
    np.testing.assert_array_equal([b["l0_norm"] for b in run.val_batches], rec["valbatch_l0_norm"])
    if "threshold" in run.model.state_dict():
        np.testing.assert_allclose(np.float32(run.train["threshold_after_train_forward"]), rec["train_threshold_after_forward"], rtol=RTOL, atol=1e-7)
        np.testing.assert_allclose(np.float32(run.train["threshold_after_step"]), rec["threshold_after_step"], rtol=RTOL, atol=1e-7)
        np.testing.assert_allclose(np.float32([b["threshold_after_forward"] for b in run.val_batches]), rec["valbatch_threshold_after_forward"], rtol=RTOL, atol=1e-7)
    # validation log and the sae_best rule
    vs = pd.read_csv(ref / "runs" / variant / "val_steps.csv")
    assert [v["step"] for v in run.val_steps] == vs["step"].tolist()
    assert [v["new_best_saved"] for v in run.val_steps] == vs["new_best_saved"].tolist()
    np.testing.assert_allclose([v["val_loss"] for v in run.val_steps], vs["val_loss"], rtol=RTOL, atol=ATOL)
    assert run.best_step == summary["best_val_step"]
    final = load_file(str(ref / "runs" / variant / f"final_weights_step{run.num_steps - 1}.safetensors"))
    state = run.model.state_dict()
    assert sorted(state) == sorted(final)
    for k, v in final.items():
        np.testing.assert_allclose(state[k].numpy(), v.numpy(), rtol=0, atol=WATOL, err_msg=k)
    # b_enc is never used by TopK/BatchTopK and stays at its initial value
    assert torch.equal(state["b_enc"], (_given(ref, variant) or pe.build_paper_sae(summary["paper_exp_config_resolved"]["sae"], 42).state_dict())["b_enc"])


@pytest.mark.parametrize("variant", VARIANTS)
def test_step0_gradients_and_update_order(ref, variant):
    """Renormalisation + projection come before the Adam step (the recorded grads)."""
    from safetensors.torch import load_file

    grads = ref / "runs" / variant / "grads_step0.safetensors"
    if not grads.is_file():
        pytest.skip(f"{variant}: no recorded step-0 gradients")
    cfg = _cfg(ref, variant)
    rec = np.load(ref / "runs" / variant / "records.npz")
    train, _ = pe._split_files(cfg)
    sizes, load = pe._loader(train, "features")
    x = torch.cat([load(i) for i in range(len(train))])[torch.from_numpy(rec["train_batch_rows"][0]).long()]
    model = pe.build_paper_sae(OmegaConf.to_container(cfg.sae), int(cfg.seed))
    if _given(ref, variant) is not None:
        model.load_state_dict(_given(ref, variant))
    out = model(x)
    np.testing.assert_allclose(out["loss"].item(), rec["train_loss"][0], rtol=RTOL, atol=ATOL)
    out["loss"].backward()
    g = load_file(str(grads))
    torch.testing.assert_close(model.W_dec.grad, g["W_dec.grad_raw"], rtol=0, atol=2e-8)
    torch.testing.assert_close(model.W_enc.grad, g["W_enc.grad"], rtol=0, atol=2e-8)
    model.make_decoder_weights_and_grad_unit_norm()
    torch.testing.assert_close(model.W_dec.grad, g["W_dec.grad_projected"], rtol=0, atol=2e-8)
    torch.testing.assert_close(model.W_dec.data, g["W_dec_renormalised"], rtol=0, atol=1e-7)
    if "threshold" in model.state_dict():
        np.testing.assert_allclose(float(model.threshold), rec["train_threshold_after_forward"][0], rtol=RTOL)


def test_train_sae_compat_paper_writes_paper_layout(ref, tmp_path):
    """train-sae compat=paper: sae_best.pt / sae_57.pt plain state dicts + configs,
    sae1n safetensors beside them, read back by the one SAE loader; a rerun skips."""
    from sae1n.io.provenance import read_provenance
    from sae1n.sae.checkpoints import load_sae
    from sae1n.sae.config import load_sae_config
    from sae1n.sae.train import train_sae

    s = _cfg(ref, _btk_variant(ref))
    bs = int(s.training.batch_size)
    ov = [
        "compat=paper", f"output_dir={tmp_path}", "sae.device=cpu",
        f"data.feature_dir={s.data.feature_dir}", f"data.split_csv_path={s.data.split_csv_path}",
        f"data.file_type={s.data.file_type}", f"data.num_batches_in_buffer={s.data.num_batches_in_buffer}",
        f"sae.act_size={s.sae.act_size}", f"sae.dict_size_ratio={s.sae.dict_size_ratio}",
        f"sae.top_k={s.sae.top_k}", f"sae.top_k_aux={s.sae.top_k_aux}", f"sae.n_batches_to_dead={s.sae.n_batches_to_dead}",
        f"training.batch_size={bs}", "training.validation_freq=1000", f"training.num_tokens={10 * bs}",
    ]
    cfg = load_sae_config("demo", ov)
    out = train_sae(cfg)
    ck = out / "checkpoints"
    best = torch.load(ck / "sae_best.pt", weights_only=True)
    last = torch.load(ck / "sae_9.pt", weights_only=True)
    assert set(best) == {"W_enc", "W_dec", "b_enc", "b_dec", "threshold"}
    assert (ck / "config_best.json").is_file() and (ck / "config_9.json").is_file()
    assert json.loads((ck / "config_best.json").read_text())["sae"]["dict_size"] == best["W_enc"].shape[1]
    assert read_provenance(ck / "sae_best.pt").settings["compat"] == "paper"
    # 10 steps, no validation due before i == N-1 = 9: best == last
    for k in best:
        assert torch.equal(best[k], last[k])
    x = torch.rand(20, best["W_enc"].shape[0]) * 3
    for path in (ck / "sae_best.pt", ck / "sae_best.safetensors"):
        m = load_sae(path)
        ref_model = pe.PaperSAE(json.loads((ck / "config_best.json").read_text())["sae"])
        ref_model.load_state_dict(best)
        ref_model.eval()
        torch.testing.assert_close(m.encode(x), ref_model.encode(x), rtol=1e-6, atol=1e-6)
    mtime = (ck / "sae_best.pt").stat().st_mtime_ns
    train_sae(cfg)
    assert (ck / "sae_best.pt").stat().st_mtime_ns == mtime


def test_default_mode_differs_from_paper(ref):
    """Known difference: sae1n's default trainer does not follow the paper's
    stream (epochs over a fixed permutation: ceil(N/B) steps per epoch)."""
    from sae1n.sae.trainer import SAETrainer

    v = _btk_variant(ref)
    cfg = _cfg(ref, v)
    cfg.training.num_tokens = None
    n, bs, epochs = _summary(ref, v)["num_train_rows"], int(cfg.training.batch_size), int(cfg.training.num_epochs)
    steps_per_epoch, total = SAETrainer(cfg, "cpu").schedule(n)
    assert total == epochs * -(-n // bs)
    assert (n * epochs) // bs == _summary(ref, v)["num_steps"]  # the paper's count
    if n % bs:  # a partial last batch: the counts differ
        assert total != _summary(ref, v)["num_steps"]
    assert pe.run_paper_training(cfg, max_steps=1).num_steps == 1


def test_only_topk_models(ref):
    from sae1n.errors import ConfigError

    cfg = _cfg(ref, VARIANTS[0])
    cfg.sae.model_type = "VanillaSAE"
    with pytest.raises(ConfigError, match="compat=paper supports"):
        pe.run_paper_training(cfg)


def test_default_run_exports_paper_pt(tmp_path):
    """checkpoint.paper_pt=true: the paper's sae_best.pt beside sae1n's safetensors."""
    from sae1n.sae.paper_exact import export_paper_checkpoints

    ck = tmp_path / "exp" / "checkpoints"
    ck.mkdir(parents=True)
    from sae1n.sae.checkpoints import load_sae, save_sae
    from sae1n.sae.models import build_sae

    model = build_sae({"act_size": 8, "dict_size": 16, "top_k": 2, "top_k_aux": 4})
    save_sae(model, ck / "sae_best.safetensors", config={"sae": model.cfg.to_dict()})
    (pt,) = export_paper_checkpoints(tmp_path / "exp")
    state = torch.load(pt, weights_only=True)
    assert set(state) == {"W_enc", "W_dec", "b_enc", "b_dec", "threshold"}
    assert torch.equal(state["W_dec"], model.W_dec.detach())
    torch.testing.assert_close(load_sae(pt).W_enc, model.W_enc)


def test_train_sae_paper_pt_switch(ref, tmp_path):
    from sae1n.sae.config import load_sae_config
    from sae1n.sae.train import train_sae

    s = _cfg(ref, VARIANTS[0])
    cfg = load_sae_config("demo", [
        f"output_dir={tmp_path}", "sae.device=cpu", f"data.feature_dir={s.data.feature_dir}",
        f"data.split_csv_path={s.data.split_csv_path}", "data.file_type=pt", "data.allow_missing=true",
        f"sae.act_size={s.sae.act_size}", "training.num_epochs=1", "training.batch_size=512", "checkpoint.paper_pt=true",
    ])
    out = train_sae(cfg)
    assert set(torch.load(out / "checkpoints" / "sae_final.pt", weights_only=True)) >= {"W_enc", "W_dec"}


def test_default_mode_known_differences(ref):
    """Rows 2, 7, 8 of docs/paper_differences.md, shown on the fixture's batch 0."""
    from safetensors.torch import load_file

    from sae1n.sae.models import build_sae
    from sae1n.sae.train import make_optimizer, train_step

    v = _btk_variant(ref)
    cfg = _cfg(ref, v)
    rec = np.load(ref / "runs" / v / "records.npz")
    train, _ = pe._split_files(cfg)
    _, load = pe._loader(train, "features")
    x = torch.cat([load(i) for i in range(len(train))])[torch.from_numpy(rec["train_batch_rows"][0]).long()]
    given = load_file(str(ref / "inputs" / "given_init.safetensors"))
    sae_cfg = OmegaConf.to_container(cfg.sae)
    ours = build_sae({k: v for k, v in sae_cfg.items() if k not in ("dtype", "device", "dict_size_ratio")})
    given = {k: v for k, v in given.items() if k != "threshold"} | {"threshold": torch.tensor(0.0)}
    ours.load_state_dict({**given, "num_batches_not_active": torch.zeros(given["b_enc"].shape[0])})
    paper = pe.PaperSAE(sae_cfg)
    paper.load_state_dict(given)
    # row 8: b_enc (non-zero in the given init) is used by default, never by the paper
    ours.eval()
    paper.eval()
    with torch.no_grad():
        assert not torch.allclose(ours.encode(x), paper.encode(x))
    # row 7: an eval forward moves the paper's threshold, not ours
    with torch.no_grad():
        paper(x)
        ours(x)
    assert float(paper.threshold) > 0 and float(ours.threshold) == 0
    # row 2: after one step our decoder rows are unit norm, the paper's are not
    opt = make_optimizer(ours, OmegaConf.create({"lr": 1e-3, "beta1": 0.9, "beta2": 0.99}))
    train_step(ours, opt, x, 1e5)
    run = pe.run_paper_training(cfg, init_state=given, max_steps=1)
    ours_dev = (ours.W_dec.detach().norm(dim=-1) - 1).abs().max().item()
    paper_dev = (run.model.W_dec.detach().norm(dim=-1) - 1).abs().max().item()
    assert ours_dev < 1e-6 < paper_dev


def test_default_init_and_validation_differ(ref):
    """Rows 1 and 6: sae1n's default init skips the two DataLoader draws; its
    validation visits each val row once, the paper's persistent stream repeats
    some rows within one validation (batches span buffer fills)."""
    from safetensors.torch import load_file

    from sae1n.sae.models import build_sae
    from sae1n.utils import seed_everything

    v = _btk_variant(ref)
    s = _summary(ref, v)
    sae = s["paper_exp_config_resolved"]["sae"]
    seed_everything(int(s["paper_exp_config_resolved"]["seed"]))
    ours = build_sae({k: sae[k] for k in ("model_type", "act_size", "dict_size", "top_k", "top_k_aux")})
    (init_file,) = sorted((ref / "runs").glob("init_weights_paper_seed*.safetensors"))
    assert not torch.equal(ours.W_enc.detach(), load_file(str(init_file))["W_enc"])
    rec = np.load(ref / "runs" / v / "records.npz")
    per_validation = s["val_batches_per_validation"]
    first = rec["val_batch_rows"][:per_validation].reshape(-1)
    if s["num_val_rows"] % int(s["paper_exp_config_resolved"]["training"]["batch_size"]):
        assert len(np.unique(first)) < len(first)


def test_periodic_checkpoints(ref, tmp_path):
    """checkpoint_freq: sae_<i>.pt at every multiple (state after that step's forward)."""
    cfg = _cfg(ref, VARIANTS[0])
    seen = []
    run = pe.run_paper_training(cfg, max_steps=7, on_checkpoint=lambda r, i: seen.append(i))
    assert seen == [0]  # checkpoint_freq 10000 in the recorded config
    cfg.training.checkpoint_freq = 3
    seen.clear()
    run = pe.run_paper_training(cfg, max_steps=7, on_checkpoint=lambda r, i: seen.append(i))
    assert seen == [0, 3, 6] and run.num_steps == 7
