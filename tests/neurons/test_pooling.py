import numpy as np
import pytest
from scipy import sparse

from sae1n.errors import ConfigError
from sae1n.neurons.pooling import POOLINGS, pool_activations


@pytest.mark.parametrize("pooling", POOLINGS)
def test_sparse_pooling_equals_dense(pooling):
    rng = np.random.default_rng(1)
    for trial in range(15):
        n, d = rng.integers(1, 30), rng.integers(1, 20)
        m = rng.normal(size=(n, d)).astype(np.float32)
        m[rng.random((n, d)) < 0.6] = 0
        if trial % 2:
            m = np.abs(m)  # SAE codes are usually non-negative
        for topk in (1, 4, 100):
            for q in (0.0, 0.25, 0.9, 1.0):
                want = pool_activations(m, pooling, topk=topk, quantile=q)
                for mat in (sparse.csr_matrix(m), sparse.csr_matrix(m.astype(np.float64))):
                    got = pool_activations(mat, pooling, topk=topk, quantile=q)
                    np.testing.assert_allclose(got, want, atol=1e-6)


def test_pooling_definitions():
    m = np.array([[0.0, 1.0], [3.0, 1.0], [1.0, 1.0], [2.0, 5.0]])
    np.testing.assert_allclose(pool_activations(m, "max"), [3, 5])
    np.testing.assert_allclose(pool_activations(m, "mean"), [1.5, 2])
    np.testing.assert_allclose(pool_activations(m, "topk_mean", topk=2), [2.5, 3])
    np.testing.assert_allclose(
        pool_activations(m, "quantile", quantile=0.5), np.quantile(m, 0.5, axis=0)
    )
    # a column with fewer stored entries than patches has zeros too
    np.testing.assert_allclose(
        pool_activations(sparse.csr_matrix(np.array([[-1.0], [0.0]])), "max"), [0.0]
    )


def test_bad_pooling_options():
    with pytest.raises(ConfigError, match="unknown pooling"):
        pool_activations(np.ones((2, 2)), "median")
    with pytest.raises(ConfigError, match="topk"):
        pool_activations(np.ones((2, 2)), "topk_mean", topk=0)
    with pytest.raises(ConfigError, match="quantile"):
        pool_activations(np.ones((2, 2)), "quantile", quantile=1.5)
