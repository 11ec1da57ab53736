"""Patient-level splits in CLAM's CSV formats, identical to the paper's.

Camelyon16: k-fold cross-validation of the training slides (fold ``i`` is the
validation set of split ``i``, the other folds train) with the official test
set fixed in every split. PANDA: ``repeats`` random ~80/10/10 splits; each
repeat cuts the cases into 10 folds stratified by ``label x data_provider``,
shuffles the fold order with the repeat's seed, and gives 8 folds to train,
then one to val and one to test.

How the splits stay reproducible: the folds come from
:func:`sae1n.datasets.grouping.stratified_group_kfold`, our own re-implementation
of scikit-learn 1.6.1's ``StratifiedGroupKFold(shuffle=True, random_state=seed)``
(the call the paper made), so scikit-learn's version, which changed the
shuffled folds in 1.8, never matters. Its only randomness is NumPy's legacy
``RandomState``, whose stream NumPy guarantees never to change, and its inputs
are put in a fixed order (patients in metadata order, labels and groups sorted
by ``np.unique``). The tests compare all five published Camelyon16 folds file
for file, the published PANDA split, and folds recorded from scikit-learn
1.6.1 itself.

Files per split ``i`` under ``<output_dir>/<task>_<seed>/``: ``splits_<i>.csv``
(columns ``train, val, test``, ragged, blank-padded), ``splits_<i>_bool.csv``
(``slide_id`` plus one boolean column per set) and
``splits_<i>_descriptor.csv`` (slide counts per label for train and val).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from sae1n.datasets.grouping import stratified_group_kfold
from sae1n.datasets.metadata import LABELS, load_metadata
from sae1n.errors import ConfigError, InputFileError
from sae1n.io import atomic_write_csv, validate_slide_id
from sae1n.io.folders import writable_dir
from sae1n.io.provenance import Provenance, check_output, sidecar_path, write_sidecar
from sae1n.io.tables import read_csv

log = logging.getLogger(__name__)

SETS = ("train", "val", "test")
SPLITS_SCHEMA = 1
PANDA_FOLDS = 10


def create_splits(
    metadata_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    task: str = "camelyon16",
    k: int | None = None,
    seed: int = 42,
    repeats: int = 5,
    overwrite: bool = False,
) -> list[Path]:
    """Write the split files for ``task`` and return the ``splits_<i>.csv`` paths.

    ``k`` is the number of folds: 5 by default for camelyon16, 10 for panda
    (``k - 2`` train folds, one val, one test). ``repeats`` applies to panda
    only; repeat ``r`` uses seed ``seed + r``. The folder's provenance
    (``<task>_<seed>.provenance.json`` beside it) records these settings and
    the metadata CSV's hash: a folder made otherwise is refused unless
    ``overwrite``, a current one is reused as it is.
    """
    task = task.lower()
    if task not in ("camelyon16", "panda"):
        raise ConfigError(f"unknown task {task!r}: use camelyon16 or panda")
    k = (5 if task == "camelyon16" else PANDA_FOLDS) if k is None else int(k)
    if k < 2:
        raise ConfigError(f"--k must be >= 2 (got {k})")
    metadata_path = Path(metadata_path)
    frame = load_metadata(metadata_path, labels=LABELS)
    split_dir = Path(output_dir) / f"{task}_{seed}"
    n_splits = k if task == "camelyon16" else repeats
    settings = {"task": task, "k": k, "seed": int(seed)}
    if task == "panda":
        settings["repeats"] = int(repeats)
    prov = Provenance.make("splits", SPLITS_SCHEMA, settings, {"metadata": metadata_path})
    expected = [split_dir / f"splits_{i}.csv" for i in range(n_splits)]
    # an empty or half-deleted folder holds nothing to keep
    if check_output(
        split_dir, prov, overwrite=overwrite, valid=lambda d: any(d.glob("splits_*.csv"))
    ) and all(p.is_file() for p in expected):
        return expected
    if task == "camelyon16":
        splits = _camelyon16_splits(frame, metadata_path, k, seed)
    else:
        if k < 3:
            raise ConfigError(f"panda splits need --k >= 3 folds (train, val and test); got {k}")
        if repeats < 1:
            raise ConfigError(f"--repeats must be >= 1 (got {repeats})")
        splits = _panda_splits(frame, metadata_path, k, seed, repeats)
    labels = sorted(frame["label"].unique())
    writable_dir(split_dir, "--output_dir")
    sidecar_path(split_dir).unlink(missing_ok=True)
    for old in split_dir.glob("splits_*.csv"):  # an earlier run with more folds
        index = old.name.split("_")[1].split(".")[0]
        if index.isdigit() and int(index) >= len(splits):
            old.unlink()
    written = []
    for i, sets in enumerate(splits):
        written.append(write_split(split_dir, i, sets, frame, labels))
    write_sidecar(split_dir, prov)
    return written


def _camelyon16_splits(frame, metadata_path, k, seed):
    unknown = sorted(set(frame["split"]) - {"train", "test"})
    if unknown:
        raise InputFileError(
            metadata_path, f"unknown split value(s) {unknown}", "split must be train or test"
        )
    train = frame[frame["split"] == "train"].reset_index(drop=True)
    test_ids = frame.loc[frame["split"] == "test", "slide_id"].tolist()
    if train.empty:
        raise InputFileError(
            metadata_path, "no slides with split == train", "create it with `sae1n create-metadata`"
        )
    _check_one_value_per_case(train, "label", metadata_path)
    patients = train.drop_duplicates("case_id")
    fold = stratified_group_kfold(
        patients["label"].to_numpy(), patients["case_id"].to_numpy(), k, seed=seed
    )
    fold_of_case = dict(zip(patients["case_id"], fold))
    train_fold = train["case_id"].map(fold_of_case).to_numpy()
    splits = []
    for i in range(k):
        splits.append(
            {
                "train": train.loc[train_fold != i, "slide_id"].tolist(),
                "val": train.loc[train_fold == i, "slide_id"].tolist(),
                "test": list(test_ids),
            }
        )
    return splits


def _panda_splits(frame, metadata_path, k, seed, repeats):
    if "data_provider" not in frame.columns:
        raise InputFileError(
            metadata_path,
            "missing column data_provider",
            "make it with `sae1n create-metadata --task panda`",
        )
    _check_one_value_per_case(frame, "label", metadata_path)
    _check_one_value_per_case(frame, "data_provider", metadata_path)
    cases = frame.groupby("case_id", sort=True).first().reset_index()
    strata = (cases["label"].astype(str) + "||" + cases["data_provider"].astype(str)).to_numpy()
    counts = pd.Series(strata).value_counts()
    if counts.min() < k:
        log.warning(
            "stratum %r has only %d case(s), fewer than the %d folds",
            counts.idxmin(),
            counts.min(),
            k,
        )
    splits = []
    for r in range(repeats):
        rs = seed + r
        fold = stratified_group_kfold(strata, cases["case_id"].to_numpy(), k, seed=rs)
        fold_order = np.arange(k)
        np.random.RandomState(rs).shuffle(fold_order)
        n_train = k - 2
        slide_fold = frame["case_id"].map(dict(zip(cases["case_id"], fold))).to_numpy()
        splits.append(
            {
                "train": frame.loc[np.isin(slide_fold, fold_order[:n_train]), "slide_id"].tolist(),
                "val": frame.loc[slide_fold == fold_order[n_train], "slide_id"].tolist(),
                "test": frame.loc[slide_fold == fold_order[n_train + 1], "slide_id"].tolist(),
            }
        )
    return splits


def _check_one_value_per_case(frame, column, metadata_path):
    per_case = frame.groupby("case_id")[column].nunique()
    bad = per_case[per_case > 1].index.tolist()
    if bad:
        raise InputFileError(
            metadata_path,
            f"case_id(s) with more than one {column}: {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}",
            f"patient-level splits need one {column} per case: fix the case_id or {column} of those slides",
        )


def write_split(
    split_dir: Path, index: int, sets: dict[str, list[str]], frame: pd.DataFrame, labels
) -> Path:
    """Write one split's column, boolean and descriptor CSVs (CLAM formats)."""
    columns = pd.concat([pd.Series(sets[name], name=name, dtype=object) for name in SETS], axis=1)
    path = split_dir / f"splits_{index}.csv"
    atomic_write_csv(path, columns)

    membership = pd.DataFrame(False, index=sorted(set().union(*sets.values())), columns=list(SETS))
    for name in SETS:
        membership.loc[sets[name], name] = True
    membership.index.name = "slide_id"
    atomic_write_csv(split_dir / f"splits_{index}_bool.csv", membership, index=True)

    label_of = dict(zip(frame["slide_id"], frame["label"]))
    descriptor = pd.DataFrame(0, index=list(labels), columns=["train", "val"], dtype=np.int64)
    for name in ("train", "val"):
        for label, n in (
            pd.Series([label_of[s] for s in sets[name]], dtype=object).value_counts().items()
        ):
            descriptor.loc[label, name] = n
    atomic_write_csv(split_dir / f"splits_{index}_descriptor.csv", descriptor, index=True)
    return path


