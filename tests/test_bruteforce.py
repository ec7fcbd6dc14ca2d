"""brute_force_knn against the plain-NumPy float64 reference, both metrics."""

import numpy as np
import pytest

import residual
from conftest import harness_like
from reference import (assert_knn_equal, euclidean_dist_ref, knn_ref, residual_dist_ref)


def _residual_D(model, Y=None, V_new=None, p_new=None):
    X = model.X
    if Y is None:
        return residual_dist_ref(model.kernel, X, model.V, model.p_diag, X, model.V,
                                 model.p_diag, residual.DEGENERATE_P_RTOL)
    return residual_dist_ref(model.kernel, Y, V_new, p_new, X, model.V, model.p_diag,
                             residual.DEGENERATE_P_RTOL)


def _check(result, D, k, tol=1e-9, **mode):
    d_ref, i_ref = knn_ref(D, k, **mode)
    assert_knn_equal(*result, d_ref, i_ref, D_full=D, tol=tol)


@pytest.mark.parametrize("predecessors", [False, True])
def test_residual_all_kernels(any_kernel, predecessors):
    X = harness_like(400)
    model = residual.ResidualCorrelation.from_kernel(X, any_kernel, n_inducing=60, seed=1)
    res = residual.brute_force_knn(model, 7, predecessors=predecessors, chunk_size=37)
    _check(res, _residual_D(model), 7, in_sample=True, predecessors=predecessors)


def test_residual_tiny_p_regime():
    # standard-harness settings at n = 2000: median p ~ 1e-5, naive float32 would fail here
    X = harness_like(2000)
    model = residual.ResidualCorrelation.from_kernel(X, residual.RBF(), n_inducing=512)
    assert np.median(model.p_diag) < 1e-4
    # rho = C / sqrt(p_i p_j): C's float64 noise (~1e-15) over p down to ~1e-7 gives ~1e-8
    D = _residual_D(model)
    res = residual.brute_force_knn(model, 50, predecessors=True)
    _check(res, D, 50, tol=1e-8, in_sample=True, predecessors=True)
    res = residual.brute_force_knn(model, 50)
    _check(res, D, 50, tol=1e-8, in_sample=True)


def test_residual_ard_and_k_extremes():
    X = harness_like(120, dim=4, seed=5)
    kern = residual.Matern(2.5, lengthscale=[0.5, 1.0, 1.5, 3.0])
    model = residual.ResidualCorrelation.from_kernel(X, kern, n_inducing=25)
    D = _residual_D(model)
    for k in (1, 119):
        _check(residual.brute_force_knn(model, k), D, k, in_sample=True)


@pytest.mark.parametrize("k", [1, 5, 299])
def test_euclidean(k):
    X = harness_like(300, dim=3, seed=2)
    _check(residual.brute_force_knn(X, k), euclidean_dist_ref(X, X), k, in_sample=True)
    _check(residual.brute_force_knn(X, k, predecessors=True), euclidean_dist_ref(X, X), k,
           in_sample=True, predecessors=True)


def test_euclidean_integer_grid_ties_break_by_index():
    g = np.arange(6.0)
    X = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    X = X[np.random.default_rng(0).permutation(len(X))]
    d, i = residual.brute_force_knn(X, 12)
    d_ref, i_ref = knn_ref(euclidean_dist_ref(X, X), 12, in_sample=True)
    np.testing.assert_array_equal(i, i_ref)          # exact: ties are true ties here
    np.testing.assert_array_equal(d, d_ref)


def test_predecessor_rows_exact_counts():
    X = harness_like(200)
    model = residual.ResidualCorrelation.from_kernel(X, residual.RBF(0.5), n_inducing=20)
    k = 10
    d, i = residual.brute_force_knn(model, k, predecessors=True)
    for row in (0, 1, k, k + 1, 199):
        valid = i[row] >= 0
        assert valid.sum() == min(k, row)
        assert (i[row][valid] < row).all()
        assert np.isinf(d[row][~valid]).all() and (i[row][~valid] == -1).all()
        assert len(set(i[row][valid])) == valid.sum()


def test_new_points_both_metrics(any_kernel):
    X = harness_like(300, seed=3)
    Y = harness_like(45, seed=4) * 1.5
    _check(residual.brute_force_knn(X, 9, Y), euclidean_dist_ref(Y, X), 9)
    model = residual.ResidualCorrelation.from_kernel(X, any_kernel, n_inducing=40)
    from reference import kernel_ref
    U = X[model.inducing]
    V_new = np.linalg.solve(model.L, kernel_ref(any_kernel, U, Y)).T
    p_new = any_kernel.variance - (V_new ** 2).sum(1)
    res = residual.brute_force_knn(model, 9, Y)
    _check(res, _residual_D(model, Y, V_new, p_new), 9)
    # k = n is allowed for new points
    d, i = residual.brute_force_knn(model, 300, Y)
    assert sorted(i[0].tolist()) == list(range(300))


