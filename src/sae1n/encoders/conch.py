"""CONCH (MahmoodLab) image and text towers via the ``conch-fork`` package.

The model is CONCH's CoCa built from the config the package ships
(``conch_ViT-B-16``); weights are read safely by :mod:`sae1n.encoders.weights`
(CONCH's own loader unpickles without ``weights_only`` and loads non-strictly).
Features are ``encode_image(proj_contrast=False, normalize=False)`` as in CLAM;
:meth:`ConchModel.to_joint_space` applies the contrastive projection so they
can be compared with text embeddings.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence

import torch

from sae1n.encoders.base import EncoderModel
from sae1n.encoders.weights import find_weight_file, load_weights, read_state_dict

CONFIG_NAME = "conch_ViT-B-16"


def _conch():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # conch imports timm.models.layers
        import conch.open_clip_custom as occ
        from conch.open_clip_custom import coca_model, factory
    return occ, coca_model, factory


def conch_config(arch: Mapping | None = None) -> dict:
    """CONCH's CoCa config as shipped by conch-fork, with ``arch`` overrides."""
    from sae1n.encoders.registry import _deep_merge

    _, _, factory = _conch()
    with open(factory.CFG_DIR / f"{CONFIG_NAME}.json") as f:
        cfg = json.load(f)
    cfg.pop("custom_text", None)
    return _deep_merge(cfg, dict(arch or {}))


class ConchModel(EncoderModel):
    has_text = True

    def __init__(self, coca, tokenizer_factory):
        super().__init__()
        self.coca = coca
        self.dim = int(coca.embed_dim)
        self._tokenizer_factory = tokenizer_factory
        self._tokenizer = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.coca.encode_image(images, proj_contrast=False, normalize=False)

    def to_joint_space(self, features: torch.Tensor) -> torch.Tensor:
        return features @ self.coca.visual.proj_contrast

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        if self._tokenizer is None:
            self._tokenizer = self._tokenizer_factory()
        tok = self._tokenizer
        # The model's last context slot holds its <cls> embedding: tokenize to
        # context_length - 1 and append a pad placeholder (as CONCH does).
        ids = tok(
            list(texts),
            max_length=self.coca.context_length - 1,
            truncation=True,
            padding="max_length",
            return_tensors="pt",
        )["input_ids"]
        ids = torch.nn.functional.pad(ids, (0, 1), value=tok.pad_token_id)
        return self.coca.encode_text(ids.to(self.coca.logit_scale.device), normalize=False)


def build_conch(spec, weights, arch: Mapping) -> ConchModel:
    """Registry builder for ``conch_v1``."""
    occ, coca_model, _ = _conch()
    coca = occ.CoCa(**conch_config(arch))
    path = None
    if weights == "hub":
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(spec.hub_id, "pytorch_model.bin")
    elif weights is not None:
        path = find_weight_file(
            weights, ["pytorch_model.bin", "model.safetensors", "conch.bin"], "CONCH"
        )
    if path is not None:
        sd = read_state_dict(path)
        if "visual.trunk.pos_embed" in sd:
            coca_model.resize_pos_embed(sd, coca)  # checkpoints trained at another image size
        load_weights(coca, sd, path, what="CONCH")
    coca.text_decoder = None  # the captioning decoder is not used for embeddings
    return ConchModel(coca, occ.get_tokenizer)
