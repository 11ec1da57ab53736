"""MIL slide classifiers behind one contract.

A model takes one bag of patch features (N, D) (and, while training, the
slide label) and returns a :class:`MILOutput`: slide ``logits`` (1, C),
per-patch ``scores`` (N,) for heatmaps, and an optional auxiliary loss
(CLAM's instance clustering loss) that the trainer mixes in with
``bag_weight``.

Per-patch scores are attention logits (ABMIL, CLAM, MambaMIL), the class
token's attention (TransMIL) or instance logits (MaxMIL, MeanMIL), always for
the positive class (class 1) of binary tasks and for the predicted class of
multi-class tasks.
"""

from __future__ import annotations

import inspect
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sae1n.errors import ConfigError, InputFileError
from sae1n.mil.nn import PPEG, AttentionScorer, SRMamba, TransLayer, patch_mlp


@dataclass
class MILOutput:
    """What every MIL model returns for one bag."""

    logits: torch.Tensor  # (1, n_classes)
    scores: torch.Tensor | None = None  # (N,) per patch
    aux_loss: torch.Tensor | None = None


class MILModel(nn.Module):
    """Base class: ``forward(bag (N, D), label=None) -> MILOutput``."""

    score_kind = "attention"
    bag_weight = 1.0  # weight of the slide loss against ``aux_loss``

    def __init__(self, in_dim: int, n_classes: int):
        super().__init__()
        if in_dim < 1 or n_classes < 2:
            raise ConfigError(
                f"a MIL model needs in_dim >= 1 and n_classes >= 2 (got {in_dim}, {n_classes})"
            )
        self.in_dim, self.n_classes = int(in_dim), int(n_classes)

    def score_class(self, logits: torch.Tensor) -> int:
        """The class whose per-patch scores are reported."""
        return 1 if self.n_classes == 2 else int(logits.detach().argmax(-1).reshape(-1)[0])

    @staticmethod
    def _as_bag(bag: torch.Tensor) -> torch.Tensor:
        if bag.dim() == 3 and bag.shape[0] == 1:
            bag = bag[0]
        if bag.dim() != 2 or bag.shape[0] == 0:
            raise ValueError(
                f"a bag must be (N > 0, D) patch features, got shape {tuple(bag.shape)}"
            )
        return bag


class InstanceMIL(MILModel):
    """Per-patch MLP to class logits, pooled over patches (max or mean)."""

    score_kind = "instance_logit"

    def __init__(
        self, in_dim, n_classes, pool: str = "max", hidden_dim=512, drop_out=0.25, act="relu"
    ):
        super().__init__(in_dim, n_classes)
        if pool not in ("max", "mean"):
            raise ConfigError(f"unknown instance pooling {pool!r}; use max or mean")
        self.pool = pool
        self.head = nn.Sequential(
            patch_mlp(in_dim, hidden_dim, act, drop_out), nn.Linear(hidden_dim, n_classes)
        )

    def forward(self, bag, label=None) -> MILOutput:
        inst = self.head(self._as_bag(bag))  # (N, C)
        logits = inst.amax(0, keepdim=True) if self.pool == "max" else inst.mean(0, keepdim=True)
        return MILOutput(logits, inst[:, self.score_class(logits)])


class MaxMIL(InstanceMIL):
    """MaxMIL: instance logits, max over patches."""

    def __init__(self, in_dim, n_classes, hidden_dim=512, drop_out=0.25, act="relu"):
        super().__init__(in_dim, n_classes, "max", hidden_dim, drop_out, act)


class MeanMIL(InstanceMIL):
    """MeanMIL: instance logits, mean over patches."""

    def __init__(self, in_dim, n_classes, hidden_dim=512, drop_out=0.25, act="relu"):
        super().__init__(in_dim, n_classes, "mean", hidden_dim, drop_out, act)


