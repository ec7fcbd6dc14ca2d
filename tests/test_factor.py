"""VecchiaNeighbors.factor and .logpdf against dense linear algebra (NumPy / SciPy), the model
kept by the result (residual and Euclidean paths), thread invariance and argument checks."""

import numpy as np
import pytest
import scipy.sparse
import scipy.stats

import residual
from residual.vecchia import vecchia_neighbors
from reference import kernel_ref, model_ref

KERN = residual.Matern(1.5, lengthscale=0.3, variance=1.3)
M = 8


def _data(n, seed=0, dim=2):
    return np.random.default_rng(seed).uniform(size=(n, dim))


def _dense_cov(res, X, covariance, nugget):
    """The covariance of y[order], from the NumPy references (not the compiled tiles)."""
    Xo = X[res.order]
    S = kernel_ref(res.kernel, Xo, Xo)
    if covariance == "residual":
        V = _ordered_v_ref(res, X)
        S = S - V @ V.T
    return S + nugget * np.eye(len(Xo))


def _ordered_v_ref(res, X):
    """V of the result's model rebuilt by numpy.linalg, rows in the ordered sequence."""
    model = res.model
    inducing = res.order[model.inducing]            # the inducing rows, as rows of X
    _, V, _ = model_ref(X, res.kernel, inducing, model.jitter)
    return V[res.order]


def _factor_ref(S, neighbors):
    """Row-by-row Vecchia factor (dense), each row from numpy.linalg.solve."""
    n = S.shape[0]
    A = np.zeros((n, n))
    for i in range(n):
        c = np.sort(neighbors[i][neighbors[i] >= 0])
        b = np.linalg.solve(S[np.ix_(c, c)], S[c, i]) if c.size else np.zeros(0)
        d = S[i, i] - S[i, c] @ b
        A[i, i] = 1.0 / np.sqrt(d)
        A[i, c] = -b / np.sqrt(d)
    return A


@pytest.mark.parametrize("metric", ["residual", "euclidean"])
@pytest.mark.parametrize("covariance", ["residual", "kernel"])
@pytest.mark.parametrize("nugget", [0.0, 0.05])
def test_full_conditioning_gives_the_exact_inverse(metric, covariance, nugget):
    n = 40
    X = _data(n)
    res = vecchia_neighbors(X, KERN, k=n - 1, n_inducing=M, metric=metric)
    A = res.factor(covariance, nugget=nugget)
    S = _dense_cov(res, X, covariance, nugget)
    np.testing.assert_allclose(A.toarray().T @ A.toarray() @ S, np.eye(n), atol=1e-8)


def test_factor_is_lower_triangular_on_the_pattern():
    X = _data(120, seed=1)
    res = vecchia_neighbors(X, KERN, k=7, n_inducing=M)
    A = res.factor("residual", nugget=1e-3)
    P = res.to_csr()
    np.testing.assert_array_equal(A.indptr, P.indptr)
    np.testing.assert_array_equal(A.indices, P.indices)
    assert isinstance(A, scipy.sparse.csr_matrix)
    assert scipy.sparse.triu(A, k=1).nnz == 0
    assert (A.diagonal() > 0).all()


@pytest.mark.parametrize("metric", ["residual", "euclidean"])
@pytest.mark.parametrize("covariance", ["residual", "kernel"])
def test_partial_conditioning_matches_a_dense_reference_row_by_row(metric, covariance,
                                                                    any_kernel):
    X = _data(150, seed=2, dim=3)
    res = vecchia_neighbors(X, any_kernel, k=6, n_inducing=M, metric=metric,
                            ordering="maximin")
    nugget = 1e-3 * any_kernel.variance
    A = res.factor(covariance, nugget=nugget).toarray()
    ref = _factor_ref(_dense_cov(res, X, covariance, nugget), res.neighbors)
    np.testing.assert_allclose(A, ref, rtol=1e-9, atol=1e-9 * np.abs(ref).max())


@pytest.mark.parametrize("covariance", ["residual", "kernel"])
@pytest.mark.parametrize("nugget", [0.0, 0.1])
def test_logpdf_matches_scipy_with_full_conditioning(covariance, nugget):
    n = 50
    X = _data(n, seed=3)
    y = np.random.default_rng(4).standard_normal(n)
    # a random ordering: y is given in X's row order, the factor works in the ordered one
    res = vecchia_neighbors(X, KERN, k=n - 1, n_inducing=M, ordering="random", seed=5)
    assert not np.array_equal(res.order, np.arange(n))
    # VIF: V V^T + (K - V V^T + nugget) = K + nugget for both choices
    cov = kernel_ref(KERN, X, X) + nugget * np.eye(n)
    expected = scipy.stats.multivariate_normal(np.zeros(n), cov).logpdf(y)
    got = res.logpdf(y, nugget=nugget, covariance=covariance)
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-7)


