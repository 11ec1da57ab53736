"""Pathology foundation models built from timm modules.

* plain timm ``VisionTransformer`` configurations (UNI2-h, Virchow2,
  H-optimus-0/1, H0-mini, Prov-GigaPath): register tokens, SwiGLU MLPs and
  layer-scale are timm options; the entry's ``arch["vit"]`` holds the exact
  keyword arguments each model card gives (``mlp_layer``/``act_layer`` by
  name so configs stay plain data). ``arch["pool"]`` is ``"cls"`` (the class
  token after the final norm) or ``"cls+mean"`` (class token concatenated
  with the mean of the patch tokens, register tokens excluded: Virchow2).
* CONCH v1.5 (TITAN's patch encoder): a timm ViT-L/16 trunk, CoCa's
  attentional pooler (one query) and a LayerNorm, written here.
* CTransPath: timm's Swin-T with the convolutional stem written here.

Checkpoints are read safely (:mod:`sae1n.encoders.weights`); timm's own
key converters adapt the published layouts (positional-embedding grids,
original DINOv2 / Swin key names).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sae1n.encoders.base import EncoderModel
from sae1n.encoders.weights import find_weight_file, load_weights, read_state_dict
from sae1n.errors import InputFileError

TIMM_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _layers(kwargs: Mapping) -> dict:
    """Replace the by-name ``mlp_layer`` / ``act_layer`` with timm classes."""
    from timm.layers import GluMlp, Mlp, SwiGLU, SwiGLUPacked

    mlps = {"mlp": Mlp, "swiglu_packed": SwiGLUPacked, "swiglu": SwiGLU, "glu": GluMlp}
    acts = {"silu": nn.SiLU, "gelu": nn.GELU}
    out = dict(kwargs)
    if isinstance(out.get("mlp_layer"), str):
        out["mlp_layer"] = mlps[out["mlp_layer"]]
    if isinstance(out.get("act_layer"), str):
        out["act_layer"] = acts[out["act_layer"]]
    return out


def _hub_file(repo: str, names) -> str:
    from huggingface_hub import hf_hub_download

    last = None
    for name in names:
        try:
            return hf_hub_download(repo, name)
        except Exception as exc:  # EntryNotFound / network: try the next name
            last = exc
    raise last  # type: ignore[misc]


def _weight_path(spec, weights, candidates, what: str):
    if weights is None:
        return None
    if weights == "hub":
        return Path(_hub_file(spec.hub_id, candidates))
    return find_weight_file(weights, list(candidates), what)


def folder_model_args(weights) -> dict:
    """``model_args`` from a timm hub ``config.json`` beside the weights
    (a downloaded snapshot describes its own architecture), else ``{}``."""
    if weights in (None, "hub"):
        return {}
    folder = Path(weights)
    folder = folder if folder.is_dir() else folder.parent
    cfg = folder / "config.json"
    if not cfg.is_file():
        return {}
    try:
        data = json.loads(cfg.read_text())
    except (OSError, ValueError) as exc:
        raise InputFileError(cfg, f"is not valid JSON ({exc})", "re-download the model's config.json") from exc
    args = data.get("model_args") if isinstance(data, dict) else None
    return dict(args) if isinstance(args, dict) else {}


# ----------------------------------------------------------------------------- ViT family


class TimmViTEncoder(EncoderModel):
    """A timm ViT with the model's own pooling of the output tokens."""

    def __init__(self, vit, pool: str = "cls"):
        super().__init__()
        if pool not in ("cls", "cls+mean"):
            raise ValueError(f"pool must be 'cls' or 'cls+mean', not {pool!r}")
        self.vit = vit
        self.pool = pool
        self.dim = int(vit.num_features) * (2 if pool == "cls+mean" else 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.vit.forward_features(images)  # (B, prefix + patches, D), final norm applied
        cls = tokens[:, 0]
        if self.pool == "cls":
            return cls
        return torch.cat([cls, tokens[:, self.vit.num_prefix_tokens :].mean(dim=1)], dim=-1)


def build_timm_vit(spec, weights, arch: Mapping) -> TimmViTEncoder:
    """Registry builder for the timm ViT entries (``arch["vit"]``: timm
    ``VisionTransformer`` kwargs; ``arch["pool"]``: ``cls`` or ``cls+mean``)."""
    from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

    vit_args = {**dict(arch.get("vit", {})), **folder_model_args(weights)}
    vit = VisionTransformer(**_layers(vit_args))
    what = spec.description.split(" (")[0] or spec.name
    path = _weight_path(spec, weights, arch.get("weight_files", TIMM_WEIGHT_FILES), what)
    if path is not None:
        sd = read_state_dict(path)
        # timm's converter: resamples the positional grid, maps original DINOv2 keys
        sd = checkpoint_filter_fn(sd, vit)
        load_weights(vit, sd, path, what=what)
    return TimmViTEncoder(vit, pool=str(arch.get("pool", "cls")))


# ----------------------------------------------------------------------------- CONCH v1.5


class AttentionalPooler(nn.Module):
    """CoCa's attentional pooler: learned queries attend over the tokens
    (LayerNorm on both sides, no biases), as in CONCH's vision tower."""

    def __init__(self, d_model: int, context_dim: int, n_head: int = 8, n_queries: int = 1):
        super().__init__()
        self.query = nn.Parameter(torch.randn(n_queries, d_model))
        self.heads = n_head
        self.ln_k = nn.LayerNorm(context_dim)
        self.ln_q = nn.LayerNorm(d_model)
        self.to_q = nn.Linear(d_model, d_model, bias=False)
        self.to_kv = nn.Linear(context_dim, d_model * 2, bias=False)
        self.to_out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.to_q(self.ln_q(self.query)).expand(b, -1, -1)
        k, v = self.to_kv(self.ln_k(x)).chunk(2, dim=-1)

        def heads(t):
            return t.reshape(b, t.shape[1], self.heads, -1).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v))
        return self.to_out(out.transpose(1, 2).reshape(b, -1, q.shape[-1]))


