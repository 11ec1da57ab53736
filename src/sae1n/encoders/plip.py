"""PLIP (CLIP ViT-B/32 fine-tuned on pathology image-text pairs) via
transformers' ``CLIPModel``: projected image embedding and text tower."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from sae1n.encoders.base import EncoderModel
from sae1n.errors import InputFileError, Sae1nError


class HFClipModel(EncoderModel):
    has_text = True

    def __init__(self, clip, source: str | None):
        super().__init__()
        self.clip = clip
        self.dim = int(clip.config.projection_dim)
        self._source = source
        self._tokenizer = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # Explicit towers: get_image_features' return type differs across transformers versions.
        pooled = self.clip.vision_model(pixel_values=images).pooler_output
        return self.clip.visual_projection(pooled)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        if self._tokenizer is None:
            if self._source is None:
                raise Sae1nError(
                    "this PLIP model was built without weights, so it has no tokenizer"
                )
            from transformers import AutoTokenizer

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(self._source)
            except Exception as exc:
                raise InputFileError(
                    self._source,
                    f"has no usable CLIP tokenizer files ({type(exc).__name__})",
                    "use the full vinid/plip folder (vocab.json, merges.txt, tokenizer_config.json)",
                ) from exc
        device = self.clip.logit_scale.device
        enc = self._tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.clip.config.text_config.max_position_embeddings,
            return_tensors="pt",
        )
        out = self.clip.text_model(
            input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device)
        )
        return self.clip.text_projection(out.pooler_output)


def build_plip(spec, weights, arch: Mapping) -> HFClipModel:
    """Registry builder for ``plip``: ``weights`` is a model folder (or the hub)."""
    from transformers import CLIPConfig, CLIPModel

    if weights is None:
        return HFClipModel(CLIPModel(CLIPConfig(**dict(arch))), None)
    source = spec.hub_id if weights == "hub" else str(weights)
    if weights != "hub" and not Path(weights).is_dir():
        raise InputFileError(
            weights,
            "PLIP needs its model folder, not a single file",
            "pass the folder holding config.json and the weights (a save_pretrained / hub snapshot)",
        )
    try:
        clip, info = CLIPModel.from_pretrained(source, output_loading_info=True)
    except OSError as exc:
        if weights == "hub":
            raise
        raise InputFileError(
            source,
            f"cannot be loaded as a CLIPModel folder ({str(exc)[:200]})",
            "pass the PLIP folder with config.json and model.safetensors / pytorch_model.bin",
        ) from exc
    missing = [k for k in info.get("missing_keys", []) if "position_ids" not in k]
    if missing:
        raise InputFileError(
            source,
            f"is not a complete PLIP checkpoint: {len(missing)} parameters missing (e.g. {', '.join(sorted(missing)[:3])})",
            "pass the full PLIP folder (the loader never leaves parameters random)",
        )
    return HFClipModel(clip, os.fspath(source))
