"""The paper's MIL models, exactly (``compat=paper``): module layout, state-dict
keys, RNG use at construction (hence the init) and forward arithmetic of
``experiments/mil/models/`` of the paper's code.

* ``max_mil`` / ``mean_mil``: ``head = Linear(in,512) -> ReLU -> Dropout(0.25)
  -> Linear(512,C)``, max / mean over instances. Init: PyTorch defaults, then
  ``self.apply(initialize_weights)``, which re-initialises every Linear
  (xavier normal, zero bias) once per ancestor plus once for itself
  (depth + 1 times).
* ``att_mil`` (the paper's ``DAttention``, ABMIL): ungated attention
  ``Linear(512,128) -> Tanh -> Linear(128,1)``; PyTorch default init (the
  paper's xavier call is commented out).
* ``trans_mil``: class token, the paper's Nystrom attention (front zero
  padding to a multiple of the landmarks, landmarks = means of
  ``ceil(n/landmarks)`` consecutive tokens, a pseudo-inverse started from
  whole-tensor maxima, a residual depth-wise conv on the values), PPEG,
  padding of the sequence to a square with its first tokens; xavier init
  repeated depth + 1 times, LayerNorm (1, 0), convolutions default init.

Every model follows sae1n's contract (:class:`sae1n.mil.models.MILOutput`):
per-patch scores are the class-1 instance logits (Max/Mean), the attention
logits before softmax (ABMIL) or the class token's attention in the last
layer (TransMIL, eval only).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sae1n.errors import ConfigError
from sae1n.mil.models import MILModel, MILOutput
from sae1n.mil.nn import nystrom_paper

PAPER_MODEL_TYPES = ("max_mil", "mean_mil", "att_mil", "trans_mil")


def initialize_weights(module: nn.Module) -> None:
    """The paper's ``initialize_weights``: walks ``module.modules()``; meant for
    ``Module.apply``, which calls it on every sub-module (hence the repeats)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                m.bias.data.zero_()
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)


def _act(act: str) -> nn.Module:
    return nn.GELU() if str(act).lower() == "gelu" else nn.ReLU()


class PaperInstanceMIL(MILModel):
    """The paper's MaxMIL / MeanMIL."""

    score_kind = "instance_logit"

    def __init__(self, in_dim, n_classes, pool: str = "max", dropout=True, act="relu"):
        super().__init__(in_dim, n_classes)
        self.pool = pool
        layers = [nn.Linear(in_dim, 512), _act(act)]
        if dropout:
            layers.append(nn.Dropout(0.25))
        layers.append(nn.Linear(512, n_classes))
        self.head = nn.Sequential(*layers)
        self.apply(initialize_weights)

    def forward(self, bag, label=None) -> MILOutput:
        inst = self.head(self._as_bag(bag))
        logits = (inst.max(dim=0).values if self.pool == "max" else inst.mean(dim=0)).unsqueeze(0)
        return MILOutput(logits, inst[:, self.score_class(logits)])


class PaperDAttention(MILModel):
    """The paper's ``DAttention`` (ungated ABMIL)."""

    def __init__(self, in_dim, n_classes, dropout=True, act="relu"):
        super().__init__(in_dim, n_classes)
        feature = [nn.Linear(in_dim, 512), _act(act)]
        if dropout:
            feature.append(nn.Dropout(0.25))
        self.feature = nn.Sequential(*feature)
        self.attention = nn.Sequential(nn.Linear(512, 128), nn.Tanh(), nn.Linear(128, 1))
        self.classifier = nn.Sequential(nn.Linear(512, n_classes))

    def forward(self, bag, label=None) -> MILOutput:
        feature = self.feature(self._as_bag(bag))
        a_raw = self.attention(feature).transpose(-1, -2)  # (1, N)
        m = torch.mm(F.softmax(a_raw, dim=-1), feature)
        return MILOutput(self.classifier(m), a_raw[0])


class PaperNystromAttention(nn.Module):
    """Nystrom self-attention as the paper's TransMIL uses it."""

    def __init__(self, dim=512, dim_head=64, heads=8, num_landmarks=256, pinv_iterations=6, residual_conv_kernel=33, dropout=0.1):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.num_landmarks, self.pinv_iterations = heads, num_landmarks, pinv_iterations
        self.scale = dim_head**-0.5
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))
        pad = residual_conv_kernel // 2
        self.res_conv = nn.Conv2d(heads, heads, (residual_conv_kernel, 1), padding=(pad, 0), groups=heads, bias=False)

    def forward(self, x: torch.Tensor, first_row: bool = False):
        return nystrom_paper(self, x, first_row=first_row)


