"""Export a trained SAE for other SAE tooling (``sae1n export-sae``).

``saelens``: SAELens' on-disk layout (read by ``sae_lens.SAE.load_from_disk``,
SAELens >= 6): a folder with ``cfg.json`` and ``sae_weights.safetensors``
holding ``W_enc`` (d_in, d_sae), ``W_dec`` (d_sae, d_in), ``b_enc`` (d_sae),
``b_dec`` (d_in) and, for JumpReLU, ``threshold`` (d_sae). Our types map to
SAELens' inference architectures with the same encode / decode:

=========================  ============  =====================================
sae1n                      SAELens       how
=========================  ============  =====================================
BatchTopKSAE, Matryoshka   ``jumprelu``  the learned inference threshold, per latent
                                         (as SAELens saves its own BatchTopK SAEs)
TopKSAE                    ``topk``      ``k`` = ``sae.top_k``
VanillaSAE                 ``standard``  ReLU
JumpReLUSAE                ``jumprelu``  ``threshold`` = ``exp(log_threshold)``
=========================  ============  =====================================

``sae.input_unit_norm`` becomes ``normalize_activations: layer_norm`` (the
same per-row standardisation and its inverse); ``paper_compat_no_b_enc``
exports a zero ``b_enc``. The sae1n config travels in ``cfg.json``'s
``metadata``; the weights file carries a provenance record naming the
checkpoint it came from.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from sae1n.errors import Sae1nError
from sae1n.io import Provenance, atomic_path, atomic_write_text, plan_outputs
from sae1n.io.provenance import provenance_metadata
from sae1n.sae.checkpoints import find_checkpoint, load_sae
from sae1n.sae.models import BaseSAE

FORMATS = ("saelens",)
SAELENS_WEIGHTS = "sae_weights.safetensors"
SAELENS_CFG = "cfg.json"
# the cfg.json schema written: SAELens 6 (older versions are converted on load)
SAELENS_SCHEMA_VERSION = "6.0.0"
EXPORT_KIND = "sae-export"
EXPORT_SCHEMA = 1


def saelens_state(model: BaseSAE) -> tuple[str, dict[str, torch.Tensor], dict]:
    """(architecture, state dict, architecture-specific cfg fields) of ``model``
    in SAELens' terms."""
    cfg = model.cfg
    f = model.dict_size
    with torch.no_grad():
        b_enc = model.b_enc.detach().clone()
        if not model.uses_b_enc:
            b_enc.zero_()
        state = {
            "W_enc": model.W_enc.detach(),
            "W_dec": model.W_dec.detach(),
            "b_enc": b_enc,
            "b_dec": model.b_dec.detach(),
        }
        extra: dict = {}
        if cfg.model_type in ("BatchTopKSAE", "MatryoshkaBatchTopKSAE"):
            arch = "jumprelu"
            thr = float(model.threshold)
            state["threshold"] = torch.full((f,), max(thr, 0.0), dtype=model.W_dec.dtype)
        elif cfg.model_type == "JumpReLUSAE":
            arch = "jumprelu"
            state["threshold"] = torch.exp(model.jumprelu.log_threshold.detach())
        elif cfg.model_type == "TopKSAE":
            arch = "topk"
            extra["k"] = int(cfg.top_k)
        elif cfg.model_type == "VanillaSAE":
            arch = "standard"
        else:  # a new type must choose its mapping here
            raise Sae1nError(f"no SAELens mapping for sae.model_type={cfg.model_type}")
    state = {k: v.to("cpu", torch.float32).contiguous() for k, v in state.items()}
    return arch, state, extra


def saelens_config(model: BaseSAE, arch: str, extra: dict, source: str) -> dict:
    """The ``cfg.json`` dict."""
    from sae1n import __version__

    cfg = model.cfg
    out = {
        "architecture": arch,
        "d_in": int(model.act_size),
        "d_sae": int(model.dict_size),
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "layer_norm" if cfg.input_unit_norm else "none",
        "reshape_activations": "none",
        **extra,
        "metadata": {
            "sae_lens_version": SAELENS_SCHEMA_VERSION,
            "sae_lens_training_version": None,
            "model_name": None,
            "hook_name": "patch_features",
            "exported_by": f"sae1n {__version__}",
            "source_checkpoint": source,
            "sae1n_config": cfg.to_dict(),
        },
    }
    return out


def export_sae(
    exp_or_checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    fmt: str = "saelens",
    which: str = "best",
    overwrite: bool = False,
) -> Path:
    """Write the SAE of an experiment folder (its ``which`` checkpoint) or of a
    checkpoint file in ``fmt``; returns the output folder (default
    ``<exp>/export/<fmt>``). An existing export made from another checkpoint
    is refused unless ``overwrite``."""
    if fmt not in FORMATS:
        raise Sae1nError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    weights = find_checkpoint(exp_or_checkpoint, which)
    model = load_sae(weights)
    if out_dir is None:
        src = Path(exp_or_checkpoint)
        exp = src if src.is_dir() else weights.parent
        if exp.name == "checkpoints":
            exp = exp.parent
        out_dir = exp / "export" / fmt
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise Sae1nError(f"{out_dir}: is a file; pass a folder for the export")
    prov = Provenance.make(
        EXPORT_KIND, EXPORT_SCHEMA, settings={"format": fmt}, inputs={"checkpoint": weights}
    )
    w_path, c_path = out_dir / SAELENS_WEIGHTS, out_dir / SAELENS_CFG
    todo, _ = plan_outputs({w_path: prov}, overwrite=overwrite)
    if not todo and c_path.is_file():
        return out_dir
    arch, state, extra = saelens_state(model)
    from safetensors.torch import save_file

    with atomic_path(w_path) as tmp:
        save_file(state, str(tmp), metadata=provenance_metadata(prov))
        os.chmod(tmp, 0o644)
    cfg = saelens_config(model, arch, extra, str(weights))
    atomic_write_text(c_path, json.dumps(cfg, indent=2) + "\n")
    return out_dir
