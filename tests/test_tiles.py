"""The BLAS wrapper, the tiles and the top-k selection, through their test hooks."""

import numpy as np
import pytest

import residual
from residual import _blas, _select, _tiles
from reference import kernel_ref, residual_dist_ref


@pytest.mark.parametrize("shape", [(1, 1, 1), (7, 5, 3), (64, 33, 512)])
def test_rowmajor_gemm(shape):
    m, n, k = shape
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((m, k)), rng.standard_normal((n, k))
    np.testing.assert_allclose(_blas.gemm(a, b), a @ b.T, rtol=1e-12, atol=1e-12)
    bt = np.ascontiguousarray(b.T)
    np.testing.assert_allclose(_blas.gemm(a, bt, trans_b=False), a @ b.T, rtol=1e-12,
                               atol=1e-12)
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    np.testing.assert_allclose(_blas.sgemm_test(a32, b32), a32 @ b32.T, rtol=1e-4, atol=1e-4)


def test_sqdist_tiles_gram_and_direct():
    rng = np.random.default_rng(1)
    xq = rng.standard_normal((20, 3))
    xc = rng.standard_normal((31, 3))
    ref = ((xq[:, None] - xc[None]) ** 2).sum(-1)
    np.testing.assert_allclose(_tiles.sqdist_matrix(xq, xc), ref, rtol=1e-13)
    np.testing.assert_allclose(_tiles.sqdist_matrix(xq, xc, gram=True), ref, rtol=1e-10,
                               atol=1e-13)
    # the Gram identity is clamped at zero for identical rows; the direct sum is exactly zero
    same = np.repeat(xq[:1] * 1e3, 2, axis=0)
    assert (_tiles.sqdist_matrix(same, same, gram=True) >= 0).all()
    assert (_tiles.sqdist_matrix(same, same) == 0).all()


def test_residual_tiles_match_reference(any_kernel):
    X = np.random.default_rng(2).standard_normal((150, 2))
    model = residual.ResidualCorrelation.from_kernel(X, any_kernel, n_inducing=30)
    C = _tiles.residual_cov_matrix(any_kernel._code, any_kernel.variance, model._xs, model.V,
                                   model._xs, model.V)
    np.testing.assert_allclose(C, kernel_ref(any_kernel, X, X) - model.V @ model.V.T,
                               rtol=0, atol=1e-12)
    # the correlation and distance derived from the tile, as brute_force_knn does
    s = model._inv_sqrt_p
    rho = np.clip(np.abs(C) * s[:, None] * s[None, :], 0, 1)
    D = residual_dist_ref(any_kernel, X, model.V, model.p_diag, X, model.V, model.p_diag,
                          residual.DEGENERATE_P_RTOL)
    np.testing.assert_allclose(1 - rho, D ** 2, rtol=0, atol=1e-9)
    # d(i, i) = sqrt(rounding noise of 1 - rho_ii): small, not zero
    np.testing.assert_allclose(np.diag(D), 0, atol=1e-4)
    assert (D <= 1).all() and (D >= 0).all()


def test_select_rows_order_ties_and_nan():
    keys = np.array([[3.0, 1.0, np.nan, 1.0, 0.5, 2.0, 1.0]])
    d, i = _select.select_rows(keys, 4)
    assert i.tolist() == [[4, 1, 3, 6]]
    assert d.tolist() == [[0.5, 1.0, 1.0, 1.0]]
    d, i = _select.select_rows(np.array([[np.nan, 2.0]]), 3)
    assert i.tolist() == [[1, -1, -1]] and np.isinf(d[0, 1:]).all()


@pytest.mark.parametrize("cap", [0, 6, 11])
def test_select_rows_matches_full_sort(cap):
    rng = np.random.default_rng(3)
    keys = rng.integers(0, 20, size=(50, 300)).astype(float)    # many exact ties
    d, i = _select.select_rows(keys, 5, cap=cap)
    for r in range(50):
        order = np.lexsort((np.arange(300), keys[r]))[:5]
        assert i[r].tolist() == order.tolist()
        np.testing.assert_array_equal(d[r], keys[r, order])


def test_vectorisable_exp_is_within_one_ulp_of_numpy():
    rng = np.random.default_rng(4)
    x = -np.concatenate([rng.random(200_000) * 60, rng.random(20_000) * 1e-6,
                         [0.0, 1e-300, 0.5, 700.0, 708.0]])
    got, ref = _tiles.exp_nonpos(x), np.exp(x)
    ulps = np.abs(got - ref) / np.spacing(ref)
    assert ulps.max() <= 1.0
    # far below the clamp the result stays tiny and finite (the clamp point, exp(-708))
    far = _tiles.exp_nonpos(np.array([-709.0, -1e4, -np.inf]))
    assert np.isfinite(far).all() and (far < 1e-307).all()
