"""The BLAS wrapper, the tiles and the top-k selection, through their test hooks."""

import numpy as np
import pytest

import residual
from residual import _blas, _tiles
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


def test_sqdist_tile_is_the_direct_sum():
    rng = np.random.default_rng(1)
    xq = rng.standard_normal((20, 3))
    xc = rng.standard_normal((31, 3))
    ref = ((xq[:, None] - xc[None]) ** 2).sum(-1)
    np.testing.assert_allclose(_tiles.sqdist_matrix(xq, xc), ref, rtol=1e-13)
    # identical rows give exactly zero (the Gram identity would leave rounding noise)
    same = np.repeat(xq[:1] * 1e3, 2, axis=0)
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


@pytest.mark.parametrize("variance", [1.0, 1e10, 1e200])
def test_kernels_of_far_pairs_are_zero_for_any_variance(any_kernel, variance):
    # r^2 up to the cap and beyond: the Matern polynomial (~1e300) must not meet the variance
    # before exp(-r) = 0, or inf * 0 gives NaN (a far pair would then look nearest)
    r2 = np.array([1e299, 1e300, 1e308, np.inf])
    k = _tiles.kernel_values(any_kernel._code, variance, r2)
    assert np.all(k == 0.0)


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
