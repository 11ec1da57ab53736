"""One slide's patches in memory (:class:`SlideData`: coords, patch side,
codes, with column / row / box lookups) and the bounded :class:`LRU` cache that
keeps the opened slides and rendered tiles of ``sae1n browse``."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np


class LRU:
    """A small thread-safe LRU cache bounded by a total ``cost`` (bytes or items)."""

    def __init__(self, budget: float):
        self.budget = float(budget)
        self._d: OrderedDict = OrderedDict()
        self._cost = 0.0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key):
        with self._lock:
            if key in self._d:
                self._d.move_to_end(key)
                self.hits += 1
                return self._d[key][0]
            self.misses += 1
            return None

    def put(self, key, value, cost: float = 1.0):
        with self._lock:
            if key in self._d:
                self._cost -= self._d.pop(key)[1]
            self._d[key] = (value, float(cost))
            self._cost += cost
            while self._cost > self.budget and len(self._d) > 1:
                _, (_, c) = self._d.popitem(last=False)
                self._cost -= c
        return value

    def __len__(self):
        return len(self._d)


@dataclass
class SlideData:
    """One slide's patches: level-0 top-left coords, patch side, and codes."""

    slide_id: str
    coords: np.ndarray
    patch_size: int
    codes: object  # scipy CSR matrix or dense (N, D) array
    attrs: dict = field(default_factory=dict)
    _csc: object = None
    # (order by x, sorted x) of the patches, built on first use; one attribute
    # so that another server thread never sees half of it
    _x_index: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def n(self) -> int:
        return int(self.coords.shape[0])

    def column(self, unit: int) -> np.ndarray:
        """Activations of ``unit`` over the patches, float32 (N,)."""
        from scipy import sparse

        if sparse.issparse(self.codes):
            if self._csc is None:
                self._csc = sparse.csc_matrix(self.codes)
            col = self._csc[:, [int(unit)]].toarray()[:, 0]
        else:
            col = np.asarray(self.codes[:, int(unit)])
        return np.asarray(col, dtype=np.float32)

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(neuron ids, activations) of patch ``i``, nonzero entries only."""
        from scipy import sparse

        if sparse.issparse(self.codes):
            r = self.codes.getrow(int(i))
            return np.asarray(r.indices), np.asarray(r.data, dtype=np.float64)
        v = np.asarray(self.codes[int(i)], dtype=np.float64)
        nz = np.nonzero(v)[0]
        return nz, v[nz]

    def in_box(self, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
        """Indices of patches whose square meets the level-0 box [x0, x1) x [y0, y1)."""
        if self._x_index is None:
            order = np.argsort(self.coords[:, 0], kind="stable")
            self._x_index = (order, np.asarray(self.coords[order, 0]))
        order, sorted_x = self._x_index
        lo = np.searchsorted(sorted_x, x0 - self.patch_size, side="right")
        hi = np.searchsorted(sorted_x, x1, side="left")
        idx = order[lo:hi]
        y = self.coords[idx, 1]
        return idx[(y > y0 - self.patch_size) & (y < y1)]

    def patch_index(self, x: int, y: int) -> int | None:
        """Index of the patch whose top-left corner is exactly (x, y), else None."""
        hit = np.nonzero((self.coords[:, 0] == int(x)) & (self.coords[:, 1] == int(y)))[0]
        return int(hit[0]) if hit.size else None

    def patch_at(self, x: float, y: float) -> int | None:
        """Index of a patch containing the level-0 point (x, y) (the first found), else None."""
        idx = self.in_box(x, y, x + 1, y + 1)
        c = self.coords[idx]
        inside = (c[:, 0] <= x) & (x < c[:, 0] + self.patch_size) & (c[:, 1] <= y) & (y < c[:, 1] + self.patch_size)
        idx = idx[inside]
        return int(idx[0]) if idx.size else None

