import os
import subprocess
import sys

import numpy as np
import pytest

from sae1n.io import atomic_path, atomic_write_text, write_bag


def test_success_renames(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "hello")
    assert (tmp_path / "a.txt").read_text() == "hello"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_exception_leaves_no_file_and_keeps_old(tmp_path):
    final = tmp_path / "out.csv"
    final.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(final) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert final.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_suffix_kept_for_format_detection(tmp_path):
    with atomic_path(tmp_path / "img.png") as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path and tmp.name.startswith(".")
        tmp.write_bytes(b"x")


def test_killed_process_leaves_no_final_file(tmp_path):
    """A process killed mid-write (no cleanup runs) never leaves the final name."""
    code = f"""
import os, numpy as np
from sae1n.io import atomic_path
with atomic_path({str(tmp_path / 'big.bin')!r}) as tmp:
    with open(tmp, 'wb') as f:
        f.write(b'x' * 1000)
        f.flush()
        os._exit(9)
"""
    proc = subprocess.run([sys.executable, "-c", code])
    assert proc.returncode == 9
    assert not (tmp_path / "big.bin").exists()
    # the leftover is a hidden temporary that readers ignore
    assert all(p.name.startswith(".big.tmp-") for p in tmp_path.iterdir())


def test_write_bag_crash_mid_h5(tmp_path, monkeypatch):
    import h5py

    real = h5py.File.create_dataset

    def boom(self, name, *a, **k):
        if name == "coords":
            raise OSError("disk full")
        return real(self, name, *a, **k)

    monkeypatch.setattr(h5py.File, "create_dataset", boom)
    with pytest.raises(OSError, match="disk full"):
        write_bag(tmp_path, "s", np.ones((2, 3), np.float32), np.zeros((2, 2)))
    assert not (tmp_path / "h5_files" / "s.h5").exists()
    assert os.listdir(tmp_path / "h5_files") == []


def test_every_atomic_file_gets_the_normal_mode_even_from_writers_using_0600(tmp_path):
    """safetensors writes 0600; SAE and MIL checkpoints must not differ from other outputs."""
    import torch
    from safetensors.torch import save_file

    from sae1n.io.atomic import _FILE_MODE, atomic_path, atomic_write_text

    out = tmp_path / "out"
    with atomic_path(out / "a.safetensors") as tmp:
        save_file({"x": torch.zeros(2)}, str(tmp))
    with atomic_path(out / "b.pt") as tmp:
        torch.save({"x": 1}, tmp)
    atomic_write_text(out / "c.csv", "x\n")
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert modes == {"a.safetensors": _FILE_MODE, "b.pt": _FILE_MODE, "c.csv": _FILE_MODE}
