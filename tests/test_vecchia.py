"""vecchia_neighbors: the ordered model, the predecessor neighbours against brute_force_knn on
the permuted data, padding, the CSR pattern, progress and argument checks."""

import numpy as np
import pytest
import scipy.sparse

import residual
from residual.vecchia import VecchiaNeighbors, vecchia_neighbors
from conftest import harness_like

KERN = residual.RBF(lengthscale=0.8, variance=1.3)
# Few inducing points: residual variances stay well above float64 noise, so two evaluation
# orders of the same distance cannot swap neighbours and indices can be compared exactly.
M = 30


def _model(X, seed=0):
    return residual.ResidualCorrelation.from_kernel(X, KERN, n_inducing=M, seed=seed)


def _reference(X, order, k, metric, model=None):
    """brute_force_knn(predecessors=True) on data built independently in the given order."""
    n = X.shape[0]
    if metric == "residual":
        model = model if model is not None else _model(X)
        data = residual.ResidualCorrelation(X[order], model.kernel, V=model.V[order],
                                            p_diag=model.p_diag[order])
    else:
        data = X[order]
    kk = min(k, max(n - 1, 1))
    d, i = residual.brute_force_knn(data, kk, predecessors=True)
    dist = np.full((n, k), np.inf)
    idx = np.full((n, k), -1, dtype=np.int64)
    dist[:, :kk], idx[:, :kk] = d, i
    return dist, idx


def _assert_same(res, dist, idx):
    np.testing.assert_array_equal(res.neighbors, idx)
    np.testing.assert_allclose(res.distances, dist, rtol=1e-9, atol=1e-12)


def _assert_identical(a, b):
    np.testing.assert_array_equal(a.order, b.order)
    np.testing.assert_array_equal(a.neighbors, b.neighbors)
    np.testing.assert_array_equal(a.distances, b.distances)   # bitwise, inf included


def _explicit(n):
    return np.random.default_rng(7).permutation(n)[::-1].copy()


@pytest.mark.parametrize("metric", ["residual", "euclidean"])
@pytest.mark.parametrize("ordering", ["random", "natural", "explicit"])
def test_equals_brute_force_on_permuted_data(metric, ordering):
    X = harness_like(400, seed=1)
    arg = _explicit(400) if ordering == "explicit" else ordering
    res = vecchia_neighbors(X, KERN, k=8, n_inducing=M, ordering=arg, seed=3, metric=metric)
    expected_order = {"random": np.random.default_rng(3).permutation(400),
                      "natural": np.arange(400), "explicit": arg}[ordering]
    np.testing.assert_array_equal(res.order, expected_order)
    assert res.order.dtype == np.int64
    model = residual.ResidualCorrelation.from_kernel(X, KERN, n_inducing=M, seed=3)
    _assert_same(res, *_reference(X, res.order, 8, metric, model))


def test_prebuilt_model():
    X = harness_like(300, dim=2, seed=2)
    model = residual.ResidualCorrelation.from_kernel(X, residual.Matern(1.5), n_inducing=25,
                                                     seed=5)
    res = vecchia_neighbors(model, k=6, n_inducing=10 ** 9, seed=1)   # n_inducing ignored
    assert res.metric == "residual"
    _assert_same(res, *_reference(X, res.order, 6, "residual", model))
    # the euclidean metric on a model uses its coordinates
    res_e = vecchia_neighbors(model, k=6, metric="euclidean", seed=1)
    _assert_identical(res_e, vecchia_neighbors(X, k=6, metric="euclidean", seed=1))


@pytest.mark.parametrize("metric", ["residual", "euclidean"])
@pytest.mark.parametrize("method", ["brute", "tree"])
@pytest.mark.parametrize("n,k", [(40, 39), (40, 40), (2, 2), (1, 1)])
def test_k_at_least_n(metric, method, n, k):
    X = harness_like(n, seed=4)
    res = vecchia_neighbors(X, KERN, k=k, n_inducing=1, metric=metric, method=method)
    assert res.neighbors.shape == res.distances.shape == (n, k)
    model = residual.ResidualCorrelation.from_kernel(X, KERN, n_inducing=1, seed=0)
    _assert_same(res, *_reference(X, res.order, k, metric, model))


@pytest.mark.parametrize("metric", ["residual", "euclidean"])
def test_padding_contract(metric):
    n, k = 120, 10
    res = vecchia_neighbors(harness_like(n), KERN, k=k, n_inducing=M, metric=metric)
    for i in range(n):
        m = min(k, i)
        row, d = res.neighbors[i], res.distances[i]
        assert (row[:m] >= 0).all() and (row[:m] < i).all()
        assert np.unique(row[:m]).size == m
        assert (row[m:] == -1).all() and np.isinf(d[m:]).all()
        assert np.isfinite(d[:m]).all()
        key = list(zip(d[:m], row[:m]))
        assert key == sorted(key)                  # ascending by (distance, position)
    assert res.stats["n_neighbors"] == sum(min(k, i) for i in range(n))


