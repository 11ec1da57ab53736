"""CLAM segmentation/patching presets and per-slide parameters.

A preset is a one-row CSV with CLAM's columns (``seg_level, sthresh, mthresh,
close, use_otsu, a_t, a_h, max_n_holes, vis_level, line_thickness,
white_thresh, black_thresh, use_padding, contour_fn, keep_ids,
exclude_ids``). ``bwh_biopsy``, ``bwh_resection`` and ``tcga`` ship with
sae1n; any CSV path in the same format works too.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sae1n.errors import ConfigError, InputFileError

log = logging.getLogger(__name__)

PRESET_DIR = Path(__file__).resolve().parents[1] / "configs" / "presets"
CONTOUR_FNS = ("four_pt", "four_pt_hard", "center", "basic")


@dataclass(frozen=True)
class SlideParams:
    """Segmentation, filtering, visualisation and patching parameters of one
    slide (the per-slide columns of CLAM's process list).

    ``a_t``/``a_h`` are areas in units of 512x512 level-0 tiles; ``seg_level``
    and ``vis_level`` -1 mean "the level closest to 64x downsample";
    ``keep_ids``/``exclude_ids`` are contour indices (empty = none)."""

    seg_level: int = -1
    sthresh: int = 8
    mthresh: int = 7
    close: int = 4
    use_otsu: bool = False
    keep_ids: tuple[int, ...] = ()
    exclude_ids: tuple[int, ...] = ()
    a_t: float = 100.0
    a_h: float = 16.0
    max_n_holes: int = 8
    vis_level: int = -1
    line_thickness: int = 250
    use_padding: bool = True
    contour_fn: str = "four_pt"

    def __post_init__(self):
        if self.contour_fn not in CONTOUR_FNS:
            raise ConfigError(
                f"contour_fn {self.contour_fn!r} is not one of {', '.join(CONTOUR_FNS)}"
            )
        if self.mthresh < 1 or self.mthresh % 2 == 0:
            raise ConfigError(
                f"mthresh (median blur size) must be an odd number >= 1, got {self.mthresh}"
            )
        if not 0 <= self.sthresh <= 255:
            raise ConfigError(f"sthresh must be in [0, 255], got {self.sthresh}")
        if self.close < 0 or self.max_n_holes < 0 or self.a_t < 0 or self.a_h < 0:
            raise ConfigError("close, max_n_holes, a_t and a_h must be >= 0")

    @classmethod
    def from_mapping(
        cls, row: Mapping, defaults: SlideParams | None = None, where: str = ""
    ) -> SlideParams:
        """Parameters from a CSV row / dict; missing or empty cells take ``defaults``."""
        base = defaults or cls()
        values = {}
        for field in dataclasses.fields(cls):
            raw = row.get(field.name, None)
            if _is_blank(raw):
                values[field.name] = getattr(base, field.name)
                continue
            try:
                values[field.name] = _PARSERS[field.name](raw)
            except (TypeError, ValueError) as exc:
                raise ConfigError(
                    f"{where}column {field.name!r}: cannot read {raw!r} ({exc})"
                ) from exc
        return cls(**values)

    def as_row(self) -> dict:
        """The CLAM process-list columns of these parameters."""
        row = dataclasses.asdict(self)
        row["keep_ids"] = _format_ids(self.keep_ids)
        row["exclude_ids"] = _format_ids(self.exclude_ids)
        return row


def _is_blank(v) -> bool:
    return (
        v is None
        or (isinstance(v, float) and math.isnan(v))
        or (isinstance(v, str) and v.strip() == "")
    )


def _parse_bool(v) -> bool:
    if isinstance(v, str):
        s = v.strip().lower()
        if s in ("true", "1", "yes", "y", "t"):
            return True
        if s in ("false", "0", "no", "n", "f"):
            return False
        raise ValueError("expected TRUE or FALSE")
    return bool(v)


def _parse_int(v) -> int:
    f = float(v)
    if f != int(f):
        raise ValueError("expected an integer")
    return int(f)


def _parse_ids(v) -> tuple[int, ...]:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return (_parse_int(v),)
    s = str(v).strip()
    if s.lower() in ("none", "[]", ""):
        return ()
    return tuple(_parse_int(p) for p in s.strip("[]()").replace(";", ",").split(",") if p.strip())


def _format_ids(ids: tuple[int, ...]) -> str:
    return ",".join(str(i) for i in ids) if ids else "none"


_PARSERS = {
    "seg_level": _parse_int,
    "sthresh": _parse_int,
    "mthresh": _parse_int,
    "close": _parse_int,
    "use_otsu": _parse_bool,
    "keep_ids": _parse_ids,
    "exclude_ids": _parse_ids,
    "a_t": float,
    "a_h": float,
    "max_n_holes": _parse_int,
    "vis_level": _parse_int,
    "line_thickness": _parse_int,
    "use_padding": _parse_bool,
    "contour_fn": lambda v: str(v).strip(),
}


def builtin_presets() -> list[str]:
    """Names of the presets shipped with sae1n."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.csv"))


def load_preset(preset: str | os.PathLike | None) -> SlideParams:
    """Parameters of a preset: a built-in name (``bwh_biopsy`` or
    ``bwh_biopsy.csv``) or a CSV path in CLAM's format. A path that does not
    exist but names a built-in (e.g. ``.../CLAM/presets/bwh_biopsy.csv``)
    falls back to the built-in. ``None`` gives CLAM's script defaults."""
    if preset is None or str(preset) == "":
        return SlideParams()
    path = Path(preset)
    name = path.name[: -len(".csv")] if path.name.endswith(".csv") else path.name
    builtin = PRESET_DIR / f"{name}.csv"
    if path.suffix == ".csv" and path.is_file():
        return _read_preset_csv(path)
    if builtin.is_file():
        if len(path.parts) > 1:
            log.warning(
                "preset %s not found; using sae1n's built-in preset %r (same values as CLAM's)",
                path,
                name,
            )
        return _read_preset_csv(builtin)
    raise ConfigError(
        f"unknown preset {str(preset)!r}: give a CSV file in CLAM's preset format or one of {', '.join(builtin_presets())}"
    )


def _read_preset_csv(path: Path) -> SlideParams:
    import pandas as pd

    try:
        df = pd.read_csv(path, keep_default_na=False, dtype=str)
    except Exception as exc:
        raise InputFileError(
            path,
            f"cannot be read as a preset CSV ({exc})",
            "use CLAM's preset format: a header row and one row of values",
        ) from exc
    if len(df) < 1:
        raise InputFileError(path, "preset has no row of values", "add one row under the header")
    unknown = [
        c for c in df.columns if c not in _PARSERS and c not in ("white_thresh", "black_thresh")
    ]
    if unknown:
        raise InputFileError(
            path,
            f"unknown preset column(s) {unknown}",
            f"use CLAM's columns: {', '.join(_PARSERS)}",
        )
    try:
        return SlideParams.from_mapping(df.iloc[0].to_dict())
    except ConfigError as exc:
        raise InputFileError(path, str(exc), "fix the value in the preset CSV") from exc
