import os
import subprocess
import sys
import time

import numpy as np
import pytest

from sae1n.errors import InputFileError
from sae1n.io import feature_paths, open_packed_store, write_bag


def _cohort(root, sizes=(5, 0, 9), d=6):
    rng = np.random.default_rng(0)
    data = {}
    for i, n in enumerate(sizes):
        f = rng.normal(size=(n, d)).astype(np.float32)
        c = rng.integers(0, 1000, (n, 2))
        write_bag(root, f"s{i}", f, c)
        data[f"s{i}"] = (f, c)
    return data


def test_round_trip(tmp_path):
    data = _cohort(tmp_path / "feats")
    store = open_packed_store(feature_paths(tmp_path / "feats"), tmp_path / "store")
    assert len(store) == 14 and store.dim == 6
    for sid, (f, c) in data.items():
        np.testing.assert_array_equal(store.slide(sid), f)
        np.testing.assert_array_equal(store.coords[store.rows(sid)], c)
    idx = np.array([13, 0, 7, 7])
    np.testing.assert_array_equal(store.gather(idx), np.asarray(store.features)[idx])
    assert isinstance(store.features, np.memmap)


def test_float16(tmp_path):
    data = _cohort(tmp_path / "feats")
    store = open_packed_store(feature_paths(tmp_path / "feats"), tmp_path / "store", dtype="float16")
    assert store.features.dtype == np.float16
    np.testing.assert_allclose(store.slide("s2"), data["s2"][0], atol=1e-2)


def test_reuse_without_rebuild_then_rebuild_on_change(tmp_path):
    _cohort(tmp_path / "feats")
    paths = feature_paths(tmp_path / "feats")
    open_packed_store(paths, tmp_path / "store")
    mtime = (tmp_path / "store" / "features.npy").stat().st_mtime_ns
    time.sleep(0.01)
    again = open_packed_store(paths, tmp_path / "store")
    assert (tmp_path / "store" / "features.npy").stat().st_mtime_ns == mtime
    assert len(again) == 14
    # change one input: the store is rebuilt with the new rows
    time.sleep(0.01)
    write_bag(tmp_path / "feats", "s0", np.full((3, 6), 7.0, np.float32), np.zeros((3, 2)))
    rebuilt = open_packed_store(feature_paths(tmp_path / "feats"), tmp_path / "store")
    assert len(rebuilt) == 12
    np.testing.assert_array_equal(rebuilt.slide("s0"), 7.0)


def test_dim_mismatch_names_file(tmp_path):
    _cohort(tmp_path / "feats")
    write_bag(tmp_path / "feats", "zz", np.ones((2, 9), np.float32), np.zeros((2, 2)))
    with pytest.raises(InputFileError, match="zz.h5.*dimension 9"):
        open_packed_store(feature_paths(tmp_path / "feats"), tmp_path / "store")
    assert not (tmp_path / "store").exists()


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_DATA semantics are Linux-specific")
def test_store_larger_than_memory_cap_reads_through_memmap(tmp_path):
    """A ~200 MB store is read chunk by chunk in a process whose private memory
    is capped at ~64 MB above its start; loading it whole fails under the same cap."""
    rows, d = 200_000, 256  # 204.8 MB float32
    feats = np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype=np.float32, shape=(rows, d))
    for a in range(0, rows, 50_000):
        feats[a : a + 50_000] = np.arange(a, a + 50_000, dtype=np.float32)[:, None]
    feats.flush()
    del feats
    from sae1n.io.store import PackedStore

    root = tmp_path / "store"
    root.mkdir()
    os.replace(tmp_path / "big.npy", root / "features.npy")
    np.save(root / "coords.npy", np.zeros((rows, 2), np.int64))
    import json

    (root / "store.json").write_text(json.dumps({"fingerprint": "x", "slide_ids": ["s"], "offsets": [0, rows]}))
    assert len(PackedStore.open(root)) == rows
    code = f"""
import resource, numpy as np
from sae1n.io.store import PackedStore
store = PackedStore.open({str(root)!r})
def data_size():
    for line in open('/proc/self/status'):
        if line.startswith('VmData:'):
            return int(line.split()[1]) * 1024
cap = data_size() + 64 * 2**20
resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
total = 0.0
for chunk in store.iter_chunks(8192):
    total += float(chunk[:, 0].sum(dtype=np.float64))
print(total)
try:
    np.load({str(root / 'features.npy')!r})
    print('LOADED')
except MemoryError:
    print('MEMORYERROR')
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    total_line, load_line = out.stdout.split()
    assert float(total_line) == pytest.approx(rows * (rows - 1) / 2)
    assert load_line == "MEMORYERROR"


def _corrupt(path, offset, keep_mtime=False):
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size


@pytest.mark.parametrize("keep_mtime", [False, True])
def test_corrupted_store_of_the_same_size_is_detected_and_rebuilt(tmp_path, caplog, keep_mtime):
    import logging

    from sae1n.io.store import verify_store

    data = _cohort(tmp_path / "feats", sizes=(3000, 0, 2000), d=16)  # ~320 KB of features
    paths = feature_paths(tmp_path / "feats")
    store = open_packed_store(paths, tmp_path / "store")
    assert verify_store(tmp_path / "store") == [] and verify_store(tmp_path / "store", full=True) == []
    del store
    feats = tmp_path / "store" / "features.npy"
    # the last byte is always in a sampled block; a byte elsewhere changes the mtime
    _corrupt(feats, feats.stat().st_size - 1 if keep_mtime else feats.stat().st_size // 2 + 7, keep_mtime)
    problems = verify_store(tmp_path / "store")
    assert problems and problems[0].startswith("features.npy")
    with caplog.at_level(logging.WARNING):
        store = open_packed_store(paths, tmp_path / "store")
    assert "is damaged" in caplog.text and "rebuilding" in caplog.text
    for sid, (f, _) in data.items():
        np.testing.assert_array_equal(store.slide(sid), f)  # rebuilt from the bags
    assert verify_store(tmp_path / "store") == []


def test_full_verification_finds_damage_the_sample_misses(tmp_path):
    from sae1n.io.store import CHECK_BLOCK_BYTES, verify_store

    _cohort(tmp_path / "feats", sizes=(80000,), d=16)  # 5.1 MB: the sampled blocks leave gaps
    open_packed_store(feature_paths(tmp_path / "feats"), tmp_path / "store")
    feats = tmp_path / "store" / "features.npy"
    _corrupt(feats, CHECK_BLOCK_BYTES + 100, keep_mtime=True)  # between two sampled blocks
    assert verify_store(tmp_path / "store") == []  # the cheap check's documented limit
    assert verify_store(tmp_path / "store", full=True) == ["features.npy: full hash differs"]
