"""Bad input gets one clear error (exit code 1, the file named, no traceback)
and nothing already written changes."""

from __future__ import annotations

import errno
import logging

import pytest

from sae1n.cli import main

from ..staleness_data import snapshot, write_asap
from .conftest import extract_args


def _err(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return err


# ------------------------------------------------------------------ configs


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["train-sae", "exp=demo", "training.lr=abc"], "training.lr=abc"),
        (["train-sae", "exp=demo", "sae.top_k=abc"], "sae.top_k=abc"),
        (["train-sae", "exp=demo", "exp.training.lr=abc"], "training.lr=abc"),
        (["train-mil", "exp=demo_maxmil", "optimizer.lr=abc"], "optimizer.lr=abc"),
        (["train-mil", "exp=demo_maxmil", "max_epochs=abc"], "max_epochs=abc"),
    ],
)
def test_wrong_typed_config_values(tmp_path, monkeypatch, capsys, argv, needle):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 1
    err = _err(capsys)
    assert needle in err and "expected" in err and ".yaml" in err  # key, value, type, file
    assert list(tmp_path.iterdir()) == []  # nothing was written


def test_hydra_spelling_is_an_alias():
    from sae1n.configs import load_experiment

    assert load_experiment("sae", "demo", ["exp.training.lr=0.5"]).training.lr == 0.5


# ------------------------------------------------------------------ path tricks


def test_evil_slide_id_in_csv_path_is_refused(cohort, tmp_path, capsys):
    csv = tmp_path / "list.csv"
    csv.write_text("slide_id\ntumor_001.tif\n../../../esc/evil.tif\n")
    feat = tmp_path / "a" / "b" / "c" / "feat"
    before = snapshot(tmp_path)
    assert main(extract_args(cohort, feat, "--csv_path", str(csv))) == 1
    err = _err(capsys)
    assert str(csv) in err and "../../../esc/evil.tif" in err
    assert snapshot(tmp_path) == before and not feat.exists()
    assert not any(p.name == "esc" for p in tmp_path.rglob("*"))


def test_evil_ids_in_process_list_split_and_metadata(cohort, tmp_path, capsys):
    from sae1n.datasets import load_metadata, read_split
    from sae1n.errors import InputFileError

    pl = tmp_path / "pl.csv"
    pl.write_text("slide_id,process\n../evil.tif,1\n")
    assert main(["create-patches", "--source", str(cohort["slides"]), "--save_dir", str(tmp_path / "out"), "--process_list", str(pl)]) == 1
    assert str(pl) in _err(capsys) and not (tmp_path / "out").exists()
    split = tmp_path / "splits_0.csv"
    split.write_text("train,val,test\nnormal_001,../../x,test_001\n")
    with pytest.raises(InputFileError, match="splits_0.csv.*'../../x'"):
        read_split(split)
    meta = tmp_path / "m.csv"
    meta.write_text("case_id,slide_id,label,split\na,sub/a,tumor,train\n")
    with pytest.raises(InputFileError, match="m.csv.*'sub/a'"):
        load_metadata(meta)


# ------------------------------------------------------------------ labels


def test_create_splits_with_an_unknown_label(tmp_path, capsys):
    meta = tmp_path / "m.csv"
    rows = [f"{lab}_{i},{lab}_{i},{lab},train" for lab in ("normal", "tumor") for i in range(4)]
    meta.write_text("case_id,slide_id,label,split\n" + "\n".join(rows) + "\nx_1,x_1,Tumr,train\n")
    assert main(["create-splits", "--metadata_path", str(meta), "--output_dir", str(tmp_path / "s"), "--k", "2"]) == 1
    err = _err(capsys)
    assert "m.csv" in err and "Tumr" in err and "normal" in err
    assert not (tmp_path / "s").exists()


def test_annotation_outside_the_slide_warns(cohort, tmp_path, caplog):
    from sae1n.datasets import create_patch_labels

    ann = tmp_path / "ann"
    ann.mkdir()
    write_asap(ann / "tumor_001.xml", [[(90000, 90000), (91000, 90000), (91000, 91000)]])
    with caplog.at_level(logging.WARNING):
        summary = create_patch_labels(cohort["clam"], ann, tmp_path / "labels")
    assert int(summary.set_index("slide_id").loc["tumor_001", "n_tumor"]) == 0
    assert "tumor_001.xml" in caplog.text and "lies outside the patched area" in caplog.text


# ------------------------------------------------------------------ unusable output folders


def test_save_dir_that_is_a_file(cohort, tmp_path, capsys):
    f = tmp_path / "taken"
    f.write_text("keep me")
    assert main(["create-patches", "--source", str(cohort["slides"]), "--save_dir", str(f), "--patch"]) == 1
    assert str(f) in _err(capsys)
    assert main(extract_args(cohort, f)) == 1
    assert str(f) in _err(capsys) and f.read_text() == "keep me"


