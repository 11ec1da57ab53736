import logging
import os

import pandas as pd
import pytest

from sae1n.datasets import create_metadata, load_metadata
from sae1n.errors import ConfigError, InputFileError


def _feature_files(folder, slide_ids):
    h5 = folder / "h5_files"
    h5.mkdir(parents=True, exist_ok=True)
    for sid in slide_ids:
        os.close(os.open(h5 / f"{sid}.h5", os.O_CREAT | os.O_WRONLY))
    return folder


def test_camelyon16_rows_from_file_names_and_annotations(tmp_path, caplog):
    feats = _feature_files(
        tmp_path / "feats",
        ["tumor_002", "normal_001", "test_002", "test_001", "tumor_001", "odd_slide"],
    )
    ann = tmp_path / "ann"
    ann.mkdir()
    (ann / "test_002.xml").touch()
    (ann / "tumor_001.xml").touch()
    with caplog.at_level(logging.WARNING):
        frame = create_metadata("camelyon16", feats, tmp_path / "out", "m.csv", annotation_dir=ann)
    written = pd.read_csv(tmp_path / "out" / "m.csv", dtype=str)
    assert list(written.columns) == ["case_id", "slide_id", "label", "split"]
    assert written.values.tolist() == [
        ["normal_001", "normal_001", "normal", "train"],
        ["test_001", "test_001", "normal", "test"],
        ["test_002", "test_002", "tumor", "test"],
        ["tumor_001", "tumor_001", "tumor", "train"],
        ["tumor_002", "tumor_002", "tumor", "train"],
    ]
    assert frame.attrs["skipped"] == ["odd_slide"]
    assert "odd_slide" in caplog.text


def test_camelyon16_reference_csv_labels_the_test_slides(tmp_path):
    feats = _feature_files(tmp_path / "feats", ["test_001", "test_002", "normal_003"])
    ref = tmp_path / "ref.csv"
    pd.DataFrame({"slide_name": ["test_001", "test_002"], "is_tumor": ["Normal", "Tumor"]}).to_csv(
        ref
    )
    frame = create_metadata("camelyon16", feats / "h5_files", tmp_path, reference_csv=ref)
    assert dict(zip(frame.slide_id, frame.label)) == {
        "normal_003": "normal",
        "test_001": "normal",
        "test_002": "tumor",
    }
    assert (tmp_path / "camelyon16_metadata.csv").is_file()

    pd.DataFrame({"slide_name": ["test_001"], "is_tumor": ["Maybe"]}).to_csv(ref)
    with pytest.raises(InputFileError, match="unknown label 'Maybe'"):
        create_metadata("camelyon16", feats, tmp_path, reference_csv=ref)
    pd.DataFrame({"slide_name": ["test_001"], "is_tumor": ["Tumor"]}).to_csv(ref)
    with pytest.raises(InputFileError, match="test_002 is not listed"):
        create_metadata("camelyon16", feats, tmp_path, reference_csv=ref)
    with pytest.raises(ConfigError, match="needs a label"):
        create_metadata("camelyon16", feats, tmp_path)


def test_panda_rows_keep_provider_and_grade_and_list_missing_slides(tmp_path):
    feats = _feature_files(tmp_path / "feats", ["1e10", "abc", "zzz"])
    csv = tmp_path / "train.csv"
    pd.DataFrame(
        {
            "image_id": ["abc", "1e10", "other"],
            "data_provider": ["radboud", "karolinska", "radboud"],
            "isup_grade": [3, 0, 1],
            "gleason_score": ["4+3", "0+0", "3+3"],
        }
    ).to_csv(csv, index=False)
    frame = create_metadata("panda", feats, tmp_path / "out", "panda.csv", panda_csv=csv)
    written = pd.read_csv(tmp_path / "out" / "panda.csv", dtype=str)
    assert written.values.tolist() == [
        ["1e10", "1e10", "normal", "karolinska", "0"],
        ["abc", "abc", "tumor", "radboud", "3"],
    ]
    assert frame.attrs["skipped"] == ["zzz"]

    pd.DataFrame({"image_id": ["abc"], "isup_grade": ["x"]}).to_csv(csv, index=False)
    with pytest.raises(InputFileError, match="isup_grade is not an integer"):
        create_metadata("panda", feats, tmp_path, panda_csv=csv)
    pd.DataFrame({"image_id": ["abc"]}).to_csv(csv, index=False)
    with pytest.raises(InputFileError, match="missing column"):
        create_metadata("panda", feats, tmp_path, panda_csv=csv)
    with pytest.raises(ConfigError, match="--panda_csv"):
        create_metadata("panda", feats, tmp_path)
    pd.DataFrame({"image_id": ["nothing"], "isup_grade": [1]}).to_csv(csv, index=False)
    with pytest.raises(InputFileError, match="none of the 3 slides"):
        create_metadata("panda", feats, tmp_path, panda_csv=csv)


