"""CoverTree.query equals brute_force_knn (the float64 oracle) in every mode."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import residual
from conftest import harness_like
from reference import assert_knn_equal


def _full(obj, Y=None):
    """The oracle's whole distance matrix (inf on the diagonal for in-sample queries)."""
    n = (obj.n_samples if isinstance(obj, residual.ResidualCorrelation) else len(obj))
    d, i = residual.brute_force_knn(obj, n - 1 if Y is None else n, Y)
    D = np.full((d.shape[0], n), np.inf)
    np.put_along_axis(D, i, d, axis=1)
    return D


def _equal(got, want, tol=1e-9, D_full=None):
    # the tree evaluates pairs one at a time, the oracle in BLAS tiles: distances agree to
    # float64 rounding, indices exactly except across ties at that resolution (duplicates in
    # the residual metric are such ties: BLAS may round two equal columns differently)
    d, i = got
    dw, iw = want
    assert_knn_equal(d, i, dw, iw, D_full=D_full, tol=tol)


def _modes(obj, tree, k, Y=None, tol=1e-9):
    D = _full(obj)
    for pred in (False, True):
        _equal(tree.query(k=k, predecessors=pred),
               residual.brute_force_knn(obj, k, predecessors=pred), tol, D)
    if Y is not None:
        _equal(tree.query(Y, k=k), residual.brute_force_knn(obj, k, Y), tol, _full(obj, Y))


@pytest.mark.parametrize("k", [1, 7, 50])
def test_euclidean_all_modes(k):
    X = harness_like(1200, seed=1)
    _modes(X, residual.CoverTree(X), k, Y=harness_like(60, seed=2) * 1.3)


def test_residual_all_kernels(any_kernel):
    X = harness_like(700, seed=3)
    model = residual.ResidualCorrelation.from_kernel(X, any_kernel, n_inducing=80)
    _modes(model, residual.CoverTree(model, batch_size=64), 9, Y=harness_like(40, seed=4))


def test_residual_tiny_p_and_ard():
    X = harness_like(1500, seed=5)
    model = residual.ResidualCorrelation.from_kernel(
        X, residual.RBF(lengthscale=[0.9, 1.0, 1.2]), n_inducing=400)
    # rho = C / sqrt(p_i p_j): float64 noise in C over p ~ 1e-6 gives ~1e-8 in d^2
    _modes(model, residual.CoverTree(model), 50, tol=1e-8)


def test_k_at_least_n_and_predecessor_rows():
    X = harness_like(120, seed=6)
    tree = residual.CoverTree(X)
    d, i = tree.query(X[:5] + 0.01, k=120)              # every point, for new queries
    assert (np.sort(i, axis=1) == np.arange(120)).all()
    k = 10
    d, i = tree.query(k=k, predecessors=True)
    for row in (0, 1, k, k + 1, 119):
        valid = i[row] >= 0
        assert valid.sum() == min(k, row) and (i[row][valid] < row).all()
    _equal((d, i), residual.brute_force_knn(X, k, predecessors=True))
    _equal(tree.query(k=119), residual.brute_force_knn(X, 119))


def test_duplicates_and_aliases():
    base = harness_like(150, seed=7)
    X = np.concatenate([base, base[:40], base[:40], base[5:6]])
    tree = residual.CoverTree(X)
    assert tree.stats["aliases"] >= 81
    _modes(X, tree, 6, Y=base[:10])
    model = residual.ResidualCorrelation.from_kernel(X, residual.RBF(0.8), n_inducing=30)
    _modes(model, residual.CoverTree(model), 6, tol=1e-8)


def test_degenerate_p():
    X = harness_like(300, seed=8)
    model = residual.ResidualCorrelation.from_kernel(X, residual.RBF(), n_inducing=30)
    p = model.p_diag.copy()
    p[[0, 3, 100]] = 0.0
    m2 = residual.ResidualCorrelation(X, model.kernel, V=model.V, p_diag=p)
    _modes(m2, residual.CoverTree(m2), 5)


def test_integer_grid_ties():
    g = np.arange(6.0)
    X = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    X = X[np.random.default_rng(0).permutation(len(X))]
    tree = residual.CoverTree(X)
    for pred in (False, True):
        d, i = tree.query(k=12, predecessors=pred)
        db, ib = residual.brute_force_knn(X, 12, predecessors=pred)
        np.testing.assert_array_equal(i, ib)             # true ties: broken by index, exactly
        np.testing.assert_array_equal(d, db)


@pytest.mark.parametrize("metric", ["euclidean", "residual"])
def test_threads_and_chunks_do_not_change_the_answer(metric):
    X = harness_like(1500, seed=9)
    obj = X if metric == "euclidean" else residual.ResidualCorrelation.from_kernel(
        X, residual.Matern(2.5), n_inducing=64)
    tree = residual.CoverTree(obj)
    base = tree.query(k=11, predecessors=True, num_threads=1)
    for nt, chunk in [(2, None), (2, 1), (-1, 1000)]:
        got = tree.query(k=11, predecessors=True, num_threads=nt, chunk_size=chunk)
        np.testing.assert_array_equal(got[0], base[0])
        np.testing.assert_array_equal(got[1], base[1])
    assert tree.stats["query"]["distance_evaluations_per_query"] > 0


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 70), st.integers(1, 3), st.integers(0, 10_000), st.integers(1, 12),
       st.booleans(), st.booleans())
