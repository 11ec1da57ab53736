import numpy as np
import pandas as pd
import pytest
from PIL import Image

from sae1n.cli import main
from sae1n.datasets import read_patch_labels, read_split
from sae1n.datasets.bags import make_bags
from sae1n.errors import ConfigError
from sae1n.io import StaleOutputError, read_bag, read_provenance


def _patches(n_per=20, classes=("TUM", "STR", "LYM", "ADI"), dim=6, seed=0):
    rng = np.random.default_rng(seed)
    cls = np.repeat(classes, n_per)
    x = rng.normal(size=(len(cls), dim)).astype(np.float32)
    x[:, 0] += 3.0 * (cls == "TUM")
    return x, cls


def test_bags_split_patches_labels_and_witness_rate(tmp_path):
    x, cls = _patches()
    res = make_bags(x, cls, tmp_path / "b", positive_class="TUM", bag_size=8, witness_rate=0.25, n_bags=20, seed=3)
    p, bags = res.patches, res.bags
    # a patch appears in bags of one split only
    assert (p.groupby("row")["split"].nunique() == 1).all()
    assert p["row"].nunique() == len(x)  # every patch used
    split = read_split(res.split_csv)
    assert set(split["train"]) == set(bags.loc[bags.split == "train", "slide_id"])
    assert sum(map(len, split.values())) == len(bags) == 20
    for _, b in bags.iterrows():
        rows = p[p.slide_id == b.slide_id]
        assert len(rows) == 8 and rows["row"].is_unique  # no repeat inside a bag
        n_tum = int((rows["class"] == "TUM").sum())
        assert n_tum == (2 if b.label == "tumor" else 0) == b.n_positive
        feats = read_bag(res.feature_dir / "h5_files" / f"{b.slide_id}.h5")
        np.testing.assert_array_equal(feats.features, x[rows["row"].to_numpy()])
        coords, frac, lab = read_patch_labels(res.patch_label_dir / f"{b.slide_id}.h5")
        np.testing.assert_array_equal(coords, feats.coords)
        np.testing.assert_array_equal(lab.astype(bool), (rows["class"] == "TUM").to_numpy())
    for s in ("train", "val", "test"):
        lab = bags.loc[bags.split == s, "label"]
        assert (lab == "tumor").sum() >= 2 and (lab == "normal").sum() >= 2
    assert read_provenance(res.dataset_csv).settings["positive_class"] == "TUM"


def test_bags_deterministic_ranges_reuse_and_stale(tmp_path):
    x, cls = _patches()
    kw = dict(positive_class="LYM", bag_size="6:10", witness_rate="0.1:0.5", n_bags=16)
    a = make_bags(x, cls, tmp_path / "a", seed=1, **kw)
    b = make_bags(x, cls, tmp_path / "b", seed=1, **kw)
    pd.testing.assert_frame_equal(a.patches, b.patches)
    c = make_bags(x, cls, tmp_path / "c", seed=2, **kw)
    assert not a.patches["row"].equals(c.patches["row"])
    assert a.bags["n_patches"].between(6, 10).all() and a.bags["n_patches"].nunique() > 1
    pos = a.bags[a.bags.label == "tumor"]
    assert (pos["n_positive"] >= 1).all() and pos["witness_rate"].nunique() > 1
    assert make_bags(x, cls, tmp_path / "a", seed=1, **kw).reused
    with pytest.raises(StaleOutputError, match="seed"):
        make_bags(x, cls, tmp_path / "a", seed=5, **kw)
    kw["n_bags"] = 8  # fewer bags: none of the old run's may survive
    again = make_bags(x, cls, tmp_path / "a", seed=5, overwrite=True, **kw)
    assert not again.reused and len(again.bags) < len(a.bags)
    assert len(list((tmp_path / "a" / "patch_labels").glob("bag_*.h5"))) == len(again.bags)
    assert len(list((tmp_path / "a" / "features" / "pt_files").glob("bag_*.pt"))) == len(again.bags)


def test_bad_options(tmp_path):
    x, cls = _patches()
    with pytest.raises(ConfigError, match="not among"):
        make_bags(x, cls, tmp_path, positive_class="MUC")
    with pytest.raises(ConfigError, match="witness_rate"):
        make_bags(x, cls, tmp_path, positive_class="TUM", witness_rate=1.5)
    with pytest.raises(ConfigError, match="distinct patches"):
        make_bags(x, cls, tmp_path, positive_class="TUM", bag_size=40)


def test_cli_features_and_tiles(tmp_path, capsys):
    x, cls = _patches(n_per=10)
    np.save(tmp_path / "f.npy", x)
    pd.DataFrame({"row": range(len(cls)), "tissue_class": cls}).to_csv(tmp_path / "l.csv", index=False)
    rc = main(["make-bags", "--features", str(tmp_path / "f.npy"), "--labels", str(tmp_path / "l.csv"),
               "--out_dir", str(tmp_path / "o"), "--positive_class", "TUM", "--bag_size", "4", "--n_bags", "12"])
    assert rc == 0 and "train:" in capsys.readouterr().out
    # tiles: DIR/<class>/*.png through the handcrafted encoder
    rng = np.random.default_rng(0)
    for c, colour in (("tumor", (90, 40, 140)), ("normal", (230, 170, 200))):
        (tmp_path / "t" / c).mkdir(parents=True)
        for i in range(12):
            img = np.clip(np.array(colour) + rng.normal(0, 10, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(tmp_path / "t" / c / f"{i}.png")
    rc = main(["make-bags", "--tiles", str(tmp_path / "t"), "--out_dir", str(tmp_path / "ot"),
               "--positive_class", "tumor", "--bag_size", "3", "--split", "0.5,0.25,0.25", "--witness_rate", "0.34", "--n_bags", "12"])
    assert rc == 0
    p = pd.read_csv(tmp_path / "ot" / "patches.csv")
    assert p["patch"].str.startswith(("tumor/", "normal/")).all()
    assert read_bag(tmp_path / "ot" / "features" / "h5_files" / "bag_0000.h5").dim == 64
    assert main(["make-bags", "--out_dir", str(tmp_path / "x"), "--positive_class", "TUM"]) == 1


def test_clam_folder_input(tmp_path):
    from sae1n.datasets.patch_sources import load_clam_folder
    from sae1n.errors import InputFileError
    from sae1n.io import write_bag

    x, cls = _patches(n_per=10)
    coords = np.stack([np.arange(len(x)) * 256, np.zeros(len(x))], 1).astype(np.int64)
    write_bag(tmp_path / "clam", "slideA", x[:20], coords[:20])
    write_bag(tmp_path / "clam", "slideB", x[20:], coords[20:])
    order = np.random.default_rng(0).permutation(len(x))  # CSV rows in any order
    lab = pd.DataFrame({"slide_id": np.where(order < 20, "slideA", "slideB"), "x": coords[order, 0], "y": 0, "class": cls[order]})
    lab.to_csv(tmp_path / "lab.csv", index=False)
    fx, fc, ids = load_clam_folder(tmp_path / "clam", tmp_path / "lab.csv")
    rows = [int(i.split(":")[1]) // 256 for i in ids]
    np.testing.assert_array_equal(fx, x[rows])
    np.testing.assert_array_equal(fc, cls[rows])
    lab.loc[0, "x"] = 7  # a patch that was never extracted
    lab.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(InputFileError, match="not among its feature coords"):
        load_clam_folder(tmp_path / "clam", tmp_path / "bad.csv")
