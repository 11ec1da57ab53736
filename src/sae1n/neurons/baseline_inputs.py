"""The feature baselines' training inputs for :func:`evaluate_patches`: the
split's train slides (input features, slide labels; patch labels for the
oracle only) and the trained SAE's config for ``random_sae``."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from sae1n.errors import InputFileError
from sae1n.io import read_bag
from sae1n.neurons.baselines import fit_baselines
from sae1n.neurons.inputs import read_codes, read_split_slides
from sae1n.neurons.patch_scores import slide_patch_labels

log = logging.getLogger(__name__)


def fit_feature_baselines(
    split_csv_path, raw_files, code_files_, feature_dir, label_dir, threshold, slide_labels, *,
    methods, sae_checkpoint, seed, n_components, pooling, topk, quantile, allow_missing,
):
    """Fit the feature baselines on the split's train slides (input features,
    slide labels; patch labels for the oracle only)."""
    train = read_split_slides(split_csv_path, "train")
    feats, labels, patch_labels = {}, {}, {}
    for sid in train:
        if sid not in raw_files:
            if allow_missing:
                continue
            raise InputFileError(
                split_csv_path,
                f"train slide {sid} has no input features",
                "pass the --input_feature_dir the SAE was trained on, or --allow_missing",
            )
        bag = read_bag(raw_files[sid])
        known = None if slide_labels is None else slide_labels.get(sid)
        coords = bag.coords if bag.coords is not None else np.zeros((len(bag.features), 2), np.int64)
        got = None
        if bag.coords is not None and ((label_dir / f"{sid}.h5").is_file() or known is not None):
            got = slide_patch_labels(sid, coords, label_dir, threshold, known, True)
        feats[sid] = bag.features
        if got is not None:
            patch_labels[sid] = (got[0], got[1])  # rows with a label, their labels
        if known is not None:
            labels[sid] = int(known)
        elif got is not None:
            labels[sid] = int(got[1].any())
    if not labels:
        raise InputFileError(
            split_csv_path, "no train slide has a label", "pass --dataset_csv with slide labels"
        )
    sae_config = None
    if "random_sae" in methods:
        sae_config = sae_config_of(sae_checkpoint, feature_dir, code_files_)
    return fit_baselines(
        feats,
        labels,
        patch_labels=patch_labels,
        methods=methods,
        sae_config=sae_config,
        n_components=n_components,
        seed=seed,
        pooling=pooling,
        topk=topk,
        quantile=quantile,
    )


def sae_config_of(sae_checkpoint, feature_dir, code_files_):
    """The trained SAE's config: from ``sae_checkpoint``, else the checkpoint the
    codes were encoded with (``encoding.json`` / the code files' attrs)."""
    import json

    from sae1n.sae import load_sae

    ckpt = sae_checkpoint
    if ckpt is None:
        root = Path(feature_dir)
        for cand in (root / "encoding.json", root.parent / "encoding.json"):
            if cand.is_file():
                ckpt = json.loads(cand.read_text()).get("checkpoint")
                break
    if ckpt is None:
        _, _, attrs = read_codes(next(iter(code_files_.values())))
        ckpt = attrs.get("sae_checkpoint")
    if ckpt is None or not Path(str(ckpt)).exists():
        log.warning("no SAE checkpoint found for the random_sae baseline (pass --sae_checkpoint); skipped")
        return None
    return load_sae(ckpt, device="cpu").cfg