class ConchV15Encoder(EncoderModel):
    """CONCH v1.5 vision tower: ViT-L/16 trunk -> attentional pooler (1
    query, 768-d) -> LayerNorm. No text tower is published for v1.5."""

    def __init__(self, trunk_args: Mapping, pool_dim: int = 768, pool_heads: int = 8):
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        self.trunk = VisionTransformer(**_layers(trunk_args))
        self.attn_pool_contrast = AttentionalPooler(
            pool_dim, self.trunk.embed_dim, n_head=pool_heads, n_queries=1
        )
        self.ln_contrast = nn.LayerNorm(pool_dim)
        self.dim = int(pool_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.trunk.forward_features(images)
        return self.ln_contrast(self.attn_pool_contrast(tokens)[:, 0])


def build_conch_v15(spec, weights, arch: Mapping) -> ConchV15Encoder:
    """Registry builder for ``conch_v15`` (``pytorch_model_vision.bin``:
    ``trunk.*``, ``attn_pool_contrast.*``, ``ln_contrast.*``)."""
    from timm.layers import resample_abs_pos_embed

    model = ConchV15Encoder(
        arch.get("vit", {}), pool_dim=int(arch.get("pool_dim", 768)), pool_heads=int(arch.get("pool_heads", 8))
    )
    path = _weight_path(spec, weights, ("pytorch_model_vision.bin", "model.safetensors"), "CONCH v1.5")
    if path is not None:
        sd = read_state_dict(path)
        pe = sd.get("trunk.pos_embed")
        own = model.trunk.pos_embed
        if pe is not None and pe.shape != own.shape:  # trained at another grid: resample
            side = int(round((pe.shape[1] - 1) ** 0.5))
            sd["trunk.pos_embed"] = resample_abs_pos_embed(
                pe, new_size=model.trunk.patch_embed.grid_size, old_size=(side, side), num_prefix_tokens=1
            )
        load_weights(model, sd, path, what="CONCH v1.5")
    return model


# ----------------------------------------------------------------------------- CTransPath


class ConvStem(nn.Module):
    """CTransPath's patch embedding: two stride-2 3x3 conv + BN + ReLU
    stages (embed/8, embed/4 channels) and a 1x1 projection to ``embed_dim``
    (overall stride 4), then the Swin's LayerNorm; NHWC output for timm."""

    def __init__(
        self,
        img_size=224,
        patch_size=4,
        in_chans=3,
        embed_dim=96,
        norm_layer=None,
        strict_img_size=False,
        output_fmt="NHWC",
        **_,
    ):
        super().__init__()
        if patch_size not in (4, (4, 4)) or embed_dim % 8:
            raise ValueError("CTransPath's stem needs patch_size 4 and embed_dim divisible by 8")
        size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.img_size, self.patch_size = size, (4, 4)
        self.grid_size = (size[0] // 4, size[1] // 4)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        c1, c2 = embed_dim // 8, embed_dim // 4
        self.proj = nn.Sequential(
            nn.Conv2d(in_chans, c1, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(c1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(c2),
            nn.ReLU(inplace=True),
            nn.Conv2d(c2, embed_dim, 1),
        )
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def set_input_size(self, img_size=None, **_):  # timm calls this when the size changes
        if img_size is not None:
            size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
            self.img_size, self.grid_size = size, (size[0] // 4, size[1] // 4)
        return self.grid_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class SwinEncoder(EncoderModel):
    def __init__(self, swin):
        super().__init__()
        self.swin = swin
        self.dim = int(swin.num_features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.swin(images)  # final norm + global average pool (head removed)


def build_ctranspath(spec, weights, arch: Mapping) -> SwinEncoder:
    """Registry builder for ``ctranspath``: the TransPath / CHIEF checkpoint
    (``{"model": state_dict}``, timm 0.5 Swin key names, no head)."""
    from timm.models.swin_transformer import SwinTransformer, checkpoint_filter_fn

    args = {**dict(arch.get("swin", {})), "embed_layer": ConvStem, "num_classes": 0}
    swin = SwinTransformer(**args)
    path = _weight_path(spec, weights, ("ctranspath.pth", "CHIEF_CTransPath.pth", "pytorch_model.bin"), "CTransPath")
    if path is not None:
        sd = checkpoint_filter_fn(read_state_dict(path), swin)  # old stage layout -> timm's
        load_weights(swin, sd, path, what="CTransPath", ignore_unexpected=("head.",))
    return SwinEncoder(swin)

