import filecmp

import numpy as np
import pandas as pd
import pytest

from sae1n.datasets import create_splits, read_split
from sae1n.errors import ConfigError, InputFileError

# Facts of the paper's published PANDA split (tamukei/sae-1n splits/panda_42/, seed 42, 1 repeat).
PANDA_42 = {
    "descriptor": {"normal": (2309, 293), "tumor": (6183, 769)},
    "sizes": (8492, 1062, 1061),
    "val_head": [
        "002a4db09dad406c85505a00fb6f6144",
        "005e66f06bce9c2e49142536caf2f6ee",
        "00bbc1482301d16de3ff63238cfd0b34",
    ],
    "test_head": [
        "0032bfa835ce0f43a92ae0bbab6871cb",
        "006f6aa35a78965c92fffd1fbd53a058",
        "008308f099f0c565fbc024ece6b8b08c",
    ],
    "val_tail": [
        "ff80dfefc41b8863b476c5840f88fec0",
        "ffb182fa5b636005e21eec384bbf406b",
        "ffe236a25d4cbed59438220799920749",
    ],
    "test_tail": [
        "ff5130c98c14c90ae7f4dd64c297070c",
        "ff9392e744afa04771ad9288762e1b6a",
        "ffc70bf605de30aaa936533397a29d9c",
    ],
    "csv_bytes": 365171,
}


def _camelyon_metadata(path, n_normal=30, n_tumor=20, n_test=10):
    rows = [(f"normal_{i:03d}", "normal", "train") for i in range(1, n_normal + 1)]
    rows += [
        (f"test_{i:03d}", "tumor" if i % 3 == 0 else "normal", "test") for i in range(1, n_test + 1)
    ]
    rows += [(f"tumor_{i:03d}", "tumor", "train") for i in range(1, n_tumor + 1)]
    frame = pd.DataFrame(rows, columns=["slide_id", "label", "split"])
    frame.insert(0, "case_id", frame["slide_id"])
    frame.to_csv(path, index=False)
    return frame


def test_camelyon16_splits_are_patient_level_folds_with_fixed_test(tmp_path):
    meta = _camelyon_metadata(tmp_path / "m.csv")
    # two slides of one patient must land in the same set
    meta.loc[meta["slide_id"] == "tumor_002", "case_id"] = "tumor_001"
    meta.to_csv(tmp_path / "m.csv", index=False)
    paths = create_splits(tmp_path / "m.csv", tmp_path / "splits", "camelyon16", k=4, seed=1)
    assert [p.name for p in paths] == [f"splits_{i}.csv" for i in range(4)]
    train_ids = set(meta.loc[meta.split == "train", "slide_id"])
    test_ids = meta.loc[meta.split == "test", "slide_id"].tolist()
    vals = []
    for i, path in enumerate(paths):
        sets = read_split(path)
        assert sets["test"] == test_ids
        assert set(sets["train"]) | set(sets["val"]) == train_ids and not set(sets["train"]) & set(
            sets["val"]
        )
        assert ("tumor_001" in sets["val"]) == ("tumor_002" in sets["val"])
        vals.append(set(sets["val"]))
        assert read_split(path.with_name(f"splits_{i}_bool.csv")) == {
            k: sorted(v) for k, v in sets.items()
        }
        descriptor = pd.read_csv(path.with_name(f"splits_{i}_descriptor.csv"), index_col=0)
        label = dict(zip(meta.slide_id, meta.label))
        assert descriptor.loc["tumor", "val"] == sum(label[s] == "tumor" for s in sets["val"])
    assert set().union(*vals) == train_ids  # every training slide validates once
    # same seed, same files; other seed, other folds
    again = create_splits(tmp_path / "m.csv", tmp_path / "again", "camelyon16", k=4, seed=1)
    assert all(filecmp.cmp(a, b, shallow=False) for a, b in zip(paths, again))
    other = create_splits(tmp_path / "m.csv", tmp_path / "other", "camelyon16", k=4, seed=2)
    assert read_split(other[0])["val"] != read_split(paths[0])["val"]


