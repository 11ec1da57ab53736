import numpy as np
import pytest

from sae1n.datasets.grouping import fold_indices, stratified_group_kfold
from sae1n.errors import ConfigError

# 24 samples, 14 patients with 1-3 slides each, 3 classes.
Y = [
    "a",
    "b",
    "a",
    "a",
    "b",
    "b",
    "a",
    "c",
    "c",
    "a",
    "b",
    "a",
    "c",
    "a",
    "b",
    "a",
    "b",
    "a",
    "a",
    "c",
    "b",
    "a",
    "a",
    "b",
]
G = [
    "p1",
    "p1",
    "p2",
    "p3",
    "p3",
    "p4",
    "p5",
    "p5",
    "p6",
    "p7",
    "p7",
    "p7",
    "p8",
    "p9",
    "p9",
    "p10",
    "p11",
    "p11",
    "p12",
    "p12",
    "p13",
    "p14",
    "p14",
    "p14",
]

# Recorded from scikit-learn 1.6.1: StratifiedGroupKFold(4, shuffle=True, random_state=seed).split(Y, Y, G).
SKLEARN_161_SHUFFLED = {
    0: [
        [3, 4, 6, 7, 9, 10, 11, 12],
        [0, 1, 2, 20],
        [8, 15, 16, 17, 21, 22, 23],
        [5, 13, 14, 18, 19],
    ],
    42: [
        [5, 12, 20],
        [0, 1, 2, 13, 14, 21, 22, 23],
        [3, 4, 8, 16, 17, 18, 19],
        [6, 7, 9, 10, 11, 15],
    ],
}


def _folds(fold_of_sample, k):
    return [f.tolist() for f in fold_indices(fold_of_sample, k)]


@pytest.mark.parametrize("seed", sorted(SKLEARN_161_SHUFFLED))
def test_shuffled_folds_equal_scikit_learn_1_6_1(seed):
    assert _folds(stratified_group_kfold(Y, G, 4, seed=seed), 4) == SKLEARN_161_SHUFFLED[seed]


def test_unshuffled_folds_equal_the_user_guide_example():
    # scikit-learn's user guide example for StratifiedGroupKFold(n_splits=3).
    y = [1] * 6 + [0] * 12
    groups = [1, 2, 3, 3, 4, 4, 1, 1, 2, 2, 3, 4, 5, 5, 5, 6, 6, 6]
    folds = _folds(stratified_group_kfold(y, groups, 3, shuffle=False), 3)
    assert folds == [[1, 8, 9, 12, 13, 14], [2, 3, 10, 15, 16, 17], [0, 4, 5, 6, 7, 11]]


@pytest.mark.filterwarnings("ignore:The least populated class")
def test_unshuffled_folds_match_installed_scikit_learn_on_random_data():
    # shuffle=False never changed in scikit-learn, so any installed version is a reference.
    model_selection = pytest.importorskip("sklearn.model_selection")
    rng = np.random.default_rng(3)
    for _ in range(8):
        n_groups = int(rng.integers(8, 40))
        k = int(rng.integers(2, 7))
        sizes = rng.integers(1, 5, n_groups)
        groups = np.repeat(rng.permutation(n_groups), sizes)
        y = rng.integers(0, 3, len(groups))
        expected = [
            te.tolist() for _, te in model_selection.StratifiedGroupKFold(k).split(y, y, groups)
        ]
        assert _folds(stratified_group_kfold(y, groups, k, shuffle=False), k) == expected


def test_groups_stay_whole_and_every_sample_gets_one_fold():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(40), rng.integers(1, 4, 40))
    y = rng.integers(0, 2, len(groups))
    fold = stratified_group_kfold(y, groups, 5, seed=7)
    assert fold.shape == y.shape and set(fold.tolist()) == set(range(5))
    for g in np.unique(groups):
        assert len(set(fold[groups == g].tolist())) == 1
    assert np.array_equal(fold, stratified_group_kfold(y, groups, 5, seed=7))
    assert not np.array_equal(fold, stratified_group_kfold(y, groups, 5, seed=8))


def test_invalid_input_is_a_clear_error():
    with pytest.raises(ConfigError, match="folds must be an integer >= 2"):
        stratified_group_kfold(Y, G, 1)
    with pytest.raises(ConfigError, match="14 groups"):
        stratified_group_kfold(Y, G, 15)
    with pytest.raises(ConfigError, match="same length"):
        stratified_group_kfold(Y, G[:-1], 3)
