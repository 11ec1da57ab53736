"""Pool each neuron's per-patch activations into one value per slide.

Sparse SAE codes (CSR, one row per patch) are pooled without densifying:
entries absent from the CSR are zeros, so a neuron's pool includes the
``N - nnz`` implicit zeros exactly as the dense matrix would.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

from sae1n.errors import ConfigError

POOLINGS = ("max", "mean", "topk_mean", "quantile")


def check_pooling(pooling: str, topk: int = 10, quantile: float = 0.9) -> None:
    """Raise :class:`ConfigError` for an unknown pooling or bad parameter."""
    if pooling not in POOLINGS:
        raise ConfigError(f"unknown pooling {pooling!r}; use one of {', '.join(POOLINGS)}")
    if pooling == "topk_mean" and int(topk) < 1:
        raise ConfigError(f"--topk must be >= 1 for topk_mean pooling, got {topk}")
    if pooling == "quantile" and not 0.0 <= float(quantile) <= 1.0:
        raise ConfigError(f"--quantile must lie in [0, 1], got {quantile}")


def pool_activations(
    codes, pooling: str = "max", *, topk: int = 10, quantile: float = 0.9
) -> np.ndarray:
    """Pool an (N patches, D neurons) matrix (dense array or scipy sparse) to (D,) float64.

    ``max``: largest activation; ``mean``: average over all N patches;
    ``topk_mean``: mean of the ``topk`` largest (all N when N < topk);
    ``quantile``: the ``quantile`` of the N values (numpy's linear interpolation).
    """
    check_pooling(pooling, topk, quantile)
    if sparse.issparse(codes):
        return _pool_sparse(sparse.csr_matrix(codes), pooling, int(topk), float(quantile))
    mat = np.asarray(codes)
    if mat.ndim != 2 or mat.shape[0] == 0:
        raise ValueError(f"pooling needs a non-empty (N, D) matrix, got shape {mat.shape}")
    mat = mat.astype(np.float64, copy=False)
    if pooling == "max":
        return mat.max(axis=0)
    if pooling == "mean":
        return mat.mean(axis=0)
    if pooling == "topk_mean":
        k = min(int(topk), mat.shape[0])
        return np.partition(mat, mat.shape[0] - k, axis=0)[mat.shape[0] - k :].mean(axis=0)
    return np.quantile(mat, float(quantile), axis=0)


def _pool_sparse(csr: sparse.csr_matrix, pooling: str, topk: int, quantile: float) -> np.ndarray:
    n, d = csr.shape
    csr.sum_duplicates()
    if n == 0:
        raise ValueError("pooling needs at least one patch")
    indices = csr.indices
    if pooling == "mean":
        return np.bincount(indices, weights=csr.data, minlength=d) / n
    counts = np.bincount(indices, minlength=d)
    if pooling == "max":
        # max is exact in the stored precision: no float64 copy of the values
        vals = csr.data if csr.data.dtype.kind == "f" else csr.data.astype(np.float64)
        out = np.full(d, -np.inf, dtype=vals.dtype)
        np.maximum.at(out, indices, vals)
        out = out.astype(np.float64)
        # a neuron with fewer stored entries than patches also has zeros
        has_zero = counts < n
        out[has_zero] = np.maximum(out[has_zero], 0.0)
        return out
    data = csr.data.astype(np.float64, copy=False)
    # topk_mean / quantile need each column's values in order: one sort of the
    # nnz entries by (column, value) instead of densifying N x D.
    if csr.data.dtype == np.float32:
        order = _column_value_order(indices, csr.data)
    else:
        order = np.lexsort((data, indices))
    vals = data[order]
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    n_neg = np.bincount(indices[data < 0], minlength=d)
    zeros = n - counts

    def order_stat(rank: np.ndarray) -> np.ndarray:
        # value at 0-based position ``rank`` of each column's full sorted vector
        # (negatives, then implicit zeros, then the rest)
        rank = np.asarray(rank, dtype=np.int64)
        out = np.zeros(d)
        neg = rank < n_neg
        out[neg] = vals[(starts + rank)[neg]]
        pos = rank >= n_neg + zeros
        out[pos] = vals[(starts + rank - zeros)[pos]]
        return out

    if pooling == "quantile":
        pos = quantile * (n - 1)
        lo = int(np.floor(pos))
        hi = min(lo + 1, n - 1)
        frac = pos - lo
        cols_lo = order_stat(np.full(d, lo))
        if frac == 0.0:
            return cols_lo
        return cols_lo + (order_stat(np.full(d, hi)) - cols_lo) * frac
    k = min(topk, n)
    # sum of the k largest = total sum - sum of the (n - k) smallest; the largest
    # entries of a column are its stored positives and (if needed) zeros.
    csum = np.concatenate(([0.0], np.cumsum(vals)))
    ends = starts + counts
    total = np.zeros(d)
    n_pos = counts - n_neg
    take_pos = np.minimum(n_pos, k)
    total += csum[ends] - csum[ends - take_pos]
    # remaining slots are filled by zeros first, then by the largest negatives
    rest = k - take_pos
    take_zero = np.minimum(rest, zeros)
    rest = rest - take_zero
    neg_end = starts + n_neg
    total += csum[neg_end] - csum[neg_end - rest]
    return total / k


def _column_value_order(indices: np.ndarray, data: np.ndarray) -> np.ndarray:
    # one 64-bit key per entry: column in the high bits, an order-preserving
    # map of the float32 value in the low bits (flip negatives' bits)
    bits = data.view(np.uint32).astype(np.uint64)
    neg = (bits >> np.uint64(31)).astype(bool)
    bits = np.where(neg, ~bits & np.uint64(0xFFFFFFFF), bits | np.uint64(0x80000000))
    key = (indices.astype(np.uint64) << np.uint64(32)) | bits
    return np.argsort(key, kind="stable")
