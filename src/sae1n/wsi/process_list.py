"""CLAM's process list (``process_list_autogen.csv``) for ``create_patches``:
the slide statuses and parameter columns, listing the slides of a source,
building / reading the list, setting cells, and the run's text summary."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from sae1n.errors import ConfigError, InputFileError
from sae1n.wsi.presets import SlideParams
from sae1n.wsi.readers import SLIDE_EXTENSIONS

PROCESS_LIST_NAME = "process_list_autogen.csv"
PROCESSED, ALREADY_EXIST, NO_TISSUE, FAILED_SEG, FAILED, TO_BE_PROCESSED = (
    "processed",
    "already_exist",
    "no_tissue",
    "failed_seg",
    "failed",
    "tbp",
)
PARAM_COLUMNS = (
    "seg_level",
    "sthresh",
    "mthresh",
    "close",
    "use_otsu",
    "keep_ids",
    "exclude_ids",
    "a_t",
    "a_h",
    "max_n_holes",
    "vis_level",
    "line_thickness",
    "use_padding",
    "contour_fn",
)
EXTRA_COLUMNS = ("reason", "n_contours", "n_patches", "level0_mpp")

BUSY = "busy"  # another process holds the slide's lock
WORK_STATUSES = (PROCESSED, NO_TISSUE, FAILED_SEG, FAILED)


def list_slides(source: str | os.PathLike) -> list[str]:
    """Slide file names in ``source`` (sorted), or the one file ``source`` names."""
    source = Path(source)
    if source.is_file():
        return [source.name]
    if not source.is_dir():
        raise InputFileError(source, "slide folder not found", "check --source")
    names = sorted(
        p.name for p in source.iterdir() if p.is_file() and p.suffix.lower() in SLIDE_EXTENSIONS
    )
    if not names:
        raise InputFileError(
            source,
            f"no slide files ({', '.join(SLIDE_EXTENSIONS)}) in this folder",
            "check --source",
        )
    return names


def initialize_process_list(slides, defaults: SlideParams) -> pd.DataFrame:
    """CLAM's process list: given slide names, or a DataFrame with a
    ``slide_id`` column whose missing parameter columns/cells take ``defaults``."""
    default_row = defaults.as_row()
    if isinstance(slides, pd.DataFrame):
        df = slides.copy()
        if "slide_id" not in df.columns:
            raise ConfigError(
                "the process list needs a 'slide_id' column (slide file names, e.g. slide_1.svs)"
            )
        df["slide_id"] = df["slide_id"].astype(str)
    else:
        df = pd.DataFrame({"slide_id": [str(s) for s in slides]})
    n = len(df)
    fill = {"process": 1, "status": TO_BE_PROCESSED, **default_row}
    for key, value in fill.items():
        if key not in df.columns:
            df[key] = [value] * n
        else:
            missing = df[key].isna()
            if missing.any():
                df[key] = df[key].astype(object)
                df.loc[missing, key] = value
    for key in EXTRA_COLUMNS:
        if key not in df.columns:
            df[key] = [""] * n if key == "reason" else [np.nan] * n
    for key in ("n_contours", "n_patches"):
        df[key] = pd.to_numeric(df[key], errors="coerce").astype("Int64")
    df["reason"] = df["reason"].fillna("").astype(object)
    df["status"] = df["status"].astype(object)
    return df


def read_process_list(
    path: str | os.PathLike, save_dir: str | os.PathLike | None = None
) -> pd.DataFrame:
    """Read a process list CSV (given path, else relative to ``save_dir`` as CLAM does)."""
    p = Path(path)
    if not p.is_file() and save_dir is not None and (Path(save_dir) / p).is_file():
        p = Path(save_dir) / p
    from sae1n.io.tables import read_csv

    if not p.is_file():
        raise InputFileError(
            p, "process list not found", "give the CSV path (or a name inside --save_dir)"
        )
    return read_csv(p, "process list", "use the format of process_list_autogen.csv", strings=False)



def set_cells(df: pd.DataFrame, idx, **values) -> None:
    for key, value in values.items():
        if key not in df.columns:
            df[key] = np.nan
        if isinstance(value, str) and df[key].dtype != object:
            df[key] = df[key].astype(object)
        df.at[idx, key] = value


def summarize(df: pd.DataFrame) -> tuple[str, bool]:
    """A short text summary of a process list, and whether every slide run failed."""
    counts = df["status"].value_counts()
    done = df["status"].isin([PROCESSED, ALREADY_EXIST])
    n_patches = pd.to_numeric(df.loc[done, "n_patches"], errors="coerce").fillna(0).sum()
    lines = [
        f"{len(df)} slide(s): "
        + ", ".join(f"{k} {v}" for k, v in counts.items())
        + f"; {int(n_patches)} patches in patches/"
    ]
    failed = df[df["status"].isin([FAILED, FAILED_SEG, NO_TISSUE])]
    for _, r in failed.iterrows():
        lines.append(f"  {r['slide_id']}: {r['status']}: {r['reason']}")
    ran = df[df["status"] != TO_BE_PROCESSED]
    all_failed = len(ran) > 0 and bool(ran["status"].isin([FAILED, FAILED_SEG]).all())
    return "\n".join(lines), all_failed
