import h5py
import numpy as np
import pytest
import torch

from sae1n.errors import InputFileError
from sae1n.io import (
    check_same_dim,
    feature_paths,
    read_bag,
    read_sparse_codes,
    write_bag,
    write_sparse_codes,
)


def _bag(n=7, d=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype(np.float32), rng.integers(0, 10_000, size=(n, 2))


def test_clam_round_trip_h5_and_pt(tmp_path):
    feats, coords = _bag()
    out = write_bag(tmp_path, "slide_a", feats, coords, attrs={"patch_size": 256, "patch_level": 1})
    assert out["h5"] == tmp_path / "h5_files" / "slide_a.h5"
    h5 = read_bag(out["h5"])
    np.testing.assert_array_equal(h5.features, feats)
    np.testing.assert_array_equal(h5.coords, coords)
    assert h5.attrs["patch_size"] == 256 and h5.attrs["patch_level"] == 1
    assert h5.coords.dtype == np.int64 and h5.features.dtype == np.float32
    pt = read_bag(out["pt"])
    np.testing.assert_array_equal(pt.features, feats)
    assert pt.coords is None
    # the pt file is a plain tensor, as CLAM writes it
    assert isinstance(torch.load(out["pt"], weights_only=True), torch.Tensor)


def test_feature_paths_layouts(tmp_path):
    feats, coords = _bag()
    write_bag(tmp_path / "clam", "b", feats, coords)
    write_bag(tmp_path / "clam", "a", feats, coords)
    assert list(feature_paths(tmp_path / "clam")) == ["a", "b"]
    assert feature_paths(tmp_path / "clam", "pt")["a"].suffix == ".pt"
    assert feature_paths(tmp_path / "clam" / "pt_files")["b"].name == "b.pt"
    # TRIDENT: a flat folder of h5 files
    trident = tmp_path / "features_conch_v15"
    trident.mkdir()
    with h5py.File(trident / "s1.h5", "w") as f:
        f["features"] = feats
        f["coords"] = coords
    (trident / ".s2.tmp-1-abc.h5").write_bytes(b"partial")  # temporary files are ignored
    assert list(feature_paths(trident)) == ["s1"]
    np.testing.assert_array_equal(read_bag(feature_paths(trident)["s1"]).features, feats)


def test_missing_folder_and_empty_folder(tmp_path):
    with pytest.raises(InputFileError, match="does not exist"):
        feature_paths(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputFileError, match="no .* feature files"):
        feature_paths(tmp_path / "empty")


def _h5(path, **datasets):
    with h5py.File(path, "w") as f:
        for k, v in datasets.items():
            f[k] = v
    return path


@pytest.mark.parametrize(
    "datasets, message",
    [
        ({"coords": np.zeros((3, 2))}, "no 'features' dataset"),
        ({"features": np.zeros(5, np.float32)}, "must be 2-D"),
        ({"features": np.zeros((0, 4), np.float32), "coords": np.zeros((0, 2))}, "no patches"),
        ({"features": np.zeros((3, 4), np.float32), "coords": np.zeros((2, 2))}, "3 feature rows but 2 coords"),
        ({"features": np.array([[1.0, np.nan]], np.float32)}, "NaN/Inf"),
        ({"features": np.array([[1.0, np.inf]], np.float32)}, "NaN/Inf"),
        ({"features": np.zeros((3, 4), np.float32), "coords": np.zeros((3, 3))}, r"shape \(N, 2\)"),
    ],
)
def test_validation_errors_name_the_file(tmp_path, datasets, message):
    path = _h5(tmp_path / "bad_slide.h5", **datasets)
    with pytest.raises(InputFileError, match=message) as err:
        read_bag(path)
    assert "bad_slide.h5" in str(err.value)
    assert "Fix:" in str(err.value)


def test_empty_allowed_when_asked(tmp_path):
    path = _h5(tmp_path / "e.h5", features=np.zeros((0, 4), np.float32), coords=np.zeros((0, 2)))
    assert read_bag(path, allow_empty=True).n == 0


def test_dimension_mismatch_names_the_odd_file(tmp_path):
    a = _h5(tmp_path / "a.h5", features=np.ones((2, 4), np.float32))
    with pytest.raises(InputFileError, match="dimension 4 differs from the expected 8") as err:
        read_bag(a, expected_dim=8)
    assert "a.h5" in str(err.value)
    with pytest.raises(InputFileError, match="odd.h5"):
        check_same_dim([(tmp_path / "x.h5", 512), (tmp_path / "odd.h5", 1024), (tmp_path / "y.h5", 512)])
    assert check_same_dim([(a, 4)]) == 4


def test_corrupt_files_are_clear_errors(tmp_path):
    bad_h5 = tmp_path / "corrupt.h5"
    bad_h5.write_bytes(b"not hdf5 at all")
    with pytest.raises(InputFileError, match="corrupt.h5.*not a readable HDF5"):
        read_bag(bad_h5)
    bad_pt = tmp_path / "corrupt.pt"
    bad_pt.write_bytes(b"garbage")
    with pytest.raises(InputFileError, match="corrupt.pt.*cannot be read"):
        read_bag(bad_pt)
    with pytest.raises(InputFileError, match="missing.pt.*file not found"):
        read_bag(tmp_path / "missing.pt")


def test_pt_nan_and_non_tensor(tmp_path):
    torch.save(torch.tensor([[1.0, float("nan")]]), tmp_path / "nan.pt")
    with pytest.raises(InputFileError, match="nan.pt.*NaN"):
        read_bag(tmp_path / "nan.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(InputFileError, match="list.pt.*not a tensor"):
        read_bag(tmp_path / "list.pt")


def test_write_refuses_nan(tmp_path):
    with pytest.raises(InputFileError, match="NaN"):
        write_bag(tmp_path, "s", np.array([[np.nan]], np.float32), None)
    assert not (tmp_path / "h5_files" / "s.h5").exists()


def test_sparse_codes_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    dense = np.where(rng.random((6, 20)) < 0.2, rng.random((6, 20)), 0).astype(np.float32)
    from scipy import sparse

    csr = sparse.csr_matrix(dense)
    coords = rng.integers(0, 100, (6, 2))
    p = write_sparse_codes(tmp_path / "sparse_files" / "s.h5", csr.indptr, csr.indices, csr.data, 20, coords)
    got, got_coords, attrs = read_sparse_codes(p)
    np.testing.assert_array_equal(got.toarray(), dense)
    np.testing.assert_array_equal(got_coords, coords)
    assert attrs["dict_size"] == 20
    np.testing.assert_array_equal(read_bag(p).features, dense)  # readers densify by default
    assert list(feature_paths(tmp_path, "sparse")) == ["s"]


def test_hostile_pickle_error_never_suggests_weights_only_false(tmp_path):
    """A .pt holding code is refused with one error that does not advise the unsafe retry."""
    import pickle

    import pytest

    from sae1n.errors import InputFileError
    from sae1n.io.features import read_bag

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "pt_files" / "s1.pt"
    bad.parent.mkdir()
    bad.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(InputFileError) as err:
        read_bag(bad)
    msg = str(err.value)
    assert str(bad) in msg and "never code" in msg
    assert "weights_only" not in msg
