"""Other tools' feature folders, read through the one feature-bag interface:
TRIDENT, STAMP, KatherLab mopadi (the real files), LazySlide / SpatialData
zarr stores; train-sae -> save-sae-features -> analyze-sae on each."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest

from sae1n.errors import InputFileError
from sae1n.io import feature_paths, read_bag


def _feats(n=12, d=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype(np.float32), (rng.integers(0, 200, (n, 2)) * 256).astype(np.int64)


# ----------------------------------------------------------------------------- writers in each tool's layout


def write_trident(job_dir, slide, feats, coords, encoder="conch_v15"):
    """TRIDENT's save_h5: chunked (1, D) datasets, attrs on each dataset."""
    folder = job_dir / "20x_256px_0px_overlap" / f"features_{encoder}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{slide}.h5"
    with h5py.File(path, "w") as f:
        for key, val in (("features", feats), ("coords", coords)):
            ds = f.create_dataset(key, shape=val.shape, maxshape=(None, *val.shape[1:]), chunks=(1, *val.shape[1:]), dtype=val.dtype)
            ds[:] = val
        f["features"].attrs.update({"name": slide, "savetodir": str(folder), "encoder": encoder})
        f["coords"].attrs.update(
            {
                "patch_size": 256,
                "patch_size_level0": 512,
                "level0_magnification": 40,
                "target_magnification": 20,
                "overlap": 0,
                "name": slide,
                "savetodir": str(job_dir),
                "level0_width": 100_000,
                "level0_height": 80_000,
            }
        )
    return path


def write_stamp(folder, slide, feats, coords_um, tile_um=256.0, feat_type="tile"):
    """STAMP's preprocessing output: float16 feats, micrometre coords, file attrs."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{slide}.h5"
    with h5py.File(path, "w") as f:
        f["coords"] = coords_um.astype(np.float32)
        f["feats"] = feats.astype(np.float16)
        f.attrs.update(
            {
                "stamp_version": "2.3.0",
                "extractor": "uni2",
                "unit": "um",
                "tile_size_um": tile_um,
                "tile_size_px": 224,
                "code_hash": "abcd1234",
                "feat_type": feat_type,
            }
        )
    return path


def write_mopadi(folder, slide, feats, coords=None, names=None):
    """mopadi's <slide>/features.h5: feats+coords, or features+metadata."""
    d = folder / slide
    d.mkdir(parents=True, exist_ok=True)
    with h5py.File(d / "features.h5", "w") as f:
        if coords is not None:
            f["coords"] = coords
            f["feats"] = feats
        else:
            f["features"] = feats
            f.create_dataset("metadata", data=np.array([n.encode() for n in names], dtype=object), dtype=h5py.string_dtype())
    return d / "features.h5"


def _zarr_str(group, name, values, zarr_format):
    arr = group.create_array(name, shape=(len(values),), dtype=str)
    arr[:] = np.asarray(values, dtype=str)
    arr.attrs.update({"encoding-type": "string-array", "encoding-version": "0.2.0"})
    return arr