def test_new_points_equal_to_indexed_points():
    X = harness_like(150, seed=6)
    model = residual.ResidualCorrelation.from_kernel(X, residual.RBF(), n_inducing=30)
    d_in, i_in = residual.brute_force_knn(model, 5)
    d_new, i_new = residual.brute_force_knn(model, 6, X[:20])
    # a query equal to an indexed point finds itself first, then the in-sample answer
    assert (i_new[:, 0] == np.arange(20)).all()
    np.testing.assert_array_equal(i_new[:, 1:], i_in[:20])
    np.testing.assert_allclose(d_new[:, 1:], d_in[:20], atol=1e-9)


def test_duplicates():
    base = harness_like(80, seed=7)
    X = np.concatenate([base, base[:30], base[:10]])      # rows 80.. repeat earlier rows
    d, i = residual.brute_force_knn(X, 4)
    _check((d, i), euclidean_dist_ref(X, X), 4, in_sample=True)
    assert i[80, 0] == 0 and d[80, 0] == 0 and i[0, :2].tolist() == [80, 110]
    model = residual.ResidualCorrelation.from_kernel(X, residual.RBF(0.8), n_inducing=20)
    for pred in (False, True):
        res = residual.brute_force_knn(model, 4, predecessors=pred)
        _check(res, _residual_D(model), 4, in_sample=True, predecessors=pred)
        assert res[1][110, 0] in (0, 80) and res[0][110, 0] < 1e-6


def test_degenerate_p_points():
    X = harness_like(100, seed=8)
    model = residual.ResidualCorrelation.from_kernel(X, residual.RBF(), n_inducing=20)
    p = model.p_diag.copy()
    p[[3, 50]] = 0.0
    m2 = residual.ResidualCorrelation(X, model.kernel, V=model.V, p_diag=p)
    d, i = residual.brute_force_knn(m2, 5)
    _check((d, i), _residual_D(m2), 5, in_sample=True)
    # a degenerate row is at distance 1 from everything: its neighbours are the smallest indices
    assert i[3].tolist() == [0, 1, 2, 4, 5] and (d[3] == 1).all()
    assert 50 not in i[np.arange(100) != 50]


@pytest.mark.parametrize("metric", ["euclidean", "residual"])
def test_threads_chunks_layout_do_not_change_the_answer(metric):
    X = harness_like(1100, seed=9)
    obj = X if metric == "euclidean" else residual.ResidualCorrelation.from_kernel(
        X, residual.Matern(1.5), n_inducing=64)
    base = residual.brute_force_knn(obj, 13, predecessors=True, num_threads=1)
    for nt, chunk in [(2, None), (2, 7), (1, 1000), (-1, 3)]:
        other = residual.brute_force_knn(obj, 13, predecessors=True, num_threads=nt,
                                         chunk_size=chunk)
        np.testing.assert_array_equal(other[0], base[0])
        np.testing.assert_array_equal(other[1], base[1])


def test_read_only_and_non_contiguous_inputs():
    X = harness_like(200, dim=6, seed=10)
    Xf = np.asfortranarray(X)
    Xs = np.zeros((200, 12))
    Xs[:, ::2] = X
    Xr = X.copy()
    Xr.flags.writeable = False
    ref = residual.brute_force_knn(X, 6)
    for variant in (Xf, Xs[:, ::2], Xr, X.astype(np.float32).astype(np.float64)):
        got = residual.brute_force_knn(variant, 6)
        np.testing.assert_array_equal(got[1], ref[1])
    kern = residual.RBF(1.3)
    m_ref = residual.ResidualCorrelation.from_kernel(X, kern, n_inducing=30)
    ref = residual.brute_force_knn(m_ref, 6)
    for variant in (Xf, Xs[:, ::2], Xr):
        m = residual.ResidualCorrelation.from_kernel(variant, kern, n_inducing=30)
        got = residual.brute_force_knn(m, 6)
        np.testing.assert_array_equal(got[1], ref[1])
        np.testing.assert_array_equal(got[0], ref[0])
    Yr = X[:10].copy()
    Yr.flags.writeable = False
    got = residual.brute_force_knn(m_ref, 6, Yr)
    assert got[1].shape == (10, 6)


def test_integer_input_is_cast():
    X = np.random.default_rng(11).integers(0, 50, size=(60, 2))
    d, i = residual.brute_force_knn(X, 3)
    _check((d, i), euclidean_dist_ref(X.astype(float), X.astype(float)), 3, in_sample=True)
