"""The paper's data stream for ``compat=paper``: its ``FeatureActivationStore``
as an endless buffered stream (:class:`BufferedStream`), the train / val file
lists as the paper globs them, and the cached per-file loader."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from sae1n.errors import ConfigError, InputFileError


class BufferedStream:
    """The paper's ``FeatureActivationStore`` as an endless stream of rows.

    ``files`` are loaded with ``load(i) -> (n_i, D) float32 tensor``. Each fill
    draws from the global Python ``random`` and torch generators (shared
    with the other stream, in call order, as in the paper). Rows are also
    tracked as indices into the files concatenated in the given order.
    """

    def __init__(self, sizes: Sequence[int], load: Callable[[int], torch.Tensor], buffer_size: int):
        self.sizes = [int(s) for s in sizes]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self.load = load
        self.buffer_size = int(buffer_size)
        self._data: torch.Tensor | None = None
        self._rows: torch.Tensor | None = None
        self._pos = 0
        self.fills = 0

    @property
    def n_rows(self) -> int:
        return int(self.offsets[-1])

    def _fill(self) -> None:
        order = list(range(len(self.sizes)))
        random.shuffle(order)
        pieces, rows, filled = [], [], 0
        while filled < self.buffer_size and order:
            i = order.pop(0)
            data = self.load(i)
            n = data.shape[0]
            needed = self.buffer_size - filled
            start = 0
            if n > needed:
                start = random.randint(0, n - needed)
                data = data[start : start + needed]
                n = needed
            pieces.append(data)
            rows.append(torch.arange(start, start + n, dtype=torch.int64) + int(self.offsets[i]))
            filled += n
        if filled == 0:
            raise InputFileError("(feature files)", "the stream's files hold no rows", "check the split")
        data = torch.cat(pieces)
        perm = torch.randperm(data.shape[0])
        self._data, self._rows = data[perm], torch.cat(rows)[perm]
        self._pos = 0
        self.fills += 1

    def next_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The next ``batch_size`` rows of the stream (possibly across fills) and their row ids."""
        parts, ids, need = [], [], int(batch_size)
        while need:
            if self._data is None or self._pos >= self._data.shape[0]:
                self._fill()
            take = min(need, self._data.shape[0] - self._pos)
            parts.append(self._data[self._pos : self._pos + take])
            ids.append(self._rows[self._pos : self._pos + take])
            self._pos += take
            need -= take
        if len(parts) == 1:
            return parts[0], ids[0]
        return torch.cat(parts), torch.cat(ids)


def _split_files(cfg: DictConfig) -> tuple[list[Path], list[Path]]:
    """Train and val feature files as the paper lists them: sorted glob of
    ``feature_dir/<pt|h5>_files``, filtered to the split's slide ids (ids
    without a file are dropped silently, as the paper does)."""
    from sae1n.datasets.splits import read_split

    data = cfg.data
    ftype = str(data.get("file_type") or "pt")
    if ftype not in ("pt", "h5"):
        raise ConfigError(f"data.file_type must be pt or h5, got {ftype!r}")
    folder = Path(str(data.feature_dir)) / f"{ftype}_files"
    files = sorted(folder.glob(f"*.{ftype}"))
    if not files:
        raise InputFileError(folder, f"no .{ftype} feature files", "check data.feature_dir and data.file_type")
    split_path = data.get("split_csv_path")
    if not split_path:
        return files, []
    split = read_split(split_path)
    sets = {k: {Path(str(s)).stem for s in split.get(k, [])} for k in ("train", "val")}
    train = [f for f in files if f.stem in sets["train"]]
    val = [f for f in files if f.stem in sets["val"]]
    if not train:
        raise InputFileError(split_path, f"no train slide has a file in {folder}", "check the split and data.feature_dir")
    return train, val


def _loader(files: Sequence[Path], h5_key: str) -> tuple[list[int], Callable[[int], torch.Tensor]]:
    cache: dict[int, torch.Tensor] = {}

    def load(i: int) -> torch.Tensor:
        if i not in cache:
            p = files[i]
            if p.suffix == ".h5":
                import h5py

                try:
                    with h5py.File(p, "r") as f:
                        arr = f[h5_key][:]
                except (OSError, KeyError) as exc:
                    raise InputFileError(p, f"cannot read dataset {h5_key!r} ({exc})", "re-extract the features") from exc
                t = torch.from_numpy(np.asarray(arr))
            else:
                try:
                    t = torch.load(p, map_location="cpu", weights_only=True)
                except Exception as exc:  # torch raises many types for corrupt files
                    raise InputFileError(p, f"cannot be read as a tensor ({type(exc).__name__})", "re-extract the features") from exc
                if isinstance(t, Mapping):
                    t = t.get("features")
                if not isinstance(t, torch.Tensor) or t.ndim != 2:
                    raise InputFileError(p, "does not hold an (N, D) feature tensor", "re-extract the features")
            cache[i] = t.to(torch.float32)
        return cache[i]

    sizes = []
    for i, _p in enumerate(files):
        sizes.append(int(load(i).shape[0]))
    return sizes, load

