"""The weight-free ``handcrafted`` encoder: documented features, stain maths
identical to scikit-image, and tumour-like patches separable from stroma/fat."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.color import rgb2hed

from sae1n.encoders import get_encoder
from sae1n.encoders.handcrafted import DIM, FEATURE_NAMES, rgb_to_hed

from .conftest import fat_patch, stroma_patch, tumour_patch


def _auroc(pos, neg) -> float:
    from sklearn.metrics import roc_auc_score

    return roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg])


def test_names_dim_and_determinism():
    enc = get_encoder("handcrafted", device="cpu")
    assert enc.dim == DIM == len(FEATURE_NAMES) == len(set(FEATURE_NAMES)) == 64
    x = np.stack([tumour_patch(np.random.default_rng(i)) for i in range(3)])
    f = enc.encode(x)
    assert f.shape == (3, 64) and f.dtype == torch.float32 and torch.isfinite(f).all()
    assert torch.equal(enc.encode(x), f)
    # batch composition does not change a patch's features
    torch.testing.assert_close(enc.encode(x[1:2])[0], f[1], rtol=1e-5, atol=1e-6)
    # histograms are distributions
    for group in ("grey_hist", "sat_hist", "hue_hist"):
        cols = [i for i, n in enumerate(FEATURE_NAMES) if n.startswith(group)]
        torch.testing.assert_close(f[:, cols].sum(1), torch.ones(3))


def test_colour_deconvolution_matches_skimage():
    rgb = np.random.default_rng(0).integers(0, 256, (2, 17, 19, 3), dtype=np.uint8)
    ours = (
        rgb_to_hed(torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255)
        .permute(0, 2, 3, 1)
        .numpy()
    )
    np.testing.assert_allclose(ours, rgb2hed(rgb), atol=1e-5)


def test_white_patch_is_background():
    enc = get_encoder("handcrafted", device="cpu")
    f = dict(zip(FEATURE_NAMES, enc.encode_numpy(np.full((1, 64, 64, 3), 250, np.uint8))[0]))
    assert f["white_frac"] == 1.0 and f["nuclear_frac_h0.04"] == 0.0 and f["h_mean"] < 0.01


def test_tumour_like_patches_separate_from_stroma_and_fat():
    rng = np.random.default_rng(7)
    tumour = np.stack([tumour_patch(rng) for _ in range(8)])
    normal = np.stack([stroma_patch(rng) for _ in range(4)] + [fat_patch(rng) for _ in range(4)])
    enc = get_encoder("handcrafted", device="cpu")
    ft, fn = enc.encode_numpy(tumour), enc.encode_numpy(normal)
    col = {n: i for i, n in enumerate(FEATURE_NAMES)}
    for name in ("h_mean", "nuclear_frac_h0.04", "nuclear_open5_share"):
        assert _auroc(ft[:, col[name]], fn[:, col[name]]) == 1.0, name
    assert _auroc(fn[:, col["val_mean"]], ft[:, col["val_mean"]]) == 1.0  # tumour is darker
    # larger nuclei survive larger openings
    assert ft[:, col["nuclear_open7_share"]].mean() > 2 * fn[:, col["nuclear_open7_share"]].mean()


def test_real_camelyon16_tiles_are_separable(shared_data):
    """28 tumour vs 29 normal real CAMELYON16 tiles: cross-validated AUROC."""
    from PIL import Image
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    root = shared_data / "tiles" / "camelyon16_didsr_256"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    x, y = [], []
    for label, cls in enumerate(["normal", "tumor"]):
        for p in sorted((root / cls).glob("*.png")):
            x.append(np.asarray(Image.open(p).convert("RGB")))
            y.append(label)
    f = get_encoder("handcrafted", device="cpu").encode_numpy(np.stack(x))
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    p = cross_val_predict(
        clf,
        f,
        np.array(y),
        cv=StratifiedKFold(5, shuffle=True, random_state=0),
        method="predict_proba",
    )[:, 1]
    y = np.array(y)
    assert _auroc(p[y == 1], p[y == 0]) > 0.9