def test_read_only_save_dir(cohort, small_tmpfs, capsys):
    ro = small_tmpfs("1m", ro=True)
    assert main(["create-patches", "--source", str(cohort["slides"]), "--save_dir", str(ro / "out"), "--patch"]) == 1
    err = _err(capsys)
    assert str(ro / "out") in err and "Read-only file system" in err


def test_read_only_save_dir_simulated(cohort, tmp_path, capsys, monkeypatch):
    """Where no tmpfs can be mounted (or as root, where chmod does not stop writes)."""
    import pathlib

    real = pathlib.Path.write_bytes

    def refuse(self, data):
        if self.parent == tmp_path / "out":
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real(self, data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", refuse)
    assert main(["create-patches", "--source", str(cohort["slides"]), "--save_dir", str(tmp_path / "out"), "--patch"]) == 1
    err = _err(capsys)
    assert str(tmp_path / "out") in err and "Read-only file system" in err


# ------------------------------------------------------------------ disk full


def test_disk_full_during_extract_features_simulated(cohort, tmp_path, capsys, monkeypatch):
    import sae1n.encoders.extract as ex

    real, calls = ex.write_bag, []

    def fill_up(*a, **k):
        calls.append(a[1])
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*a, **k)

    monkeypatch.setattr(ex, "write_bag", fill_up)
    feat = tmp_path / "feat"
    assert main(extract_args(cohort, feat)) == 1
    err = _err(capsys)
    assert err.count("error:") == 1 and str(feat) in err and "No space left" in err
    assert "finished so far are kept" in err
    kept = sorted(p.stem for p in (feat / "h5_files").glob("*.h5"))
    assert kept == [calls[0]]  # the finished slide stays
    monkeypatch.setattr(ex, "write_bag", real)  # space freed: the same command finishes the rest
    assert main(extract_args(cohort, feat)) == 0
    assert "1 skipped" in capsys.readouterr().out


def test_disk_full_on_a_small_tmpfs(cohort, small_tmpfs, capsys):
    fs = small_tmpfs("40k")
    feat = fs / "feat"
    code = main(extract_args(cohort, feat))
    err = _err(capsys)
    if code == 0:
        pytest.skip("the cohort's features fit in the tmpfs")
    assert code == 1 and str(feat) in err and "No space left" in err, err
    from sae1n.io import read_bag

    for h5 in (feat / "h5_files").glob("*.h5"):
        assert read_bag(h5).n > 0  # whatever was kept is whole (atomic writes)
    assert not [p for p in fs.rglob("*") if ".tmp-" in p.name]


# ------------------------------------------------------------------ hostile and broken files


def test_hostile_xml_annotation_is_refused(cohort, tmp_path, capsys):
    ann = tmp_path / "ann"
    ann.mkdir()
    (ann / "tumor_001.xml").write_text(
        '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        '<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>'
        "<ASAP_Annotations>&lol2;</ASAP_Annotations>"
    )
    out = tmp_path / "labels"
    assert main(["patch-labels", "--coords_dir", str(cohort["clam"]), "--annotation_dir", str(ann), "--output_dir", str(out)]) == 1
    err = _err(capsys)
    assert "tumor_001.xml" in err and "not a valid ASAP XML" in err


def test_broken_outputs_are_redone_not_trusted(cohort, tmp_path, capsys):
    feat = tmp_path / "feat"
    assert main(extract_args(cohort, feat)) == 0
    (feat / "pt_files" / "normal_001.pt").write_bytes(b"\x80\x04not a tensor")  # truncated/hostile
    before = (feat / "h5_files" / "test_001.h5").read_bytes()
    capsys.readouterr()
    assert main(extract_args(cohort, feat)) == 0
    assert "1 extracted, 2 skipped" in capsys.readouterr().out
    assert (feat / "h5_files" / "test_001.h5").read_bytes() == before


def test_a_corrupt_slide_is_recorded_and_the_batch_goes_on(cohort, tmp_path):
    import shutil

    from sae1n.wsi import create_patches

    slides = tmp_path / "slides"
    shutil.copytree(cohort["slides"], slides)
    (slides / "broken_001.tif").write_bytes(b"II*\x00garbage")
    df = create_patches(slides, tmp_path / "out", preset=cohort["preset"]).set_index("slide_id")
    assert df.loc["broken_001.tif", "status"] == "failed" and "broken_001.tif" in df.loc["broken_001.tif", "reason"]
    assert (df.drop("broken_001.tif")["status"] == "processed").all()
