"""Baselines for the chosen SAE neuron, each chosen the way the neuron is.

Is the SAE needed at all? Each baseline turns a patch's *input* features
(the encoder embedding the SAE was trained on) into one score per patch:

* ``raw_dim``: one raw embedding dimension, the one ranked first by the same
  slide pooling + Welch t-test on the train slides;
* ``pca``: the same ranking over the top principal components of the train
  patches;
* ``random_sae``: the same ranking over an *untrained* SAE of the same shape
  and sparsity (``top_k`` active latents per patch): how much does training
  matter?
* ``linear_probe``: logistic regression on the train slides' *patch labels*
  -- an oracle that uses labels the method never sees (``oracle=True``).

The MIL baselines (ABMIL attention, MaxMIL instance scores) come from their
saved per-patch scores (see :mod:`sae1n.neurons.evaluate`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from sae1n.errors import ConfigError, Sae1nError
from sae1n.neurons.pooling import pool_activations
from sae1n.neurons.ranking import rank_by_t_test

FEATURE_BASELINES = ("raw_dim", "pca", "random_sae", "linear_probe")
ORACLES = {"linear_probe"}


@dataclass
class Baseline:
    """A fitted baseline: ``score(features)`` gives one value per patch
    (higher = more likely the positive class)."""

    method: str
    transform: Callable[[np.ndarray], np.ndarray]
    column: int = 0
    sign: float = 1.0
    oracle: bool = False
    detail: dict = field(default_factory=dict)

    def score(self, features: np.ndarray) -> np.ndarray:
        x = np.asarray(features, dtype=np.float32)
        if x.shape[0] == 0:
            return np.zeros(0)
        return self.sign * np.asarray(self.transform(x)[:, self.column], dtype=np.float64)


def select_column(
    transform: Callable[[np.ndarray], np.ndarray],
    train: Mapping[str, np.ndarray],
    labels: Mapping[str, int],
    *,
    pooling: str = "max",
    topk: int = 10,
    quantile: float = 0.9,
) -> tuple[int, float, dict]:
    """(column, sign, ranking row) of the transformed feature ranked first by
    slide pooling + Welch t-test on the labelled train slides (the neuron's rule)."""
    slides = [s for s in train if s in labels]
    pooled = np.stack(
        [pool_activations(transform(train[s]), pooling, topk=topk, quantile=quantile) for s in slides]
    )
    ranking = rank_by_t_test(pooled, [labels[s] for s in slides], pooling=pooling)
    top = ranking.iloc[0]
    sign = -1.0 if top["direction"] == "normal" else 1.0
    info = {
        "t_statistic": float(top["t_statistic"]),
        "p_value": float(top["p_value"]),
        "direction": str(top["direction"]),
    }
    return int(top["unit_id"]), sign, info


def random_sae_transform(sae_config, seed: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """Dense codes of an untrained SAE built from ``sae_config`` (an
    :class:`~sae1n.sae.SAEConfig` or mapping): ReLU pre-activations with only
    the ``top_k`` largest kept per patch (the trained SAE's sparsity)."""
    import torch

    from sae1n.sae import SAEConfig, build_sae

    cfg = sae_config if isinstance(sae_config, SAEConfig) else SAEConfig.from_mapping(dict(sae_config))
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(int(seed))
    try:
        model = build_sae(cfg).eval()
    finally:
        torch.random.set_rng_state(gen_state)
    k = int(min(cfg.top_k, cfg.dict_size))

    def transform(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
            x_in, _, _ = model.preprocess_input(t)
            acts = torch.relu(model.encoder_preacts(x_in - model.b_dec))
            top = torch.topk(acts, k, dim=1)
            out = torch.zeros_like(acts).scatter_(1, top.indices, top.values)
        return out.numpy()

    return transform


def fit_baselines(
    train: Mapping[str, np.ndarray],
    labels: Mapping[str, int],
    *,
    patch_labels: Mapping[str, np.ndarray] | None = None,
    methods: Sequence[str] = FEATURE_BASELINES,
    sae_config=None,
    n_components: int = 32,
    seed: int = 0,
    pooling: str = "max",
    topk: int = 10,
    quantile: float = 0.9,
) -> list[Baseline]:
    """Fit the feature baselines on the train slides.

    ``train``: slide id -> (N, D) input features; ``labels``: slide id -> 1/0;
    ``patch_labels`` (slide id -> (N,) bool aligned with ``train``, or a tuple
    (rows, labels) for the labelled rows only) is used
    only by the ``linear_probe`` oracle; ``sae_config`` (the trained SAE's)
    only by ``random_sae``.
    """
    unknown = [m for m in methods if m not in FEATURE_BASELINES]
    if unknown:
        raise ConfigError(f"unknown baseline(s) {unknown}; use {', '.join(FEATURE_BASELINES)}")
    if not train:
        raise Sae1nError("no train slides to fit the baselines on")
    rank_kw = dict(pooling=pooling, topk=topk, quantile=quantile)
    out: list[Baseline] = []
    for m in methods:
        if m == "raw_dim":

            def ident(x):
                return x

            col, sign, info = select_column(ident, train, labels, **rank_kw)
            out.append(Baseline(m, ident, col, sign, detail={"dim": col, **info}))
        elif m == "pca":
            from sklearn.decomposition import PCA

            stack = np.concatenate(list(train.values()))
            n = int(min(n_components, stack.shape[1], max(1, stack.shape[0] - 1)))
            pca = PCA(n_components=n, random_state=int(seed)).fit(stack)

            def project(x, pca=pca):
                return pca.transform(x)

            col, sign, info = select_column(project, train, labels, **rank_kw)
            out.append(
                Baseline(
                    m,
                    project,
                    col,
                    sign,
                    detail={"component": col, "n_components": n, "explained_variance_ratio": float(pca.explained_variance_ratio_[col]), **info},
                )
            )
        elif m == "random_sae":
            if sae_config is None:
                continue
            tr = random_sae_transform(sae_config, seed)
            col, sign, info = select_column(tr, train, labels, **rank_kw)
            out.append(Baseline(m, tr, col, sign, detail={"unit": col, "seed": int(seed), **info}))
        elif m == "linear_probe":
            if not patch_labels:
                continue
            from sklearn.linear_model import LogisticRegression
            from sklearn.pipeline import make_pipeline
            from sklearn.preprocessing import StandardScaler

            xs, ys = [], []
            for s in train:
                if s not in patch_labels:
                    continue
                lab = patch_labels[s]
                rows, lab = lab if isinstance(lab, tuple) else (np.arange(len(train[s])), lab)
                xs.append(train[s][np.asarray(rows)])
                ys.append(np.asarray(lab, bool))
            if not xs:
                continue
            x, y = np.concatenate(xs), np.concatenate(ys)
            if y.all() or not y.any():
                continue
            probe = make_pipeline(
                StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced")
            ).fit(x, y)

            def decision(x, probe=probe):
                return probe.decision_function(x)[:, None]

            out.append(
                Baseline(
                    m,
                    decision,
                    oracle=True,
                    detail={"n_train_patches": int(len(y)), "n_train_positive": int(y.sum())},
                )
            )
    return out
