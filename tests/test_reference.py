"""The comparison helper itself: it accepts tie swaps and rejects real differences."""

import numpy as np
import pytest

from reference import assert_knn_equal, knn_ref


def test_knn_ref_orders_ties_by_index():
    D = np.array([[0.0, 1.0, 1.0, 0.5]])
    d, i = knn_ref(D, 3)
    assert i.tolist() == [[0, 3, 1]]


def test_knn_ref_predecessors_pads():
    D = np.random.default_rng(0).random((4, 4))
    d, i = knn_ref(D, 2, predecessors=True)
    assert i[0].tolist() == [-1, -1] and i[1].tolist() == [0, -1]
    assert np.isinf(d[0]).all() and np.isinf(d[1, 1])


def test_helper_accepts_identical_and_tie_swaps():
    d_ref = np.array([[0.1, 0.2, 0.2 + 1e-12, 0.5]])   # ranks 1, 2 tie
    i_ref = np.array([[4, 7, 2, 9]])
    assert_knn_equal(d_ref.copy(), i_ref.copy(), d_ref, i_ref)
    assert_knn_equal(d_ref.copy(), np.array([[4, 2, 7, 9]]), d_ref, i_ref)


def test_helper_rejects_wrong_neighbour():
    d_ref = np.array([[0.1, 0.2, 0.3]])
    i_ref = np.array([[4, 7, 2]])
    with pytest.raises(AssertionError):
        assert_knn_equal(d_ref.copy(), np.array([[4, 2, 7]]), d_ref, i_ref)
    with pytest.raises(AssertionError):
        assert_knn_equal(d_ref.copy(), np.array([[4, 7, 5]]), d_ref, i_ref)
    with pytest.raises(AssertionError):
        assert_knn_equal(d_ref + 1e-6, i_ref.copy(), d_ref, i_ref)


def test_helper_with_full_matrix_accepts_boundary_tie_only():
    D = np.array([[0.0, 0.3, 0.1, 0.3, 0.9]])
    d_ref, i_ref = knn_ref(D, 3, in_sample=True)       # [2, 1, 3]: 1 and 3 tie
    assert i_ref.tolist() == [[2, 1, 3]]
    assert_knn_equal(d_ref.copy(), np.array([[2, 3, 1]]), d_ref, i_ref, D_full=D)
    with pytest.raises(AssertionError):
        assert_knn_equal(d_ref.copy(), np.array([[2, 1, 4]]), d_ref, i_ref, D_full=D)
