"""Patch encoders (a registry of pathology and general models) and
``extract-features``.

Public API::

    from sae1n.encoders import get_encoder, available_encoders, register_encoder, extract_features
    enc = get_encoder("conch_v1", checkpoint="pytorch_model.bin", device="cuda")
    feats = enc.encode(uint8_patches)            # (B, 512) float32
    text = enc.encode_text(["tumor tissue"])      # CLIP-family only
"""

from sae1n._lazy import lazy_exports
from sae1n.encoders.registry import available_encoders, encoder_spec, get_encoder, register_encoder
from sae1n.encoders.spec import EncoderSpec

_LAZY = {
    "Encoder": "sae1n.encoders.base",
    "EncoderModel": "sae1n.encoders.base",
    "extract_features": "sae1n.encoders.extract",
    "ExtractionSummary": "sae1n.encoders.extract",
    "list_slides": "sae1n.encoders.extract",
    "read_patch_coords": "sae1n.encoders.patches",
}

__all__ = [
    "EncoderSpec",
    "available_encoders",
    "encoder_spec",
    "get_encoder",
    "register_encoder",
    *_LAZY,
]


__getattr__ = lazy_exports(__name__, _LAZY)