def test_panda_splits_are_80_10_10_stratified_by_provider(tmp_path):
    rng = np.random.default_rng(0)
    n = 400
    frame = pd.DataFrame(
        {
            "case_id": [f"case{i // 2:03d}" for i in range(n)],  # two slides per case
            "slide_id": [f"slide{i:03d}" for i in range(n)],
        }
    )
    case_label = rng.choice(["normal", "tumor"], n // 2)
    case_provider = rng.choice(["radboud", "karolinska"], n // 2)
    frame["label"] = np.repeat(case_label, 2)
    frame["data_provider"] = np.repeat(case_provider, 2)
    frame.to_csv(tmp_path / "p.csv", index=False)
    paths = create_splits(tmp_path / "p.csv", tmp_path, "panda", seed=5, repeats=2)
    assert [p.name for p in paths] == ["splits_0.csv", "splits_1.csv"]
    assert paths[0].parent.name == "panda_5"
    case_of = dict(zip(frame.slide_id, frame.case_id))
    first, second = read_split(paths[0]), read_split(paths[1])
    for sets in (first, second):
        sizes = [len(sets[s]) for s in ("train", "val", "test")]
        assert sum(sizes) == n and 0.75 < sizes[0] / n < 0.85 and 0.05 < sizes[1] / n < 0.15
        cases = {s: {case_of[x] for x in sets[s]} for s in sets}
        assert (
            not (cases["train"] & cases["val"])
            and not (cases["train"] & cases["test"])
            and not (cases["val"] & cases["test"])
        )
    assert first["test"] != second["test"]


def test_invalid_split_input_is_a_clear_error(tmp_path):
    meta = _camelyon_metadata(tmp_path / "m.csv", n_normal=2, n_tumor=1)
    with pytest.raises(ConfigError, match="--k must be >= 2"):
        create_splits(tmp_path / "m.csv", tmp_path, "camelyon16", k=1)
    with pytest.raises(ConfigError, match="cannot make 5 folds from 3 groups"):
        create_splits(tmp_path / "m.csv", tmp_path, "camelyon16", k=5)
    meta.loc[meta.slide_id == "tumor_001", "case_id"] = "normal_001"
    meta.to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(
        InputFileError, match="m.csv: case_id.s. with more than one label: normal_001"
    ):
        create_splits(tmp_path / "m.csv", tmp_path, "camelyon16", k=2)
    meta.drop(columns=["case_id"]).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(InputFileError, match=r"missing column\(s\) \['case_id'\]"):
        create_splits(tmp_path / "m.csv", tmp_path, "camelyon16")
    _camelyon_metadata(tmp_path / "m.csv").to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(InputFileError, match="data_provider"):
        create_splits(tmp_path / "m.csv", tmp_path, "panda")


def test_read_split_rejects_bad_files(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("slides,val\na,b\n")
    with pytest.raises(InputFileError, match="missing column 'train'"):
        read_split(path)
    path.write_text("train,val\na,b\n")
    assert read_split(path) == {"train": ["a"], "val": ["b"], "test": []}
    path.write_text("train,val,test\na,b,a\n")
    with pytest.raises(InputFileError, match="slide a is in both train and test"):
        read_split(path)
    with pytest.raises(InputFileError, match="split file not found"):
        read_split(tmp_path / "none.csv")


def test_camelyon16_splits_reproduce_the_published_folds(tmp_path, reference_dir):
    published = reference_dir / "splits" / "camelyon16_42"
    create_splits(reference_dir / "camelyon16_metadata.csv", tmp_path, "camelyon16", k=5, seed=42)
    ours = tmp_path / "camelyon16_42"
    assert sorted(p.name for p in ours.iterdir()) == sorted(p.name for p in published.iterdir())
    for i in range(5):
        expected, got = (
            read_split(published / f"splits_{i}.csv"),
            read_split(ours / f"splits_{i}.csv"),
        )
        for column in ("train", "val", "test"):
            assert set(got[column]) == set(expected[column]), f"fold {i} {column}"
    for name in sorted(p.name for p in published.iterdir()):
        assert filecmp.cmp(ours / name, published / name, shallow=False), name


def test_panda_split_reproduces_the_published_split(tmp_path, reference_dir):
    (path,) = create_splits(
        reference_dir / "panda_metadata.csv", tmp_path, "panda", seed=42, repeats=1
    )
    sets = read_split(path)
    assert tuple(len(sets[s]) for s in ("train", "val", "test")) == PANDA_42["sizes"]
    for column in ("val", "test"):
        assert sets[column][:3] == PANDA_42[f"{column}_head"]
        assert sets[column][-3:] == PANDA_42[f"{column}_tail"]
    descriptor = pd.read_csv(path.with_name("splits_0_descriptor.csv"), index_col=0)
    assert {k: tuple(v) for k, v in descriptor.iterrows()} == PANDA_42["descriptor"]
    assert path.stat().st_size == PANDA_42["csv_bytes"]