@pytest.mark.parametrize("ordering", ["random", "natural"])
def test_order_is_a_permutation(ordering):
    res = vecchia_neighbors(harness_like(257), KERN, k=3, n_inducing=M, ordering=ordering)
    assert res.order.dtype == np.int64 and res.order.shape == (257,)
    np.testing.assert_array_equal(np.sort(res.order), np.arange(257))


@pytest.mark.parametrize("k", [1, 7, 200])
def test_to_csr_pattern(k):
    n = 200
    res = vecchia_neighbors(harness_like(n), KERN, k=k, n_inducing=M)
    S = res.to_csr()
    assert isinstance(S, scipy.sparse.csr_matrix)
    assert S.shape == (n, n)
    assert S.nnz == n + sum(min(k, i) for i in range(n))
    assert scipy.sparse.triu(S, k=1).nnz == 0                 # lower triangular
    assert (S.diagonal() == 1).all() and (S.data == 1.0).all()
    assert S.has_sorted_indices
    for i in (0, 1, 5, n - 1):
        expect = np.sort(np.append(res.neighbors[i][res.neighbors[i] >= 0], i))
        np.testing.assert_array_equal(S.indices[S.indptr[i]:S.indptr[i + 1]], expect)
    assert res.to_csr(dtype=bool).dtype == bool


@pytest.mark.parametrize("metric", ["residual", "euclidean"])
def test_tree_equals_brute(metric):
    X = harness_like(600, seed=6)
    kw = dict(k=12, n_inducing=M, metric=metric, seed=2)
    tree = vecchia_neighbors(X, KERN, method="tree", **kw)
    brute = vecchia_neighbors(X, KERN, method="brute", **kw)
    assert (tree.method, brute.method) == ("tree", "brute")
    np.testing.assert_array_equal(tree.neighbors, brute.neighbors)
    # the residual tree scores its answers with the brute force's arithmetic: the same bits
    assert tree.distances.tobytes() == brute.distances.tobytes()
    auto = vecchia_neighbors(X, KERN, **kw)
    assert auto.method == ("brute" if metric == "residual" else "kdtree")


def test_threads_do_not_change_the_answer():
    X = harness_like(500, seed=8)
    for method in ("brute", "tree"):
        one = vecchia_neighbors(X, KERN, k=9, n_inducing=M, method=method, num_threads=1)
        two = vecchia_neighbors(X, KERN, k=9, n_inducing=M, method=method, num_threads=2)
        _assert_identical(one, two)


@pytest.mark.parametrize("method", ["brute", "tree"])
def test_progress(method):
    n = 300
    X = harness_like(n, seed=9)
    calls = []
    res = vecchia_neighbors(X, KERN, k=5, n_inducing=M, method=method,
                            progress=lambda *a: calls.append(a))
    _assert_identical(res, vecchia_neighbors(X, KERN, k=5, n_inducing=M, method=method))
    stages = [c[0] for c in calls]
    assert list(dict.fromkeys(stages)) == ["model", "ordering", "build", "query"]
    for stage in ("model", "ordering", "build", "query"):
        mine = [(d, t) for s, d, t in calls if s == stage]
        totals = {t for _, t in mine}
        assert len(totals) == 1 and totals.pop() >= 1
        done = [d for d, _ in mine]
        assert done[0] == 0 and done[-1] == mine[0][1] and done == sorted(done)
    assert [t for s, _, t in calls if s == "query"][0] == n


@pytest.mark.parametrize("method", ["brute", "tree"])
def test_progress_during_the_query(method, monkeypatch):
    # the query is answered in row blocks when someone listens; the blocks change nothing
    monkeypatch.setattr(residual.vecchia, "QUERY_BLOCK_MIN_ROWS", 40)
    n = 900
    X = harness_like(n, seed=10)
    calls = []
    res = vecchia_neighbors(X, KERN, k=6, n_inducing=M, method=method,
                            progress=lambda *a: calls.append(a))
    _assert_identical(res, vecchia_neighbors(X, KERN, k=6, n_inducing=M, method=method))
    done = [d for s, d, _ in calls if s == "query"]
    assert len(done) > 10 and done == sorted(done) and done[-1] == n
    assert len(set(done)) == len(done)
    if method == "brute":
        assert res.stats["distance_evaluations"] == n * (n - 1) // 2


def test_stats_and_repr():
    res = vecchia_neighbors(harness_like(200), KERN, k=4, n_inducing=M)
    s = res.stats
    assert set(s["seconds"]) == {"model", "ordering", "build", "query", "total"}
    assert all(v >= 0 for v in s["seconds"].values())
    assert s["seconds"]["total"] >= s["seconds"]["query"]
    assert s["distance_evaluations"] == 200 * 199 // 2
    assert s["neighbors_per_second"] > 0
    assert isinstance(res, VecchiaNeighbors)
    assert repr(res).startswith("VecchiaNeighbors(n_samples=200, k=4, metric='residual'")


