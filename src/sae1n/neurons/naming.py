"""Name SAE neurons with text prompts, for CLIP-family encoders (CONCH, CLIP, PLIP).

A neuron's decoder direction (its row of ``W_dec``, shape (dict, act_size))
lives in the space of the features the SAE was trained on. When those are a
CLIP-style image embedding that shares its space with the text tower, the
cosine between a decoder direction and the embedding of a prompt such as
"tumor" or "adipose tissue" suggests what the neuron encodes.

Meaningful names need the encoder's real (pretrained) weights and features
taken from the shared image-text space: CLAM's CONCH extraction, for one,
skips the contrastive projection (``proj_contrast=False``), so that
projection must be applied to the decoder directions (``image_projection``;
:func:`registry_text_encoder` supplies it) or the cosines are not comparable.
With random weights the mechanics work but the names mean nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from sae1n.errors import ConfigError, InputFileError
from sae1n.io import atomic_write_csv

DEFAULT_PATHOLOGY_PROMPTS: tuple[str, ...] = (
    "tumor",
    "invasive carcinoma",
    "metastatic tumor cells in a lymph node",
    "normal lymph node tissue",
    "lymphocytes",
    "germinal center",
    "adipose tissue",
    "necrosis",
    "stroma",
    "fibrous connective tissue",
    "blood vessels",
    "red blood cells",
    "smooth muscle",
    "normal prostate glands",
    "prostate adenocarcinoma",
    "mucus",
    "inflammation",
    "background",
    "tissue fold",
    "blurry out-of-focus image",
)
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "{}.",
    "an H&E image of {}.",
    "a histopathology image showing {}.",
)
NAMES_CSV = "neuron_names.csv"

TextEncoder = Callable[[list[str]], np.ndarray]


def decoder_directions(source, *, key: str | None = None) -> np.ndarray:
    """The (dict, act_size) decoder matrix from an array/tensor, an SAE
    experiment folder or checkpoint (sae1n ``.safetensors`` or the paper's
    ``sae_best.pt``, read by the one SAE loader,
    :func:`sae1n.sae.checkpoints.load_sae`), or a foreign ``.safetensors`` holding
    a decoder under ``W_dec`` / ``decoder.weight`` (transposed) / ..."""
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.exists():
            raise InputFileError(
                path,
                "SAE checkpoint not found",
                "pass the experiment folder or checkpoints/sae_best.safetensors (or the paper's sae_best.pt)",
            )
        from sae1n.sae.checkpoints import find_checkpoint, load_sae

        path = find_checkpoint(path)
        if key is None:
            try:
                return load_sae(path).W_dec.detach().cpu().numpy().astype(np.float64)
            except InputFileError as exc:
                # a safetensors file without an SAE config: read its tensors by name below
                if path.suffix != ".safetensors" or "no SAE config" not in str(exc):
                    raise
        return _decoder_from_tensors(path, key)
    mat = source.detach().cpu().numpy() if hasattr(source, "detach") else np.asarray(source)
    mat = np.asarray(mat, dtype=np.float64)
    if mat.ndim != 2:
        raise ConfigError(f"decoder weights must be 2-D (dict, act_size), got shape {mat.shape}")
    return mat


def _decoder_from_tensors(path: Path, key: str | None) -> np.ndarray:
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(path))
    except Exception as exc:
        raise InputFileError(
            path, f"cannot be read as safetensors ({exc})", "re-save the SAE checkpoint"
        ) from exc
    keys = [key] if key else ["W_dec", "w_dec", "decoder.weight", "dec.weight", "W_d"]
    for k in keys:
        if k in tensors:
            mat = np.asarray(tensors[k], dtype=np.float64)
            return mat.T if k.endswith(".weight") else mat  # nn.Linear stores (out, in)
    raise InputFileError(
        path,
        f"has no decoder weights (keys: {sorted(tensors)})",
        "pass key= naming the decoder matrix",
    )


def embed_prompts(
    encode_text: TextEncoder, prompts: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES
) -> np.ndarray:
    """Unit-norm (n_prompts, dim) text embeddings, averaged over the templates."""
    if not prompts:
        raise ConfigError("no prompts given")
    templates = list(templates) or ["{}"]
    texts = [t.format(p) for p in prompts for t in templates]
    emb = _as_matrix(encode_text(texts), len(texts))
    emb = _unit(emb).reshape(len(prompts), len(templates), -1).mean(axis=1)
    return _unit(emb)


def name_neurons(
    decoder,
    text,
    prompts: Sequence[str] = DEFAULT_PATHOLOGY_PROMPTS,
    *,
    units: Sequence[int] | None = None,
    top_k: int = 3,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    image_projection=None,
) -> pd.DataFrame:
    """Best-matching prompts per neuron by cosine(decoder direction, prompt embedding).

    ``decoder``: (dict, act_size) matrix or SAE checkpoint path. ``text``: a
    callable ``encode_text(list[str]) -> (n, dim)`` (the encoder's text tower)
    or a precomputed (len(prompts), dim) embedding matrix. ``image_projection``,
    an (act_size, dim) matrix or a callable (e.g. the ``to_joint_space`` of
    :func:`registry_text_encoder`), maps decoder directions into the text space first.
    Returns one row per neuron: unit_id, name, cosine, top_prompts, top_cosines.
    """
    dec = decoder_directions(decoder)
    prompts = list(prompts)
    if callable(text):
        emb = embed_prompts(text, prompts, templates)
    else:
        emb = _unit(_as_matrix(text, len(prompts)))
    if callable(image_projection):
        dec = np.asarray(image_projection(dec), dtype=np.float64)
    elif image_projection is not None:
        proj = np.asarray(image_projection, dtype=np.float64)
        if proj.shape[0] != dec.shape[1]:
            raise ConfigError(
                f"image_projection has {proj.shape[0]} input dims, the decoder {dec.shape[1]}"
            )
        dec = dec @ proj
    if dec.shape[1] != emb.shape[1]:
        raise ConfigError(
            f"decoder directions have {dec.shape[1]} dims but text embeddings {emb.shape[1]}: "
            "the SAE must be trained on this encoder's image embeddings (or pass image_projection)"
        )
    idx = np.arange(dec.shape[0]) if units is None else np.asarray(list(units), dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= dec.shape[0]):
        raise ConfigError(f"unit ids must lie in [0, {dec.shape[0]})")
    cos = _unit(dec[idx]) @ emb.T
    k = max(1, min(int(top_k), len(prompts)))
    best = np.argsort(-cos, axis=1, kind="stable")[:, :k]
    rows = []
    for r, u in enumerate(idx):
        order = best[r]
        rows.append(
            {
                "unit_id": int(u),
                "name": prompts[order[0]],
                "cosine": float(cos[r, order[0]]),
                "top_prompts": "; ".join(prompts[j] for j in order),
                "top_cosines": "; ".join(f"{cos[r, j]:.4f}" for j in order),
            }
        )
    return pd.DataFrame(rows, columns=["unit_id", "name", "cosine", "top_prompts", "top_cosines"])


def write_neuron_names(names: pd.DataFrame, exp_dir: str | os.PathLike) -> Path:
    """Save names as ``<exp_dir>/analysis/neuron_names.csv`` (the report shows them)."""
    return atomic_write_csv(Path(exp_dir) / "analysis" / NAMES_CSV, names)


def read_prompts(path: str | os.PathLike) -> list[str]:
    """Prompts from a text file, one per line (blank lines and ``#`` comments skipped)."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(
            path, "prompt file not found", "pass a text file with one prompt per line"
        )
    prompts = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise InputFileError(path, "holds no prompts", "write one prompt per line")
    return prompts


def name_experiment(
    exp_dir: str | os.PathLike,
    encode_text: TextEncoder,
    prompts: Sequence[str] = DEFAULT_PATHOLOGY_PROMPTS,
    *,
    checkpoint: str | os.PathLike | None = None,
    top_k: int = 3,
    **kw,
) -> Path:
    """Name every neuron of an SAE experiment (decoder of its best checkpoint,
    sae1n's or the paper's ``sae_best.pt``, unless ``checkpoint``) and write
    ``analysis/neuron_names.csv``; returns its path."""
    exp = Path(exp_dir)
    ckpt = Path(checkpoint) if checkpoint else exp
    names = name_neurons(ckpt, encode_text, prompts, top_k=top_k, **kw)
    return write_neuron_names(names, exp)


NAMES_SCHEMA = 1


def name_experiment_with_encoder(
    exp_dir: str | os.PathLike,
    encoder: str,
    *,
    encoder_checkpoint: str | os.PathLike | None = None,
    prompts: Sequence[str] | None = None,
    sae_checkpoint: str | os.PathLike | None = None,
    top_k: int = 3,
    device: str = "cpu",
    overwrite: bool = False,
) -> tuple[Path, bool]:
    """``sae1n name-neurons``: name every neuron of ``exp_dir`` with the text
    tower of registry ``encoder`` and write ``analysis/neuron_names.csv`` (with
    a provenance sidecar). Returns ``(path, written)``; ``written`` is False
    when the file is current (same SAE, encoder, prompts); a file made
    otherwise raises ``StaleOutputError`` unless ``overwrite``."""
    from sae1n.io.provenance import Provenance, check_output, write_sidecar
    from sae1n.sae.checkpoints import find_checkpoint

    exp = Path(exp_dir)
    src = Path(sae_checkpoint) if sae_checkpoint else exp
    if not src.exists():
        raise InputFileError(src, "SAE experiment or checkpoint not found", "pass output/sae/<exp> (run `sae1n train-sae` first)")
    ckpt = find_checkpoint(src)
    prompts = list(prompts) if prompts is not None else list(DEFAULT_PATHOLOGY_PROMPTS)
    enc_ckpt = Path(encoder_checkpoint) if encoder_checkpoint else None
    prov = Provenance.make(
        "neuron_names",
        NAMES_SCHEMA,
        settings={"encoder": encoder, "prompts": prompts, "templates": list(DEFAULT_TEMPLATES), "top_k": int(top_k)},
        inputs={"sae_checkpoint": ckpt, "encoder_checkpoint": enc_ckpt if enc_ckpt else "default (environment variable, then hub)"},
    )
    out = exp / "analysis" / NAMES_CSV
    if check_output(out, prov, overwrite=overwrite, fix="pass --overwrite to rename the neurons"):
        return out, False
    encode_text, to_joint = registry_text_encoder(encoder, enc_ckpt, device=device)
    names = name_neurons(ckpt, encode_text, prompts, top_k=top_k, image_projection=to_joint)
    write_neuron_names(names, exp)
    write_sidecar(out, prov)
    return out, True


def registry_text_encoder(
    encoder, checkpoint: str | os.PathLike | None = None, device: str = "cpu", **kw
) -> tuple[TextEncoder, Callable]:
    """``(encode_text, to_joint_space)`` of a CLIP-family encoder of sae1n's
    registry (``conch_v1``, ``clip_vit_b16``, ``plip``), given by name (built
    with ``checkpoint``; ``kw`` goes to :func:`sae1n.encoders.get_encoder`) or
    as an already built encoder. ``to_joint_space`` maps decoder directions
    from the extracted-feature space into the image-text space (CONCH's
    contrastive projection; identity for CLIP and PLIP)."""
    if isinstance(encoder, str):
        from sae1n.encoders import get_encoder

        encoder = get_encoder(encoder, checkpoint=checkpoint, device=device, **kw)
    if not getattr(encoder, "supports_text", False):
        raise ConfigError(
            f"encoder {getattr(encoder, 'name', encoder)!r} has no text tower; "
            "naming needs a CLIP-family encoder (conch_v1, clip_vit_b16, plip)"
        )

    def encode_text(texts: list[str]) -> np.ndarray:
        return encoder.encode_text(list(texts), normalize=False).cpu().numpy()

    def to_joint_space(directions: np.ndarray) -> np.ndarray:
        return encoder.to_joint_space(np.asarray(directions, dtype=np.float32)).cpu().numpy()

    return encode_text, to_joint_space


def _as_matrix(emb, n: int) -> np.ndarray:
    emb = emb.detach().cpu().numpy() if hasattr(emb, "detach") else np.asarray(emb)
    emb = np.asarray(emb, dtype=np.float64)
    if emb.ndim != 2 or emb.shape[0] != n:
        raise ConfigError(f"text embeddings must be ({n}, dim), got shape {emb.shape}")
    if not np.isfinite(emb).all():
        raise ConfigError("text embeddings contain NaN/Inf")
    return emb


def _unit(m: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(m, axis=-1, keepdims=True)
    return m / np.where(norm > 0, norm, 1.0)