class PaperTransLayer(nn.Module):
    def __init__(self, dim=512):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = PaperNystromAttention(dim=dim, dim_head=dim // 8, heads=8, num_landmarks=dim // 2, pinv_iterations=6, dropout=0.1)

    def forward(self, x, first_row: bool = False):
        if first_row:
            out, row = self.attn(self.norm(x), first_row=True)
            return x + out, row
        return x + self.attn(self.norm(x))


class PaperPPEG(nn.Module):
    def __init__(self, dim=512):
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, 7, 1, 7 // 2, groups=dim)
        self.proj1 = nn.Conv2d(dim, dim, 5, 1, 5 // 2, groups=dim)
        self.proj2 = nn.Conv2d(dim, dim, 3, 1, 3 // 2, groups=dim)

    def forward(self, x, side_h: int, side_w: int):
        b, _, c = x.shape
        cls_token, feat = x[:, 0], x[:, 1:]
        cnn = feat.transpose(1, 2).reshape(b, c, side_h, side_w)
        x = self.proj(cnn) + cnn + self.proj1(cnn) + self.proj2(cnn)
        x = x.flatten(2).transpose(1, 2)
        return torch.cat((cls_token.unsqueeze(1), x), dim=1)


class PaperTransMIL(MILModel):
    """The paper's TransMIL."""

    score_kind = "cls_attention"

    def __init__(self, in_dim, n_classes, dropout=True, act="relu"):
        super().__init__(in_dim, n_classes)
        # built in the paper's order (the RNG order), registered in its key order
        fc1 = [nn.Linear(in_dim, 512), _act(act)]
        if dropout:
            fc1.append(nn.Dropout(0.25))
        pos_layer = PaperPPEG(512)
        cls_token = nn.Parameter(torch.randn(1, 1, 512))
        nn.init.normal_(cls_token, std=1e-6)
        layer1, layer2 = PaperTransLayer(512), PaperTransLayer(512)
        norm = nn.LayerNorm(512)
        classifier = nn.Linear(512, n_classes)
        self.cls_token = cls_token
        self._fc1 = nn.Sequential(*fc1)
        self.pos_layer = pos_layer
        self.layer1, self.layer2 = layer1, layer2
        self.norm = norm
        self.classifier = classifier
        self.apply(initialize_weights)

    def forward(self, bag, label=None) -> MILOutput:
        h = self._as_bag(bag).float().expand(1, -1, -1)
        h = self._fc1(h)
        n = h.shape[1]
        side = int(math.ceil(math.sqrt(n)))
        add = side * side - n
        h = torch.cat([h, h[:, :add, :]], dim=1)
        h = torch.cat((self.cls_token.expand(h.shape[0], -1, -1), h), dim=1)
        h = self.layer1(h)
        h = self.pos_layer(h, side, side)
        row = None
        if self.training:
            h = self.layer2(h)
        else:
            h, row = self.layer2(h, first_row=True)
        logits = self.classifier(self.norm(h)[:, 0])
        scores = None
        if row is not None:
            scores = row[0, 1 : n + 1].clone()
            if add:
                scores[:add] += row[0, n + 1 :]
        return MILOutput(logits, scores)


def build_paper_model(model_type: str, in_dim: int, n_classes: int, *, dropout=True, act: str = "relu") -> MILModel:
    """The paper's model of ``model_type`` (after ``seed_torch`` this reproduces its init).

    As the paper's ``core_utils.train`` builds them: MaxMIL / MeanMIL with their
    defaults (``dropout=True``, ReLU, whatever ``model.drop_out`` says), ABMIL and
    TransMIL with ``dropout`` / ``act`` from the config."""
    from sae1n.mil.models import canonical_model_type

    t = canonical_model_type(model_type)
    if t not in PAPER_MODEL_TYPES:
        raise ConfigError(
            f"compat=paper supports model.type {', '.join(PAPER_MODEL_TYPES)}, got {t}",
            "drop compat=paper for CLAM / MambaMIL",
        )
    dropout = bool(dropout) if not isinstance(dropout, int | float) or isinstance(dropout, bool) else dropout > 0
    if t in ("max_mil", "mean_mil"):
        return PaperInstanceMIL(in_dim, n_classes, t.split("_")[0])
    if t == "att_mil":
        return PaperDAttention(in_dim, n_classes, dropout, act)
    return PaperTransMIL(in_dim, n_classes, dropout, act)