def write_lazyslide(folder, slide, tables: dict, tile_xy, tile_key="tiles", zarr_format=2, shuffle=None):
    """A SpatialData store as LazySlide/wsidata saves it: tables/<model>_tiles
    (AnnData on-disk encoding: X, obs with tile_id + library_id, uns
    spatialdata_attrs) and shapes/<tiles>/shapes.parquet (tile_id, x, y, geometry)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import shapely
    import zarr

    path = folder / f"{slide}.zarr"
    root = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    root.attrs.update({"spatialdata_attrs": {"version": "0.2"}, "tile_spec": {tile_key: {"base_width": 512}}})
    n = len(tile_xy)
    order = np.arange(n) if shuffle is None else shuffle  # table rows may be in another order than the tiles
    for name, X in tables.items():
        t = root.require_group("tables").create_group(name)
        t.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
        x = t.create_array("X", shape=X.shape, dtype="float32")
        x[:] = X[order]
        x.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
        obs = t.create_group("obs")
        obs.attrs.update({"encoding-type": "dataframe", "encoding-version": "0.2.0", "_index": "_index", "column-order": ["tile_id", "library_id"]})
        _zarr_str(obs, "_index", [str(i) for i in order], zarr_format)
        tid = obs.create_array("tile_id", shape=(n,), dtype="int64")
        tid[:] = order
        lib = obs.create_group("library_id")
        lib.attrs.update({"encoding-type": "categorical", "encoding-version": "0.2.0", "ordered": False})
        codes = lib.create_array("codes", shape=(n,), dtype="int8")
        codes[:] = 0
        _zarr_str(lib, "categories", [tile_key], zarr_format)
        sda = t.create_group("uns").create_group("spatialdata_attrs")
        sda.attrs.update({"encoding-type": "dict", "encoding-version": "0.1.0"})
        for k, v in (("region", tile_key), ("region_key", "library_id"), ("instance_key", "tile_id")):
            a = sda.create_array(k, shape=(), dtype=str)
            a[...] = v
            a.attrs.update({"encoding-type": "string", "encoding-version": "0.2.0"})
    shp = path / "shapes" / tile_key
    root.require_group("shapes").create_group(tile_key).attrs.update({"encoding-type": "ngff:shapes"})
    geoms = shapely.to_wkb([shapely.box(x, y, x + 512, y + 512) for x, y in tile_xy])
    pq.write_table(
        pa.table({"tile_id": np.arange(n), "x": tile_xy[:, 0], "y": tile_xy[:, 1], "tissue_id": np.zeros(n, int), "geometry": list(geoms)}),
        shp / "shapes.parquet",
    )
    return path


# ----------------------------------------------------------------------------- readers


def test_trident_job_folder_and_attributes(tmp_path):
    feats, coords = _feats()
    write_trident(tmp_path / "job", "slide_b", feats, coords)
    write_trident(tmp_path / "job", "slide_a", feats[:5], coords[:5])
    paths = feature_paths(tmp_path / "job")  # the job folder: its one features_* folder is found
    assert list(paths) == ["slide_a", "slide_b"]
    bag = read_bag(paths["slide_b"])
    np.testing.assert_array_equal(bag.features, feats)
    np.testing.assert_array_equal(bag.coords, coords)
    assert bag.attrs["encoder"] == "conch_v15" and bag.attrs["patch_size_level0"] == 512
    assert bag.attrs["target_magnification"] == 20 and bag.slide_id == "slide_b"
    assert read_bag(paths["slide_a"], feature_format="trident").n == 5
    # a second encoder's folder makes the job folder ambiguous
    write_trident(tmp_path / "job", "slide_a", feats, coords, encoder="uni_v2")
    with pytest.raises(InputFileError, match="2 TRIDENT feature folders.*features_conch_v15.*features_uni_v2"):
        feature_paths(tmp_path / "job")


def test_trident_slide_embedding_is_a_clear_error(tmp_path):
    d = tmp_path / "slide_features_titan"
    d.mkdir()
    with h5py.File(d / "s.h5", "w") as f:
        f["features"] = np.ones(768, np.float32)
        f["coords"] = np.zeros((0, 2))
    with pytest.raises(InputFileError, match="s.h5.*slide-level embedding"):
        read_bag(d / "s.h5")


def test_stamp_layout(tmp_path):
    feats, _ = _feats(d=6)
    coords_um = np.stack([np.arange(12) * 256.0, np.full(12, 512.0)], axis=1)
    write_stamp(tmp_path / "stamp", "TCGA-XX", feats, coords_um)
    paths = feature_paths(tmp_path / "stamp")
    bag = read_bag(paths["TCGA-XX"])
    assert bag.features.dtype == np.float32
    np.testing.assert_allclose(bag.features, feats.astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(bag.coords, coords_um.astype(np.int64))
    assert bag.attrs["coords_unit"] == "um" and bag.attrs["feature_format"] == "stamp"
    assert bag.attrs["extractor"] == "uni2" and bag.attrs["tile_size_um"] == 256.0
    # STAMP's output root: <output_dir>/<extractor>-<hash>/<slide>.h5
    write_stamp(tmp_path / "out" / "uni2-abcd1234", "TCGA-YY", feats, coords_um)
    assert list(feature_paths(tmp_path / "out")) == ["TCGA-YY"]
    write_stamp(tmp_path / "out" / "virchow2-abcd1234", "TCGA-YY", feats, coords_um)
    with pytest.raises(InputFileError, match="2 STAMP feature folders.*uni2-abcd1234"):
        feature_paths(tmp_path / "out")
    write_stamp(tmp_path / "slide", "enc", feats[:1], coords_um[:1], feat_type="slide")
    with pytest.raises(InputFileError, match="enc.h5.*STAMP slide-level features"):
        read_bag(tmp_path / "slide" / "enc.h5")
    # asking for another layout than the file's is one clear error
    with pytest.raises(InputFileError, match="TCGA-XX.h5.*is a stamp feature file, not trident"):
        read_bag(paths["TCGA-XX"], feature_format="trident")


def test_real_mopadi_files(shared_data):
    root = shared_data / "features"
    if not (root / "mopadi_TCGA-AD-6964-01Z-00-DX1" / "features.h5").is_file():
        pytest.skip(f"mopadi files not present under {root}")
    paths = feature_paths(root)  # <slide>/features.h5 folders (gigapath_tile/ has none)
    assert sorted(paths) == ["mopadi_TCGA-3X-AAVA-01Z-00-DX1", "mopadi_TCGA-AD-6964-01Z-00-DX1"]
    a = read_bag(paths["mopadi_TCGA-AD-6964-01Z-00-DX1"])
    assert a.features.shape == (777, 512) and a.coords.shape == (777, 2)
    assert a.coords[0].tolist() == [10240, 21504] and a.slide_id == "mopadi_TCGA-AD-6964-01Z-00-DX1"
    assert a.attrs["feature_format"] == "mopadi"
    b = read_bag(paths["mopadi_TCGA-3X-AAVA-01Z-00-DX1"], feature_format="mopadi")
    assert b.features.shape == (180, 512) and b.coords is None  # names like 0_0_0_506.jpg hold no coords
    assert b.tile_names[:2] == ["0_0_0_506.jpg", "0_0_1_506.jpg"] and len(b.tile_names) == 180
    assert np.isfinite(b.features).all() and abs(float(b.features.std()) - 0) > 1e-3


def test_mopadi_tile_names_with_coordinates(tmp_path):
    feats, coords = _feats(n=3)
    names = [f"Tile_({x},{y}).jpg" for x, y in coords]
    write_mopadi(tmp_path, "s1", feats, names=names)
    bag = read_bag(feature_paths(tmp_path)["s1"])
    np.testing.assert_array_equal(bag.coords, coords)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_lazyslide_zarr_store(tmp_path, zarr_format):
    feats, xy = _feats(n=10, d=5)
    perm = np.random.default_rng(1).permutation(10)
    write_lazyslide(tmp_path, "slide1", {"uni_tiles": feats}, xy, zarr_format=zarr_format, shuffle=perm)
    paths = feature_paths(tmp_path)
    assert list(paths) == ["slide1"] and paths["slide1"].suffix == ".zarr"
    bag = read_bag(paths["slide1"])
    np.testing.assert_array_equal(bag.features, feats[perm])
    np.testing.assert_array_equal(bag.coords, xy[perm])  # matched through tile_id, not row order
    assert bag.attrs["table"] == "uni_tiles" and bag.attrs["spatialdata_region"] == "tiles"
    assert feature_paths(paths["slide1"]) == {"slide1": paths["slide1"]}  # one store
    # two models' tables: ask for one
    write_lazyslide(tmp_path, "slide2", {"uni_tiles": feats, "resnet50_tiles": feats[:, :3]}, xy, zarr_format=zarr_format)
    with pytest.raises(InputFileError, match=r"slide2.zarr.*2 feature tables.*lazyslide:resnet50_tiles"):
        read_bag(tmp_path / "slide2.zarr")
    assert read_bag(tmp_path / "slide2.zarr", feature_format="lazyslide:resnet50_tiles").dim == 3
    # the folder listing can carry the table, so readers called without a format read it too
    paths = feature_paths(tmp_path, feature_format="lazyslide:uni_tiles")
    assert paths["slide2"] == tmp_path / "slide2.zarr" / "tables" / "uni_tiles"
    bag = read_bag(paths["slide2"])
    assert bag.dim == 5 and bag.slide_id == "slide2" and bag.coords.shape == (10, 2)
    with pytest.raises(InputFileError, match="slide1.zarr.*no feature table 'resnet50_tiles'"):
        feature_paths(tmp_path, feature_format="lazyslide:resnet50_tiles")


def test_anndata_written_store_if_installed(tmp_path):
    """The same table written by anndata itself (optional extra)."""
    ad = pytest.importorskip("anndata", reason="anndata not installed (it pins pandas<3; sae1n reads its zarr encoding without it)")
    feats, xy = _feats(n=6, d=4)
    ad.settings.allow_write_nullable_strings = True
    store = tmp_path / "s.zarr"
    obs = pd.DataFrame({"tile_id": np.arange(6)}, index=[str(i) for i in range(6)])
    ad.AnnData(X=feats, obs=obs).write_zarr(store / "tables" / "uni_tiles")
    np.testing.assert_array_equal(read_bag(store).features, feats)


def test_unknown_layouts_name_the_file(tmp_path):
    p = tmp_path / "odd.h5"
    with h5py.File(p, "w") as f:
        f["embeddings"] = np.zeros((3, 4))
    with pytest.raises(InputFileError, match="odd.h5.*no 'features' dataset"):
        read_bag(p)
    with pytest.raises(InputFileError, match="odd.h5.*not a patch-feature file of any known layout.*embeddings"):
        read_bag(p, feature_format="stamp")
    with pytest.raises(InputFileError, match="unknown feature format 'parquet'.*clam, trident, stamp, mopadi, lazyslide"):
        read_bag(p, feature_format="parquet")
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(InputFileError, match="empty.zarr"):
        read_bag(tmp_path / "empty.zarr")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(InputFileError, match=r"nothing: no \.h5/\.pt feature files found.*LazySlide"):
        feature_paths(tmp_path / "nothing")


# ----------------------------------------------------------------------------- train-sae / analyze-sae on each


DIM, N_SLIDES, N_PATCH = 16, 8, 60


def _cohort(rng):
    """Tumour slides hold a few patches along a planted direction."""
    direction = np.zeros(DIM, np.float32)
    direction[3] = 4.0
    slides = {}
    for i in range(N_SLIDES):
        x = rng.normal(size=(N_PATCH, DIM)).astype(np.float32)
        tumour = i % 2 == 1
        if tumour:
            x[:8] += direction
        coords = np.stack([np.arange(N_PATCH) * 512, np.full(N_PATCH, i * 512)], axis=1).astype(np.int64)
        slides[f"slide_{i}"] = (x, coords, "tumor" if tumour else "normal")
    return slides


def _write_layout(kind, root, slides):
    if kind == "trident":
        for sid, (x, c, _) in slides.items():
            write_trident(root / "job", sid, x, c)
        return root / "job"
    if kind == "stamp":
        for sid, (x, c, _) in slides.items():
            write_stamp(root / "stamp", sid, x, c.astype(np.float32) * 0.5)
        return root / "stamp"
    if kind == "mopadi":
        for sid, (x, c, _) in slides.items():
            write_mopadi(root / "mopadi", sid, x, coords=c)
        return root / "mopadi"
    if kind == "lazyslide":
        (root / "lazyslide").mkdir()
        for sid, (x, c, _) in slides.items():
            write_lazyslide(root / "lazyslide", sid, {"toy_tiles": x}, c)
        return root / "lazyslide"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["trident", "stamp", "mopadi", "lazyslide"])
def test_train_and_analyze_sae_on_foreign_layouts(kind, tmp_path):
    from sae1n.configs import load_experiment
    from sae1n.neurons.ranking import analyze_sae
    from sae1n.sae.encode import save_sae_features
    from sae1n.sae.train import train_sae

    slides = _cohort(np.random.default_rng(0))
    feature_dir = _write_layout(kind, tmp_path, slides)
    ids = sorted(slides)
    split = tmp_path / "splits_0.csv"
    pd.DataFrame({"train": ids[2:], "val": ids[:2] + [None] * (len(ids) - 4)}).to_csv(split)
    meta = tmp_path / "meta.csv"
    pd.DataFrame({"case_id": ids, "slide_id": ids, "label": [slides[s][2] for s in ids]}).to_csv(meta, index=False)
    cfg = load_experiment(
        "sae",
        "camelyon16_conch_0",
        [
            f"data.feature_dir={feature_dir}",
            f"data.split_csv_path={split}",
            "data.file_type=null",
            f"output_dir={tmp_path / 'sae'}",
            f"sae.act_size={DIM}",
            "sae.dict_size_ratio=2",
            "sae.top_k=2",
            "sae.top_k_aux=8",
            "sae.n_batches_to_dead=10",
            "training.num_epochs=3",
            "training.batch_size=64",
            "training.validation_freq=5",
            "training.checkpoint_freq=20",
            "training.lr=1e-2",
            "training.num_threads=1",
        ],
    )
    cfg.exp_name = f"toy_{kind}"
    exp_dir = train_sae(cfg)
    summary = save_sae_features(exp_dir, feature_dir, device="cpu", out_dir=tmp_path / "codes")
    assert sorted(summary.encoded) == ids
    codes = tmp_path / "codes"
    for sid in ids:
        got = read_bag(codes / "sparse_files" / f"{sid}.h5")
        assert got.n == N_PATCH and got.dim == 2 * DIM
    df = analyze_sae(exp_dir.name, split, codes, meta, tmp_path / "analysis", num_features=2 * DIM)
    assert len(df) == 2 * DIM
    assert (tmp_path / "analysis" / exp_dir.name / "analysis" / "sae_analysis_t_test.csv").is_file()
    # the planted tumour direction is found: the top neuron separates the train slides
    top = float(df["slide_auroc"].iloc[0])
    assert max(top, 1 - top) == pytest.approx(1.0)


def test_train_sae_on_the_real_mopadi_files(shared_data, tmp_path):
    root = shared_data / "features"
    if not (root / "mopadi_TCGA-AD-6964-01Z-00-DX1" / "features.h5").is_file():
        pytest.skip(f"mopadi files not present under {root}")
    from sae1n.configs import load_experiment
    from sae1n.sae.encode import save_sae_features
    from sae1n.sae.train import train_sae

    cfg = load_experiment(
        "sae",
        "camelyon16_conch_0",
        [
            f"data.feature_dir={root}",
            "data.split_csv_path=null",
            "data.file_type=null",
            f"output_dir={tmp_path / 'sae'}",
            "sae.act_size=512",
            "sae.dict_size_ratio=1",
            "sae.top_k=8",
            "sae.top_k_aux=32",
            "training.num_epochs=1",
            "training.batch_size=128",
            "training.validation_freq=100",
            "training.checkpoint_freq=100",
            "training.num_threads=1",
        ],
    )
    cfg.exp_name = "mopadi"
    exp_dir = train_sae(cfg)
    summary = save_sae_features(exp_dir, root, device="cpu", out_dir=tmp_path / "codes", dense=False)
    assert sorted(summary.encoded) == ["mopadi_TCGA-3X-AAVA-01Z-00-DX1", "mopadi_TCGA-AD-6964-01Z-00-DX1"]
    a = read_bag(tmp_path / "codes" / "sparse_files" / "mopadi_TCGA-AD-6964-01Z-00-DX1.h5", dense=False)
    assert a.sparse.shape == (777, 512) and a.coords[0].tolist() == [10240, 21504]
    # the codes are the SAE applied to the rows the mopadi reader returned
    from scipy import sparse

    from sae1n.sae.checkpoints import find_checkpoint, load_sae
    from sae1n.sae.encode import encode_features

    model = load_sae(find_checkpoint(exp_dir, "best"), device="cpu")
    src = read_bag(root / "mopadi_TCGA-AD-6964-01Z-00-DX1" / "features.h5")
    indptr, indices, values = encode_features(model, src.features, device="cpu")
    want = sparse.csr_matrix((values, indices, indptr), shape=(777, 512))
    np.testing.assert_allclose(a.sparse.toarray(), want.toarray(), atol=1e-6)
    assert a.sparse.nnz > 0
