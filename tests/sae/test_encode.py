"""Encoding slides with a trained SAE: paper layout, sparse codes, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sae1n.errors import InputFileError
from sae1n.io import read_bag, read_sparse_codes
from sae1n.sae.checkpoints import load_sae
from sae1n.sae.encode import dataset_and_feature_set, save_sae_features


@pytest.mark.parametrize(
    "path, expected",
    [
        (
            "../features/camelyon16/clam_processed/features_conch_v1/",
            ("camelyon16", "features_conch_v1"),
        ),
        (
            "/data/features/panda/clam_processed/features_conch_v1/h5_files",
            ("panda", "features_conch_v1"),
        ),
        ("/x/tcga/clam_processed/features_uni_v1", ("tcga", "features_uni_v1")),
        ("/x/trident/features_uni", ("trident", "features_uni")),
    ],
)
def test_dataset_and_feature_set_from_path(path, expected):
    assert dataset_and_feature_set(path) == expected


def test_dense_and_sparse_codes_agree_and_match_the_model(trained, planted):
    summary = save_sae_features(trained, device="cpu")
    base = trained / "encoded_features" / "planted" / "features_toy"
    assert summary.out_dir == base and len(summary.encoded) == len(planted.slides)
    model = load_sae(trained)
    for sid in planted.slides:
        src = read_bag(planted.feature_dir / "h5_files" / f"{sid}.h5")
        dense_h5 = read_bag(base / "h5_files" / f"{sid}.h5")
        dense_pt = read_bag(base / "pt_files" / f"{sid}.pt")
        sparse = read_bag(base / "sparse_files" / f"{sid}.h5")  # readers densify
        np.testing.assert_array_equal(dense_h5.features, sparse.features)
        np.testing.assert_array_equal(dense_h5.features, dense_pt.features)
        np.testing.assert_array_equal(dense_h5.coords, src.coords)
        np.testing.assert_array_equal(sparse.coords, src.coords)
        assert dense_h5.attrs["patch_size"] == 256
        expected = model.encode(torch.from_numpy(src.features)).numpy()
        np.testing.assert_allclose(dense_h5.features, expected, rtol=1e-5, atol=1e-6)
    csr, _, attrs = read_sparse_codes(base / "sparse_files" / "slide_00.h5")
    assert csr.shape == (400, model.dict_size) and attrs["dict_size"] == model.dict_size
    # 64 latents, ~3 active: already under half of one dense copy (h5 + pt = two)
    assert summary.sparse_bytes < summary.dense_bytes / 2 / 2


def test_encoding_resumes_and_never_changes_the_model(trained, planted, tmp_path):
    out = tmp_path / "enc"
    before = load_sae(trained).state_dict()
    first = save_sae_features(trained, out_dir=out, dense=False)
    assert not (out / "h5_files").exists() and len(first.encoded) == len(planted.slides)
    victim = out / "sparse_files" / "slide_04.h5"
    victim.write_bytes(b"truncated")
    second = save_sae_features(trained, out_dir=out, dense=False)
    assert second.encoded == ["slide_04"] and len(second.skipped) == len(planted.slides) - 1
    assert read_bag(victim).n == 400
    after = load_sae(trained).state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_wrong_feature_dimension_is_reported(trained, tmp_path):
    from sae1n.io import write_bag

    other = tmp_path / "feats"
    write_bag(other, "s1", np.zeros((3, 7), np.float32), np.zeros((3, 2), np.int64))
    with pytest.raises(InputFileError, match=r"s1\.h5.*dimension 7"):
        save_sae_features(trained, other, out_dir=tmp_path / "o")


def test_cli_save_sae_features(trained, planted, tmp_path, capsys):
    from sae1n.cli import main

    rc = main(
        [
            "save-sae-features",
            str(trained),
            "--feature-dir",
            str(planted.feature_dir),
            "--out_dir",
            str(tmp_path / "e"),
            "--no_dense",
            "--batch_size",
            "100",
        ]
    )
    assert rc == 0
    assert "encoded 10 slides" in capsys.readouterr().out
    assert len(list((tmp_path / "e" / "sparse_files").glob("*.h5"))) == 10


def test_paper_checkpoint_folder_encodes_like_ours(trained, planted, tmp_path):
    """A paper user's output/sae/<exp> (sae_best.pt + config_best.json) works."""
    import json

    model = load_sae(trained)
    paper_exp = tmp_path / "paper_exp"
    (paper_exp / "checkpoints").mkdir(parents=True)
    state = {
        k: v.contiguous() for k, v in model.state_dict().items() if k != "num_batches_not_active"
    }
    torch.save(state, paper_exp / "checkpoints" / "sae_best.pt")
    ours_cfg = json.loads((trained / "checkpoints" / "config_best.json").read_text())
    paper_cfg = {
        "seed": 42,
        "data": {"feature_dir": str(planted.feature_dir)},
        "sae": {
            k: ours_cfg["sae"][k]
            for k in (
                "model_type",
                "act_size",
                "dict_size_ratio",
                "top_k",
                "top_k_aux",
                "aux_penalty",
                "n_batches_to_dead",
                "l1_coeff",
                "input_unit_norm",
            )
        },
    }
    paper_cfg["sae"]["device"] = "cuda:0"  # ignored: the device comes from the caller
    (paper_exp / "checkpoints" / "config_best.json").write_text(json.dumps(paper_cfg))
    s = save_sae_features(paper_exp, device="cpu", dense=False)
    assert s.out_dir == paper_exp / "encoded_features" / "planted" / "features_toy"
    ours = save_sae_features(trained, out_dir=tmp_path / "ours", dense=False)
    for sid in planted.slides:
        a = read_bag(s.out_dir / "sparse_files" / f"{sid}.h5").features
        b = read_bag(ours.out_dir / "sparse_files" / f"{sid}.h5").features
        np.testing.assert_array_equal(a, b)
