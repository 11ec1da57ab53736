"""SAE training-step speed: sae1n's sparse step vs a dense paper-style step.

Measured in one run, same machine, same weights and inputs:

* the dense reference step written the way the paper's code does it
  (dense ``acts_topk @ W_dec`` decode, a top-k over the flattened B x F
  matrix, boolean-indexed AuxK, autograd through everything, default Adam);
* sae1n's step (:func:`sae1n.sae.train.train_step`: sparse kernels, fused Adam);
* the machine's dense-GEMM rate on the encoder matmul's shape, to report
  what fraction of the step-time floor (that one unavoidable matmul) we reach;
* a loss/gradient check: both give the same loss on the same weights;
* a 9-config sweep (k in {8, 16, 32} x expansion {2, 4, 8}) trained on one
  pass over generated features vs the 9 runs one after another.

Run:  .venv/bin/python benchmarks/bench_sae.py [--threads 2] [--skip-sweep]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


# ----------------------------------------------------------------------------- reference
class PaperStyleStep:
    """The dense formulation, as in the paper's BatchTopKSAE (plus ``b_enc``,
    which sae1n adds by default, so both compute the same function)."""

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.99), max_grad_norm=1e5):
        self.m = model
        self.cfg = model.cfg
        self.opt = torch.optim.Adam(model.parameters(), lr=lr, betas=betas)
        self.max_grad_norm = max_grad_norm

    def loss(self, x):
        m, cfg = self.m, self.cfg
        x_cent = x - m.b_dec
        acts = F.relu(x_cent @ m.W_enc + m.b_enc)
        flat = acts.flatten()
        top = torch.topk(flat, cfg.top_k * x.shape[0], dim=-1)
        acts_topk = torch.zeros_like(flat).scatter(-1, top.indices, top.values).reshape(acts.shape)
        x_rec = acts_topk @ m.W_dec + m.b_dec
        with torch.no_grad():  # threshold and dead counters, as the paper updates them
            pos = acts_topk[acts_topk > 0]
            if pos.numel():
                m.threshold.mul_(1 - cfg.threshold_lr).add_(cfg.threshold_lr * pos.min())
            m.num_batches_not_active += (acts_topk.sum(0) == 0).float()
            m.num_batches_not_active[acts_topk.sum(0) > 0] = 0
        l2 = (x_rec - x).pow(2).mean()
        l1 = cfg.l1_coeff * acts_topk.abs().sum(-1).mean()
        dead = m.num_batches_not_active >= cfg.n_batches_to_dead
        aux = torch.zeros((), device=x.device)
        if dead.sum() > 0:
            residual = x - x_rec
            sub = acts[:, dead]
            t = torch.topk(sub, min(cfg.top_k_aux, int(dead.sum())), dim=-1)
            acts_aux = torch.zeros_like(sub).scatter(-1, t.indices, t.values)
            aux = cfg.aux_penalty * ((acts_aux @ m.W_dec[dead]) - residual).pow(2).mean()
        return l2 + l1 + aux

    def step(self, x):
        loss = self.loss(x)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.m.parameters(), self.max_grad_norm)
        self.m.make_decoder_weights_and_grad_unit_norm()
        self.opt.step()
        self.opt.zero_grad()
        return loss


def _sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, reps, device="cpu"):
    times = []
    for _ in range(reps):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return times


def bench_step(args) -> dict:
    from omegaconf import OmegaConf

    from sae1n.sae.models import build_sae
    from sae1n.sae.train import make_optimizer, train_step

    B, D, F_, k = args.batch, args.dim, args.dim * args.expansion, args.k
    dev = args.device
    torch.manual_seed(0)
    base = build_sae(dict(act_size=D, dict_size=F_, top_k=k, top_k_aux=512, n_batches_to_dead=5))
    # realistic inputs: a mean offset, correlated directions, and a trained-looking bias
    x = torch.randn(B, D) @ (torch.eye(D) + 0.1 * torch.randn(D, D)) + 0.5
    with torch.no_grad():
        base.b_dec.copy_(x.mean(0))
        base.b_enc.normal_(0, 0.01)
    n_dead = int(args.dead_frac * F_)
    dead_pattern = torch.zeros(F_)
    dead_pattern[torch.randperm(F_, generator=torch.Generator().manual_seed(1))[:n_dead]] = 10
    base, x, dead_pattern = base.to(dev), x.to(dev), dead_pattern.to(dev)

    ours = copy.deepcopy(base)
    ref_model = copy.deepcopy(base)
    ref = PaperStyleStep(ref_model)
    opt = make_optimizer(ours, OmegaConf.create({"lr": 1e-3, "beta1": 0.9, "beta2": 0.99}))

    # ---- same loss (and gradients) on the same weights
    check_a, check_b = copy.deepcopy(base), copy.deepcopy(base)
    for m in (check_a, check_b):
        m.num_batches_not_active.copy_(dead_pattern)
    la = check_a(x)["loss"]
    lb = PaperStyleStep(check_b).loss(x)
    la.backward()
    lb.backward()
    rel_loss = abs(la.item() - lb.item()) / abs(lb.item())
    grad_err = max(
        float((pa.grad - pb.grad).abs().max() / pb.grad.abs().max().clamp_min(1e-30))
        for pa, pb in zip(check_a.parameters(), check_b.parameters())
        if pb.grad is not None
    )

    def run_ours():
        ours.num_batches_not_active.copy_(dead_pattern)
        train_step(ours, opt, x, 1e5)

    def run_ref():
        ref_model.num_batches_not_active.copy_(dead_pattern)
        ref.step(x)

    out = torch.empty(B, F_, device=dev)
    w = base.W_enc.detach()
    xc = x - base.b_dec.detach()

    def gemm():
        torch.mm(xc, w, out=out)

    for fn in (run_ours, run_ref, gemm):  # warm-up
        fn()
        fn()
    t_ours, t_ref, t_gemm = [], [], []
    for _ in range(args.reps):  # interleaved, so load from other processes hits all alike
        t_ours += timed(run_ours, 1, dev)
        t_ref += timed(run_ref, 1, dev)
        t_gemm += timed(gemm, 3, dev)
    med = statistics.median
    s_ours, s_ref, s_gemm = med(t_ours), med(t_ref), med(t_gemm)
    flops = 2 * B * D * F_
    return {
        "shape": f"{D} -> {F_}, k {k}, batch {B}, {n_dead} dead latents",
        "ours_ms": s_ours * 1e3,
        "ref_ms": s_ref * 1e3,
        "ours_tok_s": B / s_ours,
        "ref_tok_s": B / s_ref,
        "speedup": s_ref / s_ours,
        "gemm_ms": s_gemm * 1e3,
        "gemm_gflops": flops / s_gemm / 1e9,
        "gemm_fraction": s_gemm / s_ours,
        "rel_loss_diff": rel_loss,
        "max_rel_grad_diff": grad_err,
        "loss": lb.item(),
    }


# ----------------------------------------------------------------------------- sweep
def bench_sweep(args) -> dict:
    from omegaconf import OmegaConf

    from sae1n.configs import load_experiment
    from sae1n.io import write_bag
    from sae1n.sae.train import train_sae

    rng = np.random.default_rng(0)
    D = args.dim
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        feat = root / "features" / "bench" / "clam_processed" / "features_x"
        mix = rng.normal(size=(D, D)).astype(np.float32) / np.sqrt(D)
        ids = []
        for i in range(args.sweep_slides):
            sid = f"s{i:02d}"
            ids.append(sid)
            x = rng.normal(size=(args.sweep_patches, D)).astype(np.float32) @ mix + 0.5
            write_bag(feat, sid, x, np.zeros((len(x), 2), np.int64), formats=("h5",))
        n_val = max(1, args.sweep_slides // 8)
        split = root / "split.csv"
        import pandas as pd

        pd.DataFrame(
            {"train": ids[n_val:], "val": ids[:n_val] + [None] * (len(ids) - 2 * n_val)}
        ).to_csv(split)
        common = [
            f"data.feature_dir={feat}",
            f"data.split_csv_path={split}",
            "data.file_type=h5",
            f"sae.act_size={D}",
            "training.num_epochs=1",
            f"training.batch_size={args.batch}",
            "training.validation_freq=0",
            "training.checkpoint_freq=0",
            f"training.num_threads={args.threads}",
            f"sae.device={args.device}",
            "training.tensorboard=false",
        ]
        grid = [(k, e) for k in (8, 16, 32) for e in (2, 4, 8)]

        def cfg_for(name, extra):
            c = load_experiment(
                "sae", "camelyon16_conch_0", common + [f"output_dir={root / name}"] + extra
            )
            c.exp_name = name
            return c

        # pack the store once, outside both timings
        train_sae(
            cfg_for("warm", ["sae.top_k=8", "sae.dict_size_ratio=2", "training.num_tokens=1"])
        )
        t = time.perf_counter()
        for k, e in grid:
            train_sae(cfg_for(f"single_k{k}_e{e}", [f"sae.top_k={k}", f"sae.dict_size_ratio={e}"]))
        t_single = time.perf_counter() - t
        c = cfg_for("sweep", [])
        c.sweep = OmegaConf.create({"sae": {"top_k": [8, 16, 32], "dict_size_ratio": [2, 4, 8]}})
        t = time.perf_counter()
        train_sae(c)
        t_sweep = time.perf_counter() - t
        n_train = (args.sweep_slides - n_val) * args.sweep_patches
    return {
        "configs": len(grid),
        "train_patches": n_train,
        "single_s": t_single,
        "sweep_s": t_sweep,
        "ratio": t_single / t_sweep,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--expansion", type=int, default=4)
    p.add_argument("--k", type=int, default=16)
    p.add_argument(
        "--dead-frac",
        type=float,
        default=0.05,
        help="latents marked dead before each step (AuxK active)",
    )
    p.add_argument("--reps", type=int, default=6)
    p.add_argument("--skip-sweep", action="store_true")
    p.add_argument("--sweep-slides", type=int, default=5)
    p.add_argument("--sweep-patches", type=int, default=4096)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device} ({where})"
    )
    r = bench_step(args)
    print(f"\nSAE training step ({r['shape']}), median of {args.reps}:")
    print(f"  paper-style dense step : {r['ref_ms']:8.1f} ms  {r['ref_tok_s']:9,.0f} tokens/s")
    print(f"  sae1n sparse step      : {r['ours_ms']:8.1f} ms  {r['ours_tok_s']:9,.0f} tokens/s")
    print(f"  speed-up               : {r['speedup']:8.2f} x")
    print(
        f"  encoder matmul alone   : {r['gemm_ms']:8.1f} ms  ({r['gemm_gflops']:.0f} GFLOP/s dense GEMM on this machine)"
    )
    print(
        f"  our step vs that floor : {100 * r['gemm_fraction']:8.1f} % of the dense-GEMM limit for the encoder matmul"
    )
    print(
        f"  same loss check        : loss {r['loss']:.6f}, relative difference {r['rel_loss_diff']:.2e}, max relative gradient difference {r['max_rel_grad_diff']:.2e}"
    )
    ok = r["rel_loss_diff"] < 1e-5 and r["max_rel_grad_diff"] < 1e-3
    print(f"  check                  : {'PASS' if ok else 'FAIL'}")
    if not args.skip_sweep:
        s = bench_sweep(args)
        print(
            f"\nSweep of {s['configs']} configs (k 8/16/32 x expansion 2/4/8), 1 epoch of {s['train_patches']:,} patches:"
        )
        print(f"  9 single runs : {s['single_s']:7.1f} s")
        print(f"  one sweep run : {s['sweep_s']:7.1f} s")
        print(f"  ratio         : {s['ratio']:7.2f} x")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
