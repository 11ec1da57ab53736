"""SAE training speed, compat=paper vs the default trainer's step.

Same synthetic features (B x D float32), same sizes; times full optimisation
steps (forward, backward, clip, decoder renorm / projection, Adam):

* paper mode: :class:`sae1n.sae.paper_model.PaperSAE` (dense forward,
  autograd, plain Adam; the arithmetic of the paper's code, bit for bit);
* default: :func:`sae1n.sae.train.train_step` with sae1n's sparse kernels
  and fused Adam.

Run:  .venv/bin/python benchmarks/bench_sae_paper.py [--threads 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import torch


def _time(fn, steps: int, sync) -> float:
    fn()  # warm-up
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--act", type=int, default=512)
    ap.add_argument("--ratio", type=int, default=4)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    from omegaconf import OmegaConf

    from sae1n.sae.models import build_sae
    from sae1n.sae.paper_model import PaperSAE
    from sae1n.sae.train import make_optimizer, train_step

    dev = a.device
    sync = torch.cuda.synchronize if dev.startswith("cuda") else (lambda: None)
    sae_cfg = {"model_type": "BatchTopKSAE", "act_size": a.act, "dict_size": a.act * a.ratio, "top_k": a.k, "top_k_aux": 512, "aux_penalty": 1 / 32, "n_batches_to_dead": 5}
    x = (torch.randn(a.batch, a.act).abs() * 0.5).to(dev)
    torch.manual_seed(0)
    paper = PaperSAE(sae_cfg).to(dev)
    opt = torch.optim.Adam(paper.parameters(), lr=1e-3, betas=(0.9, 0.99))

    def paper_step():
        paper.train()
        out = paper(x)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(list(paper.parameters()), 1e5)
        paper.make_decoder_weights_and_grad_unit_norm()
        opt.step()
        opt.zero_grad()

    ours = build_sae(sae_cfg).to(dev)
    opt2 = make_optimizer(ours, OmegaConf.create({"lr": 1e-3, "beta1": 0.9, "beta2": 0.99}))
    t_paper = _time(paper_step, a.steps, sync)
    t_ours = _time(lambda: train_step(ours, opt2, x, 1e5), a.steps, sync)
    print(f"D={a.act} F={a.act * a.ratio} B={a.batch} k={a.k} device={dev} threads={torch.get_num_threads()}")
    print(f"compat=paper : {a.batch / t_paper:12.0f} tokens/s ({t_paper * 1e3:.1f} ms/step)")
    print(f"default      : {a.batch / t_ours:12.0f} tokens/s ({t_ours * 1e3:.1f} ms/step)")


if __name__ == "__main__":
    main()
