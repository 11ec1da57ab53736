"""The active latents of a TopK / BatchTopK / threshold SAE as
:class:`SparseCodes` (row-major CSR entries), selected exactly: the BatchTopK
selection first keeps every value above a cheap lower bound of the batch's
k·B-th value, checks that at least k·B values passed (so the true top k·B set
lies inside), and lowers the bound (down to the full matrix) when the check
fails. On CUDA (``sync_free``) all shapes stay static so no step waits for the
device."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from sae1n.sae.threads import all_threads

# A safety factor below the last batch's k·B-th value: the next batch's value is
# almost always above it, so one pass over the pre-activations finds the candidates.
_HINT_MARGIN = 0.9

@dataclass
class SparseCodes:
    """Selected entries of a (n_rows, n_cols) matrix in row-major order.

    ``vals`` are pre-activation values (ReLU is applied by the caller).
    """

    rows: torch.Tensor
    cols: torch.Tensor
    vals: torch.Tensor
    n_rows: int
    n_cols: int
    positive: bool = False  # every value is known to be > 0 (no ReLU zeros)
    _crow: torch.Tensor | None = field(default=None, repr=False)
    _col_order: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)

    @property
    def nnz(self) -> int:
        return int(self.rows.numel())

    def crow(self) -> torch.Tensor:
        """CSR row pointer (n_rows + 1,)."""
        if self._crow is None:
            self._crow = _pointer(self.rows, self.n_rows)
        return self._crow

    def col_order(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(permutation grouping entries by column, column pointer (n_cols + 1,))."""
        if self._col_order is None:
            perm = _stable_argsort_small_ints(self.cols, self.n_cols)
            self._col_order = (perm, _pointer(self.cols.index_select(0, perm), self.n_cols))
        return self._col_order

    def to_csr(self, values: torch.Tensor | None = None) -> torch.Tensor:
        """A torch sparse CSR tensor with ``values`` (default ``vals``)."""
        v = self.vals if values is None else values
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(
                self.crow(), self.cols, v, (self.n_rows, self.n_cols), check_invariants=False
            )

    @staticmethod
    def empty(n_rows: int, n_cols: int, like: torch.Tensor) -> SparseCodes:
        z = torch.zeros(0, dtype=torch.int64, device=like.device)
        return SparseCodes(
            z, z.clone(), torch.zeros(0, dtype=like.dtype, device=like.device), n_rows, n_cols
        )

    @staticmethod
    def from_flat(flat: torch.Tensor, pre: torch.Tensor, *, sort: bool = True) -> SparseCodes:
        """Entries given as flat indices into ``pre`` (B, F)."""
        n_rows, n_cols = pre.shape
        if sort:
            flat = torch.sort(flat).values
        vals = pre.reshape(-1).index_select(0, flat)
        return SparseCodes(flat // n_cols, flat % n_cols, vals, n_rows, n_cols)

    @staticmethod
    def cat(a: SparseCodes, b: SparseCodes) -> SparseCodes:
        """Concatenate two entry lists of the same matrix (order: a then b)."""
        return SparseCodes(
            torch.cat([a.rows, b.rows]),
            torch.cat([a.cols, b.cols]),
            torch.cat([a.vals, b.vals]),
            a.n_rows,
            a.n_cols,
        )


def _pointer(sorted_keys: torch.Tensor, n: int) -> torch.Tensor:
    """CSR-style pointer (n + 1,) of sorted integer keys in [0, n) (no device sync)."""
    bounds = torch.arange(n + 1, dtype=sorted_keys.dtype, device=sorted_keys.device)
    return torch.searchsorted(sorted_keys, bounds)


def _stable_argsort_small_ints(keys: torch.Tensor, bound: int) -> torch.Tensor:
    """Stable argsort of integers in [0, bound)."""
    if keys.device.type == "cpu" and bound <= np.iinfo(np.int16).max:
        # NumPy's stable sort of 16-bit integers is a radix sort: several times faster here
        order = np.argsort(keys.numpy().astype(np.int16), kind="stable")
        return torch.from_numpy(order.astype(np.int64, copy=False))
    return torch.argsort(keys, stable=True)


# ----------------------------------------------------------------------------- selection


@torch.no_grad()
def batch_topk_codes(
    pre: torch.Tensor, k_total: int, hint: float | None = None, *, sync_free: bool = False
) -> tuple[SparseCodes, float | None]:
    """The ``k_total`` largest entries of ``pre`` over the whole batch (exact).

    Returns the codes (positive entries only unless ``sync_free``) and a hint
    for the next call. ``hint`` is a lower bound guess of the k_total-th value;
    it only affects speed, never the result.
    """
    n = pre.numel()
    k_total = min(int(k_total), n)
    flat_pre = pre.reshape(-1)
    if sync_free:
        idx = torch.topk(flat_pre, k_total, sorted=False).indices
        return SparseCodes.from_flat(idx, pre), None
    if k_total == 0:
        return SparseCodes.empty(*pre.shape, like=pre), hint
    bound = hint if hint is not None and math.isfinite(hint) and hint > 0 else None
    mask = torch.empty(pre.shape, dtype=torch.bool, device=pre.device)
    retries = 1
    while True:
        with all_threads():
            torch.gt(pre, 0.0 if bound is None else bound, out=mask)
            cand = mask.reshape(-1).nonzero().squeeze(1)  # row-major order
        count = int(cand.numel())
        if count >= k_total or bound is None:
            break
        # check failed: fewer than k_total values above the bound; lower it
        # once, then fall back to every positive value
        bound, retries = (bound * 0.5 if retries else None), retries - 1
    cand_vals = flat_pre.index_select(0, cand)
    if count > k_total:
        kth = torch.topk(cand_vals, k_total, sorted=False).values.min()
        keep = (cand_vals >= kth).nonzero().squeeze(1)
        if keep.numel() != k_total:  # ties at the k-th value: pick exactly k_total
            keep = torch.sort(torch.topk(cand_vals, k_total, sorted=False).indices).values
        cand, cand_vals = cand.index_select(0, keep), cand_vals.index_select(0, keep)
        kth = float(kth)
    else:  # at most k_total positive values: all of them are selected (the rest are ReLU zeros)
        kth = float(cand_vals.min()) if count else 0.0
    codes = SparseCodes(
        cand // pre.shape[1],
        cand % pre.shape[1],
        cand_vals,
        pre.shape[0],
        pre.shape[1],
        positive=True,
    )
    return codes, (kth * _HINT_MARGIN if kth > 0 else None)


@torch.no_grad()
def row_topk_codes(pre: torch.Tensor, k: int, *, sync_free: bool = False) -> SparseCodes:
    """The ``k`` largest entries of every row (TopK SAE)."""
    n_rows, n_cols = pre.shape
    k = min(int(k), n_cols)
    idx = torch.topk(pre, k, dim=1, sorted=False).indices
    flat = (idx + torch.arange(n_rows, device=pre.device).unsqueeze(1) * n_cols).reshape(-1)
    codes = SparseCodes.from_flat(flat, pre)
    return codes if sync_free else positive_only(codes)


@torch.no_grad()
def threshold_codes(pre: torch.Tensor, threshold: torch.Tensor | float) -> SparseCodes:
    """Entries with ``pre > max(threshold, 0)``; ``threshold`` may be a scalar
    or per-column (F,)."""
    if isinstance(threshold, torch.Tensor):
        thr = threshold.clamp(min=0)
        thr = thr if thr.ndim == 0 else thr.unsqueeze(0)
    else:
        thr = max(float(threshold), 0.0)
    with all_threads():
        flat = (pre > thr).reshape(-1).nonzero().squeeze(1)
    codes = SparseCodes.from_flat(flat, pre, sort=False)
    codes.positive = True
    return codes


def positive_only(codes: SparseCodes) -> SparseCodes:
    """Drop entries whose value is not positive (ReLU zeros)."""
    if codes.positive:
        return codes
    keep = codes.vals > 0
    if bool(keep.all()):
        codes.positive = True
        return codes
    idx = keep.nonzero().squeeze(1)
    return SparseCodes(
        codes.rows[idx], codes.cols[idx], codes.vals[idx], codes.n_rows, codes.n_cols, positive=True
    )