def test_property(n, dim, seed, k, use_residual, pred):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, dim))
    if seed % 3 == 0:
        X = np.round(X)                                   # ties and duplicates
    k = min(k, n - 1) if not pred else min(k, n)
    if k < 1:
        return
    obj = residual.ResidualCorrelation.from_kernel(X, residual.Matern(1.5, 0.8),
                                                   n_inducing=max(1, n // 3), seed=seed) \
        if use_residual else X
    tree = residual.CoverTree(obj, seed=seed, batch_size=1 + seed % 7)
    _equal(tree.query(k=k, predecessors=pred),
           residual.brute_force_knn(obj, k, predecessors=pred), tol=1e-8, D_full=_full(obj))


def test_query_arguments():
    X = harness_like(50)
    tree = residual.CoverTree(X)
    with pytest.raises(ValueError, match="k = 50 is larger"):
        tree.query(k=50)
    with pytest.raises(ValueError, match="Y has 2 columns"):
        tree.query(np.zeros((3, 2)), k=1)
    with pytest.raises(ValueError, match="predecessors=True applies to in-sample"):
        tree.query(X[:2], k=1, predecessors=True)
    with pytest.raises(TypeError, match="k must be an integer"):
        tree.query(k=1.5)
    with pytest.raises(ValueError, match="Y contains NaN"):
        tree.query(np.full((1, 3), np.nan), k=1)
    d, i = tree.query(np.zeros((0, 3)), k=2)
    assert d.shape == (0, 2)


def test_ties_of_the_square_root_break_like_the_oracle():
    # two squared distances one ulp apart share a square root: both paths select on the
    # squared distance, then order by (distance, index)
    X = np.array([[0.003, 0.002], [0.003, 0.003]])
    Y = np.array([[4000000.5, 0.5]])
    got = residual.CoverTree(X).query(Y, k=1)
    want = residual.brute_force_knn(X, 1, Y)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])


def test_new_points_do_not_depend_on_their_companions():
    # V of a new point is one triangular solve of its own: the same bits whatever other points
    # are queried with it, in any order, with any thread count
    X = harness_like(1500)
    model = residual.ResidualCorrelation.from_kernel(X, residual.RBF(), n_inducing=200)
    tree = residual.CoverTree(model)
    Y = harness_like(333, seed=5)
    d, i = tree.query(Y, k=6, num_threads=2)
    for part, nt in ((slice(0, 1), 1), (slice(17, 250), 1), (slice(None, None, -1), 2)):
        dp, ip = tree.query(Y[part], k=6, num_threads=nt)
        np.testing.assert_array_equal(dp, d[part])
        np.testing.assert_array_equal(ip, i[part])
    for data in (model, X):                 # the brute force too (it pads to whole tiles)
        d, i = residual.brute_force_knn(data, 6, Y=Y, num_threads=2)
        for part in (slice(40, 41), slice(17, 250), slice(None, None, -1)):
            dp, ip = residual.brute_force_knn(data, 6, Y=Y[part], num_threads=1,
                                              chunk_size=50)
            np.testing.assert_array_equal(dp, d[part])
            np.testing.assert_array_equal(ip, i[part])


def test_layout_maps_every_row_to_its_node():
    """The search seeds its bound through row -> node; aliases map to their node's row."""
    X = np.round(harness_like(400, seed=3) * 2)          # many duplicates: aliases
    tree = residual.CoverTree(X)
    layout = tree._layout()
    node_of = np.asarray(layout.node_of)
    assert tree.stats["aliases"] > 0 and (node_of >= 0).all()
    np.testing.assert_array_equal(np.asarray(layout.metric.x)[node_of], X)


@pytest.mark.parametrize("kernel", [residual.RBF(1.0), residual.Matern(nu=0.5, lengthscale=0.7),
                                    residual.Matern(nu=2.5, lengthscale=1.3)])
def test_residual_tree_answers_are_the_oracles_bits(kernel):
    # the bounded search scores its candidates with the brute force's arithmetic
    # (_search.pyx, "bounded search"): indices and distances equal the oracle's exactly, in
    # every mode
    X = np.random.default_rng(4).standard_normal((1200, 3))
    X[600:620] = X[:20]                                         # duplicates
    model = residual.ResidualCorrelation.from_kernel(X, kernel, n_inducing=60, seed=1,
                                                     nugget=1e-3)
    tree = residual.CoverTree(model)
    Y = np.random.default_rng(5).standard_normal((150, 3))
    for kw in (dict(predecessors=True), dict(), dict(Y=Y), dict(predecessors=True,
                                                                 rows=(300, 700))):
        got = tree.query(k=9, **kw)
        want = residual.brute_force_knn(model, 9, precision="float64", **kw)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(got[0], want[0])