def test_bad_feature_folder_and_task(tmp_path):
    with pytest.raises(InputFileError, match="does not exist"):
        create_metadata("camelyon16", tmp_path / "nope", tmp_path)
    with pytest.raises(ConfigError, match="unknown task"):
        create_metadata("tcga", tmp_path, tmp_path)


def test_load_metadata_validates(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("case_id,slide_id,label\nc1,s1,tumor\nc2,s2,normal\n")
    frame = load_metadata(path)
    assert frame["split"].tolist() == ["train", "train"]
    path.write_text("case_id,slide_id\nc1,s1\n")
    with pytest.raises(InputFileError, match=r"m.csv: missing column\(s\) \['label'\]"):
        load_metadata(path)
    path.write_text("case_id,slide_id,label\nc1,s1,cancer\n")
    with pytest.raises(InputFileError, match="unknown label"):
        load_metadata(path)
    assert load_metadata(path, labels=None)["label"].tolist() == ["cancer"]
    path.write_text("case_id,slide_id,label\nc1,s1,tumor\nc1,s1,tumor\n")
    with pytest.raises(InputFileError, match="duplicate slide_id"):
        load_metadata(path)
    path.write_text("case_id,slide_id,label\n,s1,tumor\n")
    with pytest.raises(InputFileError, match="blank case_id on line"):
        load_metadata(path)
    with pytest.raises(InputFileError, match="file not found"):
        load_metadata(tmp_path / "missing.csv")


def test_camelyon16_metadata_reproduces_the_paper(tmp_path, reference_dir, shared_data):
    reference = pd.read_csv(reference_dir / "camelyon16_metadata.csv", dtype=str)
    feats = _feature_files(tmp_path / "feats", reference["slide_id"])
    official = shared_data / "metadata" / "camelyon16" / "didsr_test_reference_with_preds.csv"
    create_metadata(
        "camelyon16", feats, tmp_path / "out", "camelyon16_metadata.csv", reference_csv=official
    )
    assert (tmp_path / "out" / "camelyon16_metadata.csv").read_bytes() == (
        reference_dir / "camelyon16_metadata.csv"
    ).read_bytes()

    # The paper's own route: test labels from annotation-file presence.
    ann = tmp_path / "ann"
    ann.mkdir()
    for sid in reference.loc[reference["label"] == "tumor", "slide_id"]:
        (ann / f"{sid}.xml").touch()
    frame = create_metadata("camelyon16", feats, tmp_path / "out2", annotation_dir=ann)
    pd.testing.assert_frame_equal(frame, reference, check_dtype=False)


def test_panda_metadata_reproduces_the_paper(tmp_path, reference_dir, shared_data):
    reference = pd.read_csv(reference_dir / "panda_metadata.csv", dtype=str)
    feats = _feature_files(tmp_path / "feats", reference["slide_id"])
    train_csv = shared_data / "metadata" / "panda" / "panda_train_5kfold.csv"
    frame = create_metadata(
        "panda", feats, tmp_path / "out", "panda_metadata.csv", panda_csv=train_csv
    )
    written = pd.read_csv(tmp_path / "out" / "panda_metadata.csv", dtype=str)
    assert list(written.columns) == [*reference.columns, "isup_grade"]
    pd.testing.assert_frame_equal(written[reference.columns], reference)
    assert frame.attrs["skipped"] == []