class ABMIL(MILModel):
    """Attention-based MIL (Ilse et al. 2018), gated attention by default."""

    def __init__(
        self, in_dim, n_classes, hidden_dim=512, attn_dim=128, drop_out=0.25, act="relu", gated=True
    ):
        super().__init__(in_dim, n_classes)
        self.fc = patch_mlp(in_dim, hidden_dim, act, drop_out)
        self.attention = AttentionScorer(hidden_dim, attn_dim, 1, gated=gated)
        self.classifier = nn.Linear(hidden_dim, n_classes)

    def forward(self, bag, label=None) -> MILOutput:
        h = self.fc(self._as_bag(bag))
        a = self.attention(h)[:, 0]
        logits = self.classifier(torch.softmax(a, 0) @ h)[None]
        return MILOutput(logits, a)


class CLAM(MILModel):
    """CLAM (Lu et al. 2021): gated attention with one branch (SB) or one per
    class (MB), plus instance-level clustering on the top/bottom ``k_sample``
    attended patches."""

    def __init__(
        self,
        in_dim,
        n_classes,
        multi_branch: bool = False,
        hidden_dim=512,
        attn_dim=256,
        drop_out=0.25,
        act="relu",
        gated=True,
        k_sample=8,
        bag_weight=0.7,
        subtyping=False,
    ):
        super().__init__(in_dim, n_classes)
        self.multi_branch, self.k_sample, self.subtyping = (
            multi_branch,
            int(k_sample),
            bool(subtyping),
        )
        self.bag_weight = float(bag_weight)
        self.fc = patch_mlp(in_dim, hidden_dim, act, drop_out)
        self.attention = AttentionScorer(
            hidden_dim, attn_dim, n_classes if multi_branch else 1, gated, drop_out
        )
        if multi_branch:
            self.classifiers = nn.ModuleList(nn.Linear(hidden_dim, 1) for _ in range(n_classes))
        else:
            self.classifier = nn.Linear(hidden_dim, n_classes)
        self.instance_classifiers = nn.ModuleList(
            nn.Linear(hidden_dim, 2) for _ in range(n_classes)
        )

    def forward(self, bag, label=None) -> MILOutput:
        h = self.fc(self._as_bag(bag))
        a_raw = self.attention(h).t()  # (branches, N)
        pooled = torch.softmax(a_raw, dim=1) @ h  # (branches, hidden)
        if self.multi_branch:
            logits = torch.cat([clf(pooled[i]) for i, clf in enumerate(self.classifiers)])[None]
        else:
            logits = self.classifier(pooled)
        aux = self.instance_loss(h, a_raw, int(label)) if label is not None else None
        branch = self.score_class(logits) if self.multi_branch else 0
        return MILOutput(logits, a_raw[branch], aux)

    def instance_loss(
        self, h: torch.Tensor, a_raw: torch.Tensor, label: int
    ) -> torch.Tensor | None:
        """Top-k attended patches of the true class are positives and the
        bottom-k negatives; with ``subtyping`` the other classes' top-k are
        negatives too."""
        k = min(self.k_sample, h.shape[0] // 2)
        if k < 1:
            return None
        losses = []
        for c, clf in enumerate(self.instance_classifiers):
            a = a_raw[c if self.multi_branch else 0]
            if c == label:
                idx = torch.cat([a.topk(k).indices, (-a).topk(k).indices])
                target = torch.cat([torch.ones(k), torch.zeros(k)]).long().to(h.device)
            elif self.subtyping:
                idx = a.topk(k).indices
                target = torch.zeros(k, dtype=torch.long, device=h.device)
            else:
                continue
            losses.append(F.cross_entropy(clf(h[idx]), target))
        total = torch.stack(losses).sum()
        return total / len(self.instance_classifiers) if self.subtyping else total


class CLAM_SB(CLAM):
    """CLAM with a single attention branch."""

    def __init__(self, in_dim, n_classes, **kw):
        super().__init__(in_dim, n_classes, multi_branch=False, **kw)


class CLAM_MB(CLAM):
    """CLAM with one attention branch per class."""

    def __init__(self, in_dim, n_classes, **kw):
        super().__init__(in_dim, n_classes, multi_branch=True, **kw)


class TransMIL(MILModel):
    """TransMIL (Shao et al. 2021): class token, two Nystrom attention layers
    with a PPEG position encoder in between. Scores are the class token's
    attention over the patches in the last layer. The attention arithmetic is
    the paper's (front padding, landmark means); ``exact_attention=True``
    uses exact attention up to ``num_landmarks`` tokens and unpadded segment
    means above."""

    score_kind = "cls_attention"

    def __init__(
        self,
        in_dim,
        n_classes,
        hidden_dim=512,
        drop_out=0.25,
        act="relu",
        heads=8,
        num_landmarks=None,
        attn_dropout=0.1,
        exact_attention=False,
    ):
        super().__init__(in_dim, n_classes)
        self.fc = patch_mlp(in_dim, hidden_dim, act, drop_out)
        self.cls_token = nn.Parameter(torch.randn(1, 1, hidden_dim) * 1e-6)
        self.layer1 = TransLayer(hidden_dim, heads, num_landmarks, attn_dropout, exact_attention)
        self.ppeg = PPEG(hidden_dim)
        self.layer2 = TransLayer(hidden_dim, heads, num_landmarks, attn_dropout, exact_attention)
        self.norm = nn.LayerNorm(hidden_dim)
        self.classifier = nn.Linear(hidden_dim, n_classes)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, bag, label=None) -> MILOutput:
        h = self.fc(self._as_bag(bag))[None]
        n = h.shape[1]
        side = math.ceil(math.sqrt(n))
        extra = side * side - n  # fill the square grid with the first patches again
        h = torch.cat([self.cls_token.to(h.dtype), h, h[:, :extra]], dim=1)
        h = self.ppeg(self.layer1(h), side)
        h, row = self.layer2(h, return_first_row=True)
        logits = self.classifier(self.norm(h)[:, 0])
        scores = row[0, 1 : n + 1].clone()
        if extra:
            scores[:extra] += row[0, n + 1 :]
        return MILOutput(logits, scores)