@pytest.mark.parametrize("metric", ["residual", "euclidean"])
def test_vif_logpdf_with_partial_conditioning(metric):
    """Woodbury and the determinant lemma against the dense VIF covariance V V^T + (A^T A)^-1."""
    n = 120
    X = _data(n, seed=6)
    y = np.sin(5 * X[:, 0]) + 0.1 * np.random.default_rng(7).standard_normal(n)
    res = vecchia_neighbors(X, KERN, k=5, n_inducing=M, metric=metric, seed=8)
    nugget = 0.01
    A = res.factor("residual", nugget=nugget).toarray()
    V = _ordered_v_ref(res, X)
    cov_ordered = V @ V.T + np.linalg.inv(A.T @ A)
    inv = np.argsort(res.order)
    cov = cov_ordered[np.ix_(inv, inv)]                 # back to X's row order
    expected = scipy.stats.multivariate_normal(np.zeros(n), cov).logpdf(y)
    assert res.logpdf(y, nugget=nugget) == pytest.approx(expected, rel=1e-9)
    # plain Vecchia with the same neighbours: (A^T A)^-1 alone
    Ak = res.factor("kernel", nugget=nugget).toarray()
    cov_k = np.linalg.inv(Ak.T @ Ak)[np.ix_(inv, inv)]
    expected_k = scipy.stats.multivariate_normal(np.zeros(n), cov_k).logpdf(y)
    assert res.logpdf(y, nugget=nugget, covariance="kernel") == pytest.approx(expected_k,
                                                                               rel=1e-9)


