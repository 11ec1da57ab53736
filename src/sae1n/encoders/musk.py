"""MUSK (lilab-stanford; BEiT-3 multiway transformer, ViT-L/16 at 384 px):
image and text towers.

BEiT-3 runs one encoder with two experts per layer: images take branch
``A`` of every multiway module, text takes branch ``B``. Each branch is a
pre-norm transformer with sub-LayerNorms (inside attention before the output
projection, inside the MLP before ``fc2``) -- exactly timm's
``VisionTransformer`` with ``scale_attn_norm`` / ``scale_mlp_norm``. So the
image tower is such a timm ViT (class token after the final norm,
``with_head=False`` as in TRIDENT), and the text tower reuses the same block
stack with branch ``B`` weights over token + position embeddings (positions
start at 2, as in fairseq), padded keys masked. ``vision_head`` /
``language_head`` (no bias) map both into the joint space.

Checkpoint: ``model.safetensors`` of ``xiangjx/musk`` (keys ``beit3.*``,
``vision_head.weight``, ``language_head.weight``, ``logit_scale``) and
MUSK's ``tokenizer.spm`` (XLM-R sentencepiece: fairseq ids = piece + 1,
``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3; 100 tokens with padding).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path

import torch
from torch import nn

from sae1n.encoders.base import EncoderModel
from sae1n.encoders.weights import find_weight_file, load_weights, read_state_dict
from sae1n.errors import InputFileError, Sae1nError

MUSK_VIT = dict(
    img_size=384,
    patch_size=16,
    embed_dim=1024,
    depth=24,
    num_heads=16,
    mlp_ratio=4.0,
    scale_attn_norm=True,
    scale_mlp_norm=True,
    class_token=True,
    global_pool="token",
    num_classes=0,
    dynamic_img_size=True,
)
VOCAB_SIZE = 64010
TEXT_POSITIONS = 1024
CONTEXT = 100
BOS, PAD, EOS, UNK = 0, 1, 2, 3

_RULES = [
    (r"^beit3\.", ""),
    (r"^vision_embed\.cls_token$", "cls_token"),
    (r"^vision_embed\.", "patch_embed."),
    (r"^encoder\.embed_positions\.", "pos_embed."),
    (r"^encoder\.layer_norm\.", "norm."),
    (r"^encoder\.layers\.", "blocks."),
    (r"\.self_attn_layer_norm\.", ".norm1."),
    (r"\.final_layer_norm\.", ".norm2."),
    (r"\.self_attn\.inner_attn_ln\.", ".attn.norm."),
    (r"\.self_attn\.out_proj\.", ".attn.proj."),
    (r"\.self_attn\.", ".attn."),
    (r"\.ffn\.ffn_layernorm\.", ".mlp.norm."),
    (r"\.ffn\.", ".mlp."),
]


def beit3_branch(sd: Mapping[str, torch.Tensor], branch: str) -> dict[str, torch.Tensor]:
    """The timm-ViT state dict of one BEiT-3 expert branch (``A`` image,
    ``B`` text): multiway keys of the other branch dropped, q/k/v fused."""
    other = "B" if branch == "A" else "A"
    tmp = {}
    for k, v in sd.items():
        if not k.startswith("beit3.") or f".{other}." in k:
            continue
        k = k.replace(f".{branch}.", ".")
        for pat, new in _RULES:
            k = re.sub(pat, new, k)
        tmp[k] = v
    out, parts = {}, {}
    for k, v in tmp.items():
        m = re.fullmatch(r"(blocks\.\d+\.attn)\.(q|k|v)_proj\.(weight|bias)", k)
        if m is None:
            out[k] = v
            continue
        group = parts.setdefault((m.group(1), m.group(3)), {})
        group[m.group(2)] = v
        if len(group) == 3:
            out[f"{m.group(1)}.qkv.{m.group(3)}"] = torch.cat([group["q"], group["k"], group["v"]], dim=0)
    return out


class SpmTokenizer:
    """MUSK's XLM-R sentencepiece tokenizer with fairseq ids, to ``CONTEXT`` tokens."""

    def __init__(self, model_file: str | Path, context: int = CONTEXT):
        import sentencepiece as spm

        self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        self.context = context

    def __call__(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, pad = [], []
        for t in texts:
            pieces = [p + 1 if p > 0 else UNK for p in self.sp.encode(str(t), out_type=int)]
            tok = [BOS, *pieces[: self.context - 2], EOS]
            ids.append(tok + [PAD] * (self.context - len(tok)))
            pad.append([False] * len(tok) + [True] * (self.context - len(tok)))
        return torch.tensor(ids), torch.tensor(pad)


class MuskModel(EncoderModel):
    has_text = True

    def __init__(self, vit_args: Mapping, vocab_size: int = VOCAB_SIZE, text_positions: int = TEXT_POSITIONS):
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        args = {**dict(vit_args), "norm_layer": partial(nn.LayerNorm, eps=1e-5)}
        self.vision = VisionTransformer(**args)
        text = VisionTransformer(**{**args, "weight_init": "skip"})
        d = self.vision.embed_dim
        self.text_blocks, self.text_norm = text.blocks, text.norm
        self.text_embed = nn.Embedding(vocab_size, d)
        self.text_pos = nn.Embedding(text_positions, d)
        self.vision_head = nn.Linear(d, d, bias=False)
        self.language_head = nn.Linear(d, d, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(2.6592))
        self.dim = int(d)
        self.tokenizer: SpmTokenizer | None = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.vision.forward_features(images)[:, 0]  # class token after the final norm

    def to_joint_space(self, features: torch.Tensor) -> torch.Tensor:
        return self.vision_head(features)

    def text_features(self, ids: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        """Class token of the text branch (before ``language_head``)."""
        pos = torch.arange(2, ids.shape[1] + 2, device=ids.device)
        x = (self.text_embed(ids) + self.text_pos(pos)[None]) * (~padding)[..., None].to(self.text_embed.weight.dtype)
        mask = torch.zeros(padding.shape, dtype=x.dtype, device=x.device).masked_fill(padding, float("-inf"))
        mask = mask[:, None, None, :]  # (B, 1, 1, N): padded keys get no attention
        for blk in self.text_blocks:
            x = blk(x, attn_mask=mask)
        return self.text_norm(x)[:, 0]

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        if self.tokenizer is None:
            raise Sae1nError("this MUSK model was built without tokenizer.spm, so it has no tokenizer")
        ids, pad = self.tokenizer(texts)
        dev = self.text_embed.weight.device
        return self.language_head(self.text_features(ids.to(dev), pad.to(dev)))

    def load_musk_state_dict(self, sd: Mapping[str, torch.Tensor], path) -> None:
        """Load MUSK's published ``beit3.*`` checkpoint into both towers."""
        from timm.layers import resample_abs_pos_embed

        if "beit3.text_embed.weight" not in sd:
            raise InputFileError(path, "is not a MUSK checkpoint (no beit3.* keys)", "pass MUSK's model.safetensors (huggingface.co/xiangjx/musk)")
        vis = beit3_branch(sd, "A")
        vis.pop("patch_embed.mask_token", None)
        vis.pop("text_embed.weight", None)  # the text tower's, loaded below
        pe = vis.pop("pos_embed.weight")[2:]  # fairseq positions start at 2
        grid = self.vision.patch_embed.grid_size
        side = int(round((pe.shape[0] - 1) ** 0.5))
        pe = pe[None]
        if (side, side) != tuple(grid):
            pe = resample_abs_pos_embed(pe, new_size=grid, old_size=(side, side), num_prefix_tokens=1)
        vis["pos_embed"] = pe
        load_weights(self.vision, vis, path, what="MUSK (image tower)")
        txt = beit3_branch(sd, "B")
        blocks = {k[len("blocks.") :]: v for k, v in txt.items() if k.startswith("blocks.")}
        load_weights(self.text_blocks, blocks, path, what="MUSK (text tower)")
        load_weights(self.text_norm, {k[5:]: v for k, v in txt.items() if k.startswith("norm.")}, path, what="MUSK (text norm)")
        rest = {
            "text_embed.weight": sd["beit3.text_embed.weight"],
            "text_pos.weight": sd["beit3.encoder.embed_positions.B.weight"],
            "vision_head.weight": sd["vision_head.weight"],
            "language_head.weight": sd["language_head.weight"],
        }
        if "logit_scale" in sd:
            rest["logit_scale"] = sd["logit_scale"]
        own = {k: v for k, v in self.state_dict().items() if k.startswith(("text_embed.", "text_pos.", "vision_head.", "language_head.", "logit_scale"))}
        for k, v in rest.items():
            if v.shape != own[k].shape:
                raise InputFileError(path, f"is not a MUSK checkpoint of this size: {k} {tuple(v.shape)} vs {tuple(own[k].shape)}", "pass the matching MUSK weights")
        self.load_state_dict(rest, strict=False)


def build_musk(spec, weights, arch: Mapping) -> MuskModel:
    """Registry builder for ``musk``: a folder with ``model.safetensors`` and
    ``tokenizer.spm`` (or the hub, for the weights)."""
    arch = dict(arch)
    model = MuskModel(
        {**MUSK_VIT, **dict(arch.get("vit", {}))},
        vocab_size=int(arch.get("vocab_size", VOCAB_SIZE)),
        text_positions=int(arch.get("text_positions", TEXT_POSITIONS)),
    )
    if weights is None:
        return model
    if weights == "hub":
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(spec.hub_id, "model.safetensors"))
        folder = path.parent
    else:
        path = find_weight_file(weights, ["model.safetensors", "pytorch_model.bin"], "MUSK")
        folder = Path(weights) if Path(weights).is_dir() else Path(weights).parent
    model.load_musk_state_dict(read_state_dict(path), path)
    spm_file = folder / "tokenizer.spm"
    if spm_file.is_file():
        model.tokenizer = SpmTokenizer(spm_file)
    return model