def _suffixes() -> tuple[str, ...]:
    from sae1n.wsi.readers import SLIDE_EXTENSIONS

    # longest first, so ".tiff" wins over ".tif"
    return tuple(sorted({*SLIDE_EXTENSIONS, *FEATURE_SUFFIXES}, key=len, reverse=True))


FEATURE_SUFFIXES = (".h5", ".pt")


def slide_id_of(entry) -> str:
    """Slide id from a split/metadata entry: the name without a slide or feature
    file extension. Only known extensions are removed, so ids with dots (TCGA) survive."""
    name = Path(str(entry).strip()).name
    low = name.lower()
    for suffix in _suffixes():
        if low.endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_split(split_csv: str | os.PathLike) -> dict[str, list[str]]:
    """Slide ids of each set in a split file: ``{"train": [...], "val": [...], "test": [...]}``.

    Reads the column format (``splits_<i>.csv``) or the boolean format
    (``splits_<i>_bool.csv``). ``train`` is required; a missing ``val`` or
    ``test`` column reads as empty. A slide listed in two sets is an error.
    """
    path = Path(split_csv)
    if not path.is_file():
        raise InputFileError(
            path, "split file not found", "run `sae1n create-splits`, or check --split_csv_path"
        )
    frame = read_csv(path, "split file", "re-create it with `sae1n create-splits`")
    if "train" not in frame.columns:
        raise InputFileError(
            path,
            f"missing column 'train' (columns: {', '.join(map(str, frame.columns))})",
            "a split file has columns train, val, test (CLAM format)",
        )
    for name in SETS:  # val/test may be absent (e.g. an SAE split without a test set)
        if name not in frame.columns:
            frame[name] = "False" if "slide_id" in frame.columns else None
    if "slide_id" in frame.columns:  # boolean format
        sets = {}
        for name in SETS:
            flags = frame[name].str.strip().str.lower()
            if not flags.isin(["true", "false"]).all():
                raise InputFileError(
                    path,
                    f"column {name} is not True/False",
                    "use the *_bool.csv written by `sae1n create-splits`",
                )
            sets[name] = frame.loc[flags == "true", "slide_id"].str.strip().tolist()
    else:
        sets = {name: frame[name].dropna().str.strip().tolist() for name in SETS}
        sets = {name: [s for s in ids if s] for name, ids in sets.items()}
    sets = {name: [slide_id_of(validate_slide_id(s, path)) for s in ids] for name, ids in sets.items()}
    seen: dict[str, str] = {}
    for name in SETS:
        for slide in sets[name]:
            if slide in seen:
                raise InputFileError(
                    path,
                    f"slide {slide} is in both {seen[slide]} and {name}",
                    "re-create the split file",
                )
            seen[slide] = name
    return sets
