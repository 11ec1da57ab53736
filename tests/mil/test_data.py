import numpy as np
import pandas as pd
import pytest
import torch

from sae1n.datasets.splits import read_split
from sae1n.errors import ConfigError, InputFileError
from sae1n.io import write_bag
from sae1n.mil.data import BagSource, read_slide_labels, resolve_feature_paths, select_sae_units
from tests.mil.conftest import write_splits


def test_read_split_clam_format_with_and_without_index(tmp_path):
    splits = {"train": ["a", "b", "c"], "val": ["d"], "test": ["e", "f"]}
    for index_col in (False, True):
        path = write_splits(tmp_path / str(index_col), splits, index_col=index_col)
        assert read_split(path) == splits
    overlap = write_splits(tmp_path / "o", {"train": ["a"], "val": ["a"], "test": []})
    with pytest.raises(InputFileError, match="slide a is in both train and val"):
        read_split(overlap)
    with pytest.raises(InputFileError, match="create-splits"):
        read_split(tmp_path / "nope.csv")


def test_paper_splits_and_metadata_resolve(shared_data):
    ref = shared_data / "sae1n_reference"
    labels = read_slide_labels(ref / "camelyon16_metadata.csv", 2)
    assert len(labels) == 399 and set(labels.values()) == {0, 1}
    for k in range(5):
        split = read_split(ref / "splits" / "camelyon16_42" / f"splits_{k}.csv")
        ids = [s for v in split.values() for s in v]
        assert len(ids) == len(set(ids)) and set(ids) <= set(labels)
        assert split["test"] and split["val"] and split["train"]


def test_labels_binary_and_isup(tmp_path):
    csv = tmp_path / "m.csv"
    pd.DataFrame(
        {
            "slide_id": ["s1", "s2", "s3"],
            "label": ["normal", "Tumor", "tumor"],
            "isup_grade": [0, 3, 5],
        }
    ).to_csv(csv, index=False)
    assert read_slide_labels(csv, 2) == {"s1": 0, "s2": 1, "s3": 1}
    assert read_slide_labels(csv, 6) == {"s1": 0, "s2": 3, "s3": 5}
    with pytest.raises(InputFileError, match="s3.*unknown isup_grade 5"):
        read_slide_labels(csv, 4)
    with pytest.raises(InputFileError, match="no 'grade' column"):
        read_slide_labels(csv, 2, label_col="grade")


def test_select_sae_units_keeps_ranked_order(tmp_path):
    csv = tmp_path / "rank.csv"
    # p ties at 0 keep the file order (t descending), as analyze-sae writes it
    pd.DataFrame(
        {
            "unit_id": [42, 7, 3, 9],
            "t_statistic": [12.0, 11.0, 3.0, 1.0],
            "p_value": [0.0, 0.0, 0.01, 0.5],
        }
    ).to_csv(csv, index=False)
    assert select_sae_units(csv, 1).tolist() == [42]
    assert select_sae_units(csv, 3).tolist() == [42, 7, 3]
    assert select_sae_units(csv, 2, "t_statistic").tolist() == [42, 7]
    assert select_sae_units(csv, 10, None).tolist() == [42, 7, 3, 9]
    with pytest.raises(ConfigError, match="auroc"):
        select_sae_units(csv, 1, "auroc")
    with pytest.raises(InputFileError, match="analyze-sae"):
        select_sae_units(tmp_path / "missing.csv", 1)


def test_pt_bags_get_coords_from_h5_and_unit_selection(tmp_path):
    feats = np.arange(12, dtype=np.float32).reshape(3, 4)
    coords = np.array([[0, 0], [256, 0], [512, 256]])
    write_bag(tmp_path / "features_x", "s1", feats, coords, formats=("h5", "pt"))
    folder, paths = resolve_feature_paths(tmp_path, "features_x", file_type="pt")
    assert folder == tmp_path / "features_x" and paths["s1"].suffix == ".pt"
    bag = BagSource(paths, units=np.array([2, 0])).load("s1")
    assert torch.equal(bag.features, torch.from_numpy(feats[:, [2, 0]]))
    assert np.array_equal(bag.coords, coords)
    with pytest.raises(InputFileError, match="s1.pt.*model.in_dim=4"):
        BagSource(paths, expected_dim=5).load("s1")
    with pytest.raises(InputFileError, match="SAE unit 9"):
        BagSource(paths, units=np.array([9])).load("s1")
