"""The provenance record and the reuse rule every stage follows."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from sae1n.errors import InputFileError
from sae1n.io.locks import item_lock, remove_stale_temp_files, try_lock
from sae1n.io.provenance import (
    Provenance,
    StaleOutputError,
    check_output,
    plan_outputs,
    provenance_metadata,
    read_provenance,
    write_h5_provenance,
    write_sidecar,
)
from sae1n.io.slide_ids import path_within, validate_slide_id


def _prov(**settings):
    return Provenance.make("test_artifact", 1, settings or {"patch_size": 256})


def test_sidecar_round_trip_and_match(tmp_path):
    out = tmp_path / "a.csv"
    out.write_text("x\n1\n")
    p = _prov(patch_size=256)
    write_sidecar(out, p)
    back = read_provenance(out)
    assert back is not None and back.matches(p)
    assert back.to_dict()["fingerprint"] == p.fingerprint()
    assert not back.matches(_prov(patch_size=128))


def test_h5_and_safetensors_records(tmp_path):
    from safetensors.numpy import save_file

    p = _prov(level=1)
    h5 = tmp_path / "s.h5"
    with h5py.File(h5, "w") as f:
        f["coords"] = np.zeros((2, 2), dtype=np.int64)
        write_h5_provenance(f, p)
    assert read_provenance(h5).matches(p)
    st = tmp_path / "m.safetensors"
    save_file({"w": np.zeros(3, dtype=np.float32)}, str(st), metadata=provenance_metadata(p))
    assert read_provenance(st).matches(p)


def test_differences_name_old_and_new():
    old, new = _prov(patch_size=256, level=1), _prov(patch_size=128, level=1)
    diffs = new.differences(old)
    assert diffs == ["settings.patch_size: 256 -> 128"]
    assert new.differences(None)[0].startswith("no provenance record")


def test_plan_refuses_stale_and_overwrite_recomputes(tmp_path):
    a, b, c = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "c.csv"
    for f in (a, b):
        f.write_text("1\n")
    write_sidecar(a, _prov(patch_size=256))
    write_sidecar(b, _prov(patch_size=128))
    want = _prov(patch_size=128)
    with pytest.raises(StaleOutputError) as err:
        plan_outputs({a: want, b: want, c: want})
    msg = str(err.value)
    assert str(a) in msg and "settings.patch_size: 256 -> 128" in msg and "--overwrite" in msg
    todo, current = plan_outputs({a: want, b: want, c: want}, overwrite=True)
    assert todo == [a, c] and current == [b]
    assert check_output(b, want) is True
    assert check_output(c, want) is False


def test_output_without_record_is_stale(tmp_path):
    a = tmp_path / "legacy.csv"
    a.write_text("1\n")
    with pytest.raises(StaleOutputError, match="no provenance record"):
        check_output(a, _prov())


def test_input_identity_small_by_hash_large_by_stat(tmp_path):
    small = tmp_path / "small.bin"
    small.write_bytes(b"abc")
    p1 = Provenance.make("k", 1, inputs={"x": small})
    os.utime(small, (1, 1))
    assert Provenance.make("k", 1, inputs={"x": small}).matches(p1)  # touch keeps it current
    small.write_bytes(b"abd")
    assert not Provenance.make("k", 1, inputs={"x": small}).matches(p1)
    from sae1n.io.provenance import input_identity

    big = tmp_path / "big.bin"
    big.write_bytes(b"0" * 64)
    ident = input_identity(big, hash_limit=8)
    assert set(ident) == {"path", "size", "mtime_ns"}


def test_lock_is_exclusive_and_dead_owner_is_taken_over(tmp_path):
    first = try_lock(tmp_path, "slide_1")
    assert first is not None
    assert try_lock(tmp_path, "slide_1") is None
    # a lock left by a process that is gone
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    lp = tmp_path / ".slide_2.lock"
    lp.write_text(json.dumps({"pid": pid, "host": __import__("socket").gethostname(), "started": 0}))
    assert try_lock(tmp_path, "slide_2") is not None
    with item_lock(tmp_path, "slide_3") as mine:
        assert mine
        with item_lock(tmp_path, "slide_3") as again:
            assert not again
    assert not (tmp_path / ".slide_3.lock").exists()


def test_leftover_temp_files_of_dead_runs_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    left = tmp_path / f".s1.tmp-{pid}-0123abcd.h5"
    left.write_bytes(b"x")
    live = tmp_path / f".s2.tmp-{os.getpid()}-0123abcd.h5"
    live.write_bytes(b"x")
    removed = remove_stale_temp_files(tmp_path)
    assert removed == [left] and live.exists() and not left.exists()


@pytest.mark.parametrize("bad", ["../../../esc/evil", "/etc/passwd", "a/b", "..", "", "c:\\x"])
def test_slide_ids_that_are_paths_are_refused(bad, tmp_path):
    with pytest.raises(InputFileError, match="not a plain file stem"):
        validate_slide_id(bad, tmp_path / "list.csv")


def test_path_within_refuses_escape(tmp_path):
    assert path_within(tmp_path, "ok.h5") == (tmp_path / "ok.h5").resolve()
    with pytest.raises(InputFileError, match="outside the output folder"):
        path_within(tmp_path, "..", "x.h5")
