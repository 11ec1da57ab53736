import pandas as pd
import pytest

from sae1n.errors import ConfigError, InputFileError
from sae1n.wsi.presets import SlideParams, builtin_presets, load_preset

CLAM_COLUMNS = "seg_level,sthresh,mthresh,close,use_otsu,a_t,a_h,max_n_holes,vis_level,line_thickness,white_thresh,black_thresh,use_padding,contour_fn,keep_ids,exclude_ids"


def test_builtins_have_clam_columns_and_values():
    assert builtin_presets() == ["bwh_biopsy", "bwh_resection", "tcga"]
    p = load_preset("bwh_biopsy")
    assert (p.seg_level, p.sthresh, p.mthresh, p.close, p.use_otsu) == (-1, 15, 11, 2, False)
    assert (p.a_t, p.a_h, p.max_n_holes, p.use_padding, p.contour_fn) == (1, 1, 2, True, "four_pt")
    assert (p.keep_ids, p.exclude_ids, p.line_thickness) == ((), (), 50)
    assert load_preset("tcga").sthresh == 8 and load_preset("bwh_resection").a_t == 100
    from sae1n.wsi.presets import PRESET_DIR

    for name in builtin_presets():
        assert (PRESET_DIR / f"{name}.csv").read_text().splitlines()[0] == CLAM_COLUMNS


def test_name_with_csv_and_missing_clam_path_fall_back(caplog):
    assert load_preset("bwh_biopsy.csv") == load_preset("bwh_biopsy")
    with caplog.at_level("WARNING"):
        assert load_preset("/nowhere/CLAM/presets/tcga.csv") == load_preset("tcga")
    assert "built-in" in caplog.text


def test_custom_csv_and_defaults(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text(CLAM_COLUMNS + '\n2,20,5,0,TRUE,3,0.5,1,-1,10,5,50,FALSE,center,"0,2",none\n')
    p = load_preset(path)
    assert (p.seg_level, p.sthresh, p.mthresh, p.use_otsu, p.a_h, p.use_padding, p.contour_fn) == (
        2,
        20,
        5,
        True,
        0.5,
        False,
        "center",
    )
    assert (
        p.keep_ids == (0, 2)
        and p.as_row()["keep_ids"] == "0,2"
        and p.as_row()["exclude_ids"] == "none"
    )
    assert load_preset(None) == SlideParams()  # CLAM's script defaults
    assert SlideParams().a_t == 100 and SlideParams().sthresh == 8


def test_bad_presets(tmp_path):
    with pytest.raises(ConfigError, match="bwh_biopsy"):
        load_preset("no_such_preset")
    bad = tmp_path / "bad.csv"
    bad.write_text("seg_level,sthresh,contour_fn\n-1,15,triangle\n")
    with pytest.raises(InputFileError, match="contour_fn"):
        load_preset(bad)
    odd = tmp_path / "odd.csv"
    odd.write_text("seg_level,mthresh,colour\n-1,11,red\n")
    with pytest.raises(InputFileError, match="colour"):
        load_preset(odd)
    with pytest.raises(ConfigError, match="mthresh"):
        SlideParams(mthresh=4)


def test_from_mapping_fills_blanks_and_reports_bad_cells():
    row = pd.Series(
        {
            "sthresh": float("nan"),
            "close": "3",
            "use_otsu": "False",
            "exclude_ids": "1",
            "keep_ids": "none",
        }
    ).to_dict()
    p = SlideParams.from_mapping(row, load_preset("bwh_biopsy"))
    assert (p.sthresh, p.close, p.use_otsu, p.exclude_ids) == (15, 3, False, (1,))
    with pytest.raises(ConfigError, match="max_n_holes"):
        SlideParams.from_mapping({"max_n_holes": "lots"})