def test_original_order_columns():
    """A[:, argsort(order)] maps y in X's row order to A @ y[order] (as the docstring says)."""
    X = _data(90, seed=9)
    y = np.random.default_rng(10).standard_normal(90)
    res = vecchia_neighbors(X, KERN, k=4, n_inducing=M, ordering="maximin")
    A = res.factor("kernel", nugget=1e-3)
    np.testing.assert_allclose(A[:, np.argsort(res.order)] @ y, A @ y[res.order],
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("covariance", ["residual", "kernel"])
def test_independent_of_thread_count(covariance):
    X = _data(700, seed=11)
    y = np.cos(4 * X[:, 1])
    res = vecchia_neighbors(X, KERN, k=9, n_inducing=M)
    one = res.factor(covariance, nugget=1e-4, num_threads=1)
    two = res.factor(covariance, nugget=1e-4, num_threads=2)
    np.testing.assert_array_equal(one.data, two.data)
    assert (res.logpdf(y, covariance, nugget=1e-4, num_threads=1)
            == res.logpdf(y, covariance, nugget=1e-4, num_threads=2))


def test_euclidean_result_builds_the_residual_paths_model():
    X = _data(200, seed=12)
    res_r = vecchia_neighbors(X, KERN, k=5, n_inducing=M, seed=3)
    res_e = vecchia_neighbors(X, KERN, k=5, n_inducing=M, seed=3, metric="euclidean")
    np.testing.assert_array_equal(res_e.order, res_r.order)        # the same random order
    kernel_before = res_e.factor("kernel", nugget=1e-3)
    assert res_e._model is None                # the kernel covariance needs no model
    for name in ("X", "V", "p_diag", "inducing", "L"):
        np.testing.assert_array_equal(getattr(res_e.model, name), getattr(res_r.model, name))
    # the scaled coordinates with and without the model are the same bits
    np.testing.assert_array_equal(res_e.factor("kernel", nugget=1e-3).data, kernel_before.data)


def test_euclidean_with_a_prebuilt_model():
    X = _data(150, seed=13)
    model = residual.ResidualCorrelation.from_kernel(X, KERN, n_inducing=M, seed=1)
    res = vecchia_neighbors(model, k=5, metric="euclidean", ordering="maximin")
    assert res.kernel == KERN
    np.testing.assert_array_equal(res.model.V, model.V[res.order])
    A = res.factor("residual", nugget=1e-3).toarray()
    ref = _factor_ref(_dense_cov(res, X, "residual", 1e-3), res.neighbors)
    np.testing.assert_allclose(A, ref, rtol=1e-9, atol=1e-9 * np.abs(ref).max())


def test_euclidean_checks_n_inducing_only_with_a_kernel():
    X = _data(60, seed=14)
    with pytest.raises(ValueError, match="n_inducing"):
        vecchia_neighbors(X, KERN, k=4, n_inducing=61, metric="euclidean")
    res = vecchia_neighbors(X, k=4, n_inducing=61, metric="euclidean")    # unused: no kernel
    assert res.model is None
    # with a kernel and the default n_inducing (200 > n = 60, reduced to n - 1)
    res = vecchia_neighbors(X, KERN, k=4, metric="euclidean")
    assert res.factor("kernel", nugget=1e-3).shape == (60, 60)
    assert res.factor("residual", nugget=1e-3).shape == (60, 60)


def test_singular_block_asks_for_a_nugget():
    X = _data(50, seed=15)
    X[30] = X[10]                                   # a duplicate: a singular kernel block
    res = vecchia_neighbors(X, KERN, k=49, n_inducing=M, metric="euclidean",
                            ordering="natural")
    with pytest.raises(ValueError, match="position 30 .*singular.*nugget"):
        res.factor("kernel")
    A = res.factor("kernel", nugget=1e-4)
    assert np.isfinite(A.data).all()


def test_bad_arguments_raise_before_work():
    X = _data(80, seed=16)
    res = vecchia_neighbors(X, KERN, k=4, n_inducing=M, metric="euclidean")
    y = np.zeros(80)
    bad = [
        (dict(covariance="dense"), ValueError, "covariance"),
        (dict(nugget=-1.0), ValueError, "nugget"),
        (dict(nugget=np.nan), ValueError, "nugget"),
        (dict(nugget=np.inf), ValueError, "nugget"),
        (dict(nugget="0.1"), TypeError, "nugget"),
        (dict(nugget=True), TypeError, "nugget"),
        (dict(num_threads=0), ValueError, "num_threads"),
        (dict(num_threads=1.5), TypeError, "num_threads"),
    ]
    for kwargs, exc, match in bad:
        with pytest.raises(exc, match=match):
            res.factor(**kwargs)
        with pytest.raises(exc, match=match):
            res.logpdf(y, **kwargs)
    for y_bad, exc in [(np.zeros(79), ValueError), (np.zeros((80, 1)), ValueError),
                       (np.full(80, np.nan), ValueError), (["a"] * 80, TypeError)]:
        with pytest.raises(exc, match="y"):
            res.logpdf(y_bad)
    assert res._model is None                      # none of these built the residual model


def test_euclidean_without_kernel():
    res = vecchia_neighbors(_data(30, seed=17), k=3, metric="euclidean")
    assert res.kernel is None and res.model is None
    for covariance in ("residual", "kernel"):
        with pytest.raises(ValueError, match="needs a kernel"):
            res.factor(covariance)
    with pytest.raises(TypeError, match="kernel"):
        vecchia_neighbors(_data(30), "rbf", k=3, metric="euclidean")
    with pytest.raises(ValueError, match="lengthscales"):
        vecchia_neighbors(_data(30), residual.RBF(lengthscale=[1.0, 1.0, 1.0]), k=3,
                          metric="euclidean")


def test_ard_kernel_matches_the_dense_reference():
    X = _data(100, seed=18, dim=3)
    kern = residual.RBF(lengthscale=[0.4, 0.8, 1.5], variance=0.7)
    res = vecchia_neighbors(X, kern, k=6, n_inducing=M, metric="euclidean")
    for covariance in ("residual", "kernel"):
        A = res.factor(covariance, nugget=1e-3).toarray()
        ref = _factor_ref(_dense_cov(res, X, covariance, 1e-3), res.neighbors)
        np.testing.assert_allclose(A, ref, rtol=1e-9, atol=1e-9 * np.abs(ref).max())


def test_dask_result_has_the_same_factor():
    rdask = pytest.importorskip("residual.dask")
    X = _data(300, seed=19)
    ref = vecchia_neighbors(X, KERN, k=5, n_inducing=M, metric="euclidean")
    res = rdask.vecchia_neighbors(X, KERN, k=5, n_inducing=M, metric="euclidean", n_blocks=3)
    for covariance in ("residual", "kernel"):
        np.testing.assert_array_equal(res.factor(covariance, nugget=1e-3).data,
                                      ref.factor(covariance, nugget=1e-3).data)