class MambaMIL(MILModel):
    """MambaMIL (Yang et al. 2024): residual pre-norm SR-Mamba layers over
    the patch sequence, then attention pooling."""

    def __init__(
        self,
        in_dim,
        n_classes,
        hidden_dim=512,
        drop_out=0.25,
        act="relu",
        layers=2,
        rate=10,
        d_state=16,
        d_conv=4,
        expand=2,
        attn_dim=128,
    ):
        super().__init__(in_dim, n_classes)
        self.fc = patch_mlp(in_dim, hidden_dim, act, drop_out)
        self.norms = nn.ModuleList(nn.LayerNorm(hidden_dim) for _ in range(layers))
        self.mixers = nn.ModuleList(
            SRMamba(hidden_dim, d_state, d_conv, expand, rate) for _ in range(layers)
        )
        self.norm = nn.LayerNorm(hidden_dim)
        self.attention = AttentionScorer(hidden_dim, attn_dim, 1, gated=False)
        self.classifier = nn.Linear(hidden_dim, n_classes)

    def set_scan_impl(self, impl: str) -> None:
        """Force the selective-scan implementation (``auto``, ``chunked``, ``kernel``, ``reference``)."""
        for m in self.mixers:
            m.scan_impl = impl

    def forward(self, bag, label=None) -> MILOutput:
        h = self.fc(self._as_bag(bag))[None]
        for norm, mixer in zip(self.norms, self.mixers):
            h = h + mixer(norm(h))
        h = self.norm(h)[0]
        a = self.attention(h)[:, 0]
        logits = self.classifier(torch.softmax(a, 0) @ h)[None]
        return MILOutput(logits, a)


# ----------------------------------------------------------------------------- registry

MODEL_TYPES: dict[str, type[MILModel]] = {
    "max_mil": MaxMIL,
    "mean_mil": MeanMIL,
    "att_mil": ABMIL,
    "clam_sb": CLAM_SB,
    "clam_mb": CLAM_MB,
    "trans_mil": TransMIL,
    "mamba_mil": MambaMIL,
}
ALIASES = {
    "maxmil": "max_mil",
    "meanmil": "mean_mil",
    "abmil": "att_mil",
    "transmil": "trans_mil",
    "mambamil": "mamba_mil",
}
_NOT_MODEL_ARGS = {"type", "in_dim"}