def test_permuted_model_is_the_same_model():
    X = harness_like(150, seed=10)
    model = _model(X)
    order = np.random.default_rng(1).permutation(150)
    pm = model.take(order)
    for name in ("X", "V", "p_diag", "degenerate", "_inv_sqrt_p", "_xs"):
        np.testing.assert_array_equal(getattr(pm, name), getattr(model, name)[order])
        assert getattr(pm, name).flags.c_contiguous
    np.testing.assert_array_equal(pm.metric.xt, model.metric.xt[:, order])
    np.testing.assert_array_equal(pm.X[pm.inducing], model.X[model.inducing])
    assert model.X is not pm.X and (model.inducing != pm.inducing).any()
    # new points see the same inducing rows, so the same neighbours (renumbered)
    Y = harness_like(20, seed=11)
    d0, i0 = residual.brute_force_knn(model, 5, Y=Y)
    d1, i1 = residual.brute_force_knn(pm, 5, Y=Y)
    np.testing.assert_array_equal(order[i1], i0)
    np.testing.assert_allclose(d1, d0, rtol=1e-12)


@pytest.mark.parametrize("metric", ["residual", "euclidean"])
def test_maximin(metric):
    from residual import maximin_order

    X = harness_like(300, seed=12)
    model = _model(X)
    res = vecchia_neighbors(X, KERN, k=6, n_inducing=M, ordering="maximin", metric=metric)
    expected = maximin_order(model if metric == "residual" else X, start=None)
    np.testing.assert_array_equal(res.order, expected)
    _assert_same(res, *_reference(X, res.order, 6, metric, model))


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(k=0), ValueError, "k must be >= 1"),
    (dict(k=10**9), ValueError, "k = 1000000000 is larger than n_samples"),
    (dict(k=2.5), TypeError, "k must be an integer"),
    (dict(k=True), TypeError, "k must be an integer"),
    (dict(metric="cosine"), ValueError, "metric must be one of"),
    (dict(method="kd"), ValueError, "method must be one of"),
    (dict(ordering="hilbert"), ValueError, "ordering must be one of"),
    (dict(ordering=np.arange(49)), ValueError, "permutation of 0..49"),
    (dict(ordering=np.zeros(50, dtype=int)), ValueError, "each row exactly once"),
    (dict(ordering=np.arange(50) + 1), ValueError, "permutation"),
    (dict(ordering=np.arange(50.0)), TypeError, "integer permutation"),
    (dict(seed=-1), ValueError, "seed must be >= 0"),
    (dict(n_inducing=0), ValueError, "n_inducing must be >= 1"),
    (dict(n_inducing=51), ValueError, "n_inducing must be <= 50"),
    (dict(num_threads=0), ValueError, "num_threads"),
    (dict(progress="yes"), TypeError, "progress must be None or a callable"),
    (dict(kernel=None), ValueError, "kernel is required"),
    (dict(kernel="rbf"), TypeError, "kernel must be a residual kernel"),
    (dict(kernel=residual.RBF(lengthscale=[1.0, 2.0])), ValueError, "lengthscales"),
])
def test_bad_arguments(kwargs, exc, match):
    calls = []
    args = dict(kernel=KERN, k=3, n_inducing=10, progress=lambda *a: calls.append(a))
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        vecchia_neighbors(harness_like(50), **args)
    assert calls == []                      # refused before any work


@pytest.mark.parametrize("X,exc,match", [
    (np.full((5, 2), np.nan), ValueError, "X contains NaN"),
    (np.zeros(5), ValueError, "2-D"),
    (np.zeros((0, 2)), ValueError, "X is empty"),
    (np.array([["a", "b"]]), TypeError, "real numbers"),
    (KERN, TypeError, "not a kernel"),
])
def test_bad_X(X, exc, match):
    with pytest.raises(exc, match=match):
        vecchia_neighbors(X, KERN, k=2, n_inducing=1)


def test_model_with_kernel_is_refused():
    model = _model(harness_like(60))
    with pytest.raises(ValueError, match="kernel must be None"):
        vecchia_neighbors(model, KERN, k=2)


@pytest.mark.parametrize("metric", ["residual", "euclidean"])
def test_read_only_and_non_contiguous_input(metric):
    X = harness_like(400, dim=6, seed=13)
    base = vecchia_neighbors(np.ascontiguousarray(X[:, ::2]), KERN, k=5, n_inducing=M,
                             metric=metric)
    ro = np.ascontiguousarray(X[:, ::2])
    ro.setflags(write=False)
    _assert_identical(base, vecchia_neighbors(ro, KERN, k=5, n_inducing=M, metric=metric))
    _assert_identical(base, vecchia_neighbors(X[:, ::2], KERN, k=5, n_inducing=M,
                                              metric=metric))