def canonical_model_type(name: str) -> str:
    """The registry name of a model type (accepts aliases like ``abmil``)."""
    key = str(name).lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in MODEL_TYPES:
        known = ", ".join(sorted(set(MODEL_TYPES) | set(ALIASES)))
        raise ConfigError(f"unknown model.type {name!r}; use one of {known}")
    return key


def build_model(model_cfg: Mapping, n_classes: int, in_dim: int | None = None) -> MILModel:
    """Build a model from a ``model`` config section (``type``, ``in_dim``,
    ``drop_out``, ``act`` and the model's own keys; other keys are ignored)."""
    cfg = dict(model_cfg)
    cls = MODEL_TYPES[canonical_model_type(cfg.get("type", ""))]
    in_dim = int(in_dim if in_dim is not None else cfg.get("in_dim") or 0)
    if in_dim < 1:
        raise ConfigError(
            "model.in_dim must be a positive integer (or let train-mil infer it from the features)"
        )
    accepted = _init_params(cls) - _NOT_MODEL_ARGS
    kwargs = {k: v for k, v in cfg.items() if k in accepted and v is not None}
    return cls(in_dim, int(n_classes), **kwargs)


_COMMON_MODEL_KEYS = {"type", "in_dim", "drop_out", "act"}


def check_model_keys(model_cfg: Mapping) -> None:
    """Raise :class:`ConfigError` naming any ``model.*`` key that no MIL model
    accepts (a typo such as ``+model.hiden_dim=32`` would otherwise be dropped
    silently). Keys of another model type are allowed (and ignored)."""
    known = set(_COMMON_MODEL_KEYS)
    for klass in MODEL_TYPES.values():
        known |= _init_params(klass)
    unknown = sorted(str(k) for k in model_cfg if k not in known)
    if unknown:
        raise ConfigError(
            f"unknown model key(s) {', '.join('model.' + k for k in unknown)} "
            f"(model.type={model_cfg.get('type')}); known keys: {', '.join(sorted(known))}"
        )


def _init_params(cls) -> set[str]:
    """Keyword arguments a model class accepts, following ``**kw`` to its bases."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass is MILModel:
            break
        params = inspect.signature(klass.__init__).parameters.values()
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return names - {"self", "in_dim", "n_classes", "multi_branch", "pool"}


# ----------------------------------------------------------------------------- checkpoints


def save_mil_checkpoint(
    path: str | os.PathLike, state_dict: Mapping[str, torch.Tensor], info: Mapping
) -> Path:
    """Write weights as safetensors (atomically) with ``info`` (model config,
    n_classes, in_dim, selected units, ...) as JSON metadata."""
    from safetensors.torch import save_file

    from sae1n.io import atomic_path

    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"sae1n_mil": json.dumps(dict(info), default=str)})
    return Path(path)


def load_mil_checkpoint(
    path: str | os.PathLike, map_location: str = "cpu"
) -> tuple[MILModel, dict]:
    """Rebuild a trained model from a ``save_mil_checkpoint`` file; returns (model in eval mode, info)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise InputFileError(
            path, "checkpoint not found", "train the model with `sae1n train-mil` first"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path), device=map_location)
    except Exception as exc:
        raise InputFileError(
            path,
            f"is not a readable safetensors checkpoint ({exc})",
            "delete it and re-run `sae1n train-mil`",
        ) from exc
    if "sae1n_mil" not in meta:
        raise InputFileError(
            path, "has no sae1n MIL metadata", "use a checkpoint written by `sae1n train-mil`"
        )
    info = json.loads(meta["sae1n_mil"])
    model = build_model(info["model"], info["n_classes"], info["in_dim"])
    model.load_state_dict(state)
    return model.to(map_location).eval(), info
