"""Bad input is refused with a clear error naming the argument, before any work starts."""

import numpy as np
import pytest

import residual

X = np.random.default_rng(0).standard_normal((30, 3))
KERN = residual.RBF()
MODEL = residual.ResidualCorrelation.from_kernel(X, KERN, n_inducing=8)


@pytest.mark.parametrize("bad, exc, match", [
    (np.array([[np.nan, 0.0, 1.0]] * 5), ValueError, "X contains NaN or inf"),
    (np.array([[np.inf, 0.0, 1.0]] * 5), ValueError, "X contains NaN or inf"),
    (np.zeros(5), ValueError, "X must be a 2-D array"),
    (np.zeros((2, 2, 2)), ValueError, "X must be a 2-D array"),
    (np.zeros((0, 3)), ValueError, "X is empty"),
    (np.zeros((4, 0)), ValueError, "X has no columns"),
    (np.array([["a", "b"], ["c", "d"]]), TypeError, "X must hold real numbers"),
    (np.array([[object(), 1.0]], dtype=object), TypeError, "X must be a numeric array"),
    (np.ones((3, 2), dtype=complex), TypeError, "X must hold real numbers"),
    (np.ones((3, 2), dtype=bool), TypeError, "X must hold real numbers"),
    ([[1, 2], [3]], TypeError, "X must be a numeric array"),
])
def test_bad_coordinates(bad, exc, match):
    with pytest.raises(exc, match=match):
        residual.brute_force_knn(bad, 1)
    with pytest.raises(exc, match=match):
        residual.ResidualCorrelation.from_kernel(bad, KERN, n_inducing=1)


def test_object_array_of_numbers_is_accepted():
    d, i = residual.brute_force_knn(X.astype(object), 2)
    assert i.shape == (30, 2)


@pytest.mark.parametrize("k, match", [
    (0, "k must be >= 1"), (-3, "k must be >= 1"), (30, "k = 30 is larger"),
    (2.0, "k must be an integer"), (True, "k must be an integer"), ("5", "k must be an integer"),
])
def test_bad_k(k, match):
    exc = TypeError if "integer" in match else ValueError
    with pytest.raises(exc, match=match):
        residual.brute_force_knn(X, k)
    with pytest.raises(exc, match=match):
        residual.brute_force_knn(MODEL, k)


def test_k_limits_per_mode():
    residual.brute_force_knn(X, 29)                            # n - 1 others
    residual.brute_force_knn(X, 30, predecessors=True)         # padded rows
    residual.brute_force_knn(X, 30, X[:2])                     # new points: all n
    with pytest.raises(ValueError, match="larger than n_samples"):
        residual.brute_force_knn(X, 31, X[:2])
    with pytest.raises(ValueError, match="larger than n_samples"):
        residual.brute_force_knn(X, 31, predecessors=True)


def test_bad_queries():
    with pytest.raises(ValueError, match="Y has 2 columns but 3 were expected"):
        residual.brute_force_knn(X, 1, np.zeros((4, 2)))
    with pytest.raises(ValueError, match="Y has 2 columns"):
        residual.brute_force_knn(MODEL, 1, np.zeros((4, 2)))
    with pytest.raises(ValueError, match="Y contains NaN"):
        residual.brute_force_knn(MODEL, 1, np.full((1, 3), np.nan))
    with pytest.raises(ValueError, match="predecessors=True applies to in-sample"):
        residual.brute_force_knn(X, 1, X[:3], predecessors=True)
    with pytest.raises(TypeError, match="predecessors must be a bool"):
        residual.brute_force_knn(X, 1, predecessors="yes")
    d, i = residual.brute_force_knn(X, 3, np.zeros((0, 3)))   # no queries: empty answer
    assert d.shape == (0, 3) and i.shape == (0, 3)


def test_new_points_need_a_kernel_built_model():
    m = residual.ResidualCorrelation(X, KERN, V=MODEL.V, p_diag=MODEL.p_diag)
    with pytest.raises(ValueError, match="from_kernel"):
        residual.brute_force_knn(m, 1, X[:2])


@pytest.mark.parametrize("kw, exc, match", [
    ({"num_threads": 0}, ValueError, "num_threads must be a non-zero"),
    ({"num_threads": 1.5}, TypeError, "num_threads must be an integer"),
    ({"chunk_size": 0}, ValueError, "chunk_size must be >= 1"),
    ({"chunk_size": "8"}, TypeError, "chunk_size must be an integer"),
])
def test_bad_parallel_arguments(kw, exc, match):
    with pytest.raises(exc, match=match):
        residual.brute_force_knn(X, 1, **kw)


def test_kernel_instead_of_model():
    with pytest.raises(TypeError, match="not a kernel"):
        residual.brute_force_knn(KERN, 1)
    with pytest.raises(TypeError, match="kernel must be a residual kernel"):
        residual.ResidualCorrelation.from_kernel(X, "rbf")


@pytest.mark.parametrize("kw, exc, match", [
    ({"n_inducing": 31}, ValueError, "n_inducing must be <= 30"),
    ({"n_inducing": 0}, ValueError, "n_inducing must be >= 1"),
    ({"n_inducing": 2.5}, TypeError, "n_inducing must be an integer"),
    ({"seed": -1, "n_inducing": 8}, ValueError, "seed must be >= 0"),
    ({"jitter": 0.0, "n_inducing": 8}, ValueError, "jitter must be"),
    ({"inducing": [0, 0, 1]}, ValueError, "inducing indices must be distinct"),
    ({"inducing": [0, 30]}, ValueError, r"inducing indices must lie in \[0, 29\]"),
    ({"inducing": [0.5, 1.0]}, TypeError, "inducing must be integer"),
    ({"inducing": []}, ValueError, "inducing must be a non-empty"),
])
def test_bad_model_arguments(kw, exc, match):
    with pytest.raises(exc, match=match):
        residual.ResidualCorrelation.from_kernel(X, KERN, **kw)


def test_bad_user_factors():
    V, p = MODEL.V, MODEL.p_diag
    with pytest.raises(ValueError, match="V has 29 rows but X has 30"):
        residual.ResidualCorrelation(X, KERN, V=V[:29], p_diag=p)
    with pytest.raises(ValueError, match=r"p_diag must have shape \(30,\)"):
        residual.ResidualCorrelation(X, KERN, V=V, p_diag=p[:29])
    with pytest.raises(ValueError, match="p_diag must be >= 0"):
        residual.ResidualCorrelation(X, KERN, V=V, p_diag=p - 1.0)
    with pytest.raises(ValueError, match="V contains NaN"):
        residual.ResidualCorrelation(X, KERN, V=np.full_like(V, np.nan), p_diag=p)
    with pytest.raises(ValueError, match="p_diag contains NaN"):
        residual.ResidualCorrelation(X, KERN, V=V, p_diag=np.full(30, np.nan))


def test_coordinates_that_would_overflow():
    big = np.array([[1e200, 0.0], [0.0, 1.0], [1.0, 1.0]])
    with pytest.raises(ValueError, match="X has entries above 1e150"):
        residual.brute_force_knn(big, 1)
    with pytest.raises(ValueError, match="X has entries above 1e150"):
        residual.CoverTree(big)
    with pytest.raises(ValueError, match="Y has entries above 1e150"):
        residual.brute_force_knn(big[1:], 1, big[:1])


def test_values_that_would_overflow_the_residual_model():
    with pytest.raises(ValueError, match="lengthscale is too small"):
        residual.RBF(lengthscale=1e-310)
    huge = np.array([[1e308], [1.5e308], [1.7e308]])          # their mean overflows
    with pytest.raises(ValueError, match="overflows float64"):
        residual.ResidualCorrelation.from_kernel(huge, KERN, n_inducing=2)


def test_far_apart_points_get_zero_kernel_not_nan():
    # r^2 overflows: the Matern polynomial must not turn exp's 0 into NaN or inf
    X = np.array([[0.0], [1e155], [2e155]])
    for kern in (residual.Matern(2.5), residual.Matern(1.5), residual.RBF()):
        np.testing.assert_array_equal(kern(X), np.eye(3) * kern.variance)


def test_oversized_parallel_arguments_are_safe():
    d, i = residual.brute_force_knn(X, 3, chunk_size=2 ** 62)
    np.testing.assert_array_equal(i, residual.brute_force_knn(X, 3)[1])
    tree = residual.CoverTree(X, batch_size=10 ** 9)          # clamped to the data
    tree.check_invariants()
    with pytest.raises(ValueError, match="num_threads must be <="):
        residual.brute_force_knn(X, 1, num_threads=2 ** 31)


# -- small API gaps: seeds, reprs, missing values, small-data defaults ----------------------------

def _drawn_seed(generator_seed):
    """The int seed that resolve_seed draws from default_rng(generator_seed)."""
    return int(np.random.default_rng(generator_seed).integers(1 << 63))


def _same_tree(a, b):
    return all(np.array_equal(getattr(a, key), getattr(b, key))
               for key in ("levels", "parents", "alias_of", "children_ptr", "children"))


@pytest.mark.parametrize("data", [X, MODEL], ids=["euclidean", "residual"])
def test_tree_seed_generator_and_none(data):
    tree = residual.CoverTree(data, seed=np.random.default_rng(5))
    assert tree.seed == _drawn_seed(5)                      # recorded as the int it drew
    assert _same_tree(tree, residual.CoverTree(data, seed=tree.seed))
    fresh = residual.CoverTree(data, seed=None)
    assert isinstance(fresh.seed, int) and fresh.seed >= 0
    assert _same_tree(fresh, residual.CoverTree(data, seed=fresh.seed))
    fresh.check_invariants()


def test_vecchia_seed_generator_and_none():
    g = np.random.default_rng(9)
    res = residual.vecchia_neighbors(X, KERN, k=4, n_inducing=8, seed=g)
    ref = residual.vecchia_neighbors(X, KERN, k=4, n_inducing=8, seed=_drawn_seed(9))
    np.testing.assert_array_equal(res.order, ref.order)
    np.testing.assert_array_equal(res.neighbors, ref.neighbors)
    # the generator advanced: the next call draws another seed
    again = residual.vecchia_neighbors(X, KERN, k=4, n_inducing=8, seed=g)
    assert not np.array_equal(again.order, res.order)
    res = residual.vecchia_neighbors(X, KERN, k=4, n_inducing=8, seed=None)
    assert sorted(res.order) == list(range(len(X)))
    # an int seed draws what it always drew
    res = residual.vecchia_neighbors(X, KERN, k=4, n_inducing=8, seed=3)
    np.testing.assert_array_equal(res.order, np.random.default_rng(3).permutation(len(X)))


def test_refused_call_leaves_the_generator_alone():
    g = np.random.default_rng(2)
    state = g.bit_generator.state
    with pytest.raises(ValueError, match="k must be >= 1"):
        residual.vecchia_neighbors(X, KERN, k=0, seed=g)
    with pytest.raises(ValueError, match="schedule must be"):
        residual.CoverTree(X, seed=g, schedule="halving")
    with pytest.raises(ValueError, match="num_threads must be a non-zero integer"):
        residual.ResidualCorrelation.from_kernel(X, KERN, n_inducing=4, seed=g, num_threads=0)
    with pytest.raises(ValueError, match="lengthscales"):
        residual.ResidualCorrelation.from_kernel(X, residual.RBF([1.0, 2.0]), n_inducing=4,
                                                 seed=g)
    assert g.bit_generator.state == state


@pytest.mark.parametrize("seed", [np.random.RandomState(0), 1.5, "0", True])
def test_bad_seed_types(seed):
    with pytest.raises(TypeError, match="seed must be an integer >= 0, a numpy.random."
                                        "Generator or None"):
        residual.vecchia_neighbors(X, KERN, k=2, n_inducing=4, seed=seed)


def test_cover_tree_repr():
    assert repr(residual.CoverTree(X, seed=4)) == (
        f"CoverTree(metric='euclidean', n_samples=30, n_features=3, "
        f"height={residual.CoverTree(X, seed=4).height}, seed=4)")
    text = repr(residual.CoverTree(MODEL))
    assert text.startswith(f"CoverTree(metric='residual', model={MODEL!r}, height=")


def test_missing_values_are_named_without_pandas():
    # what a nullable pandas column hands NumPy: an object array holding pandas.NA, an
    # instance of pandas' NAType (the check goes by that name, so pandas need not be loaded)
    na = type("NAType", (), {})()
    bad = X.astype(object)
    bad[4, 1] = na
    with pytest.raises(ValueError, match="X has missing values"):
        residual.brute_force_knn(bad, 1)
    with pytest.raises(ValueError, match="inducing has missing values"):
        residual.ResidualCorrelation.from_kernel(X, KERN, inducing=np.array([1, na], object))


def test_pandas_missing_values_are_named():
    pd = pytest.importorskip("pandas")
    for dtype in ("Float64", "Int64"):
        df = pd.DataFrame({"x": pd.array([1, pd.NA] + [3] * 28, dtype=dtype),
                           "y": np.arange(30.0), "z": np.ones(30)})
        with pytest.raises(ValueError, match="X has missing values"):
            residual.brute_force_knn(df, 1)
        with pytest.raises(ValueError, match="X has missing values"):
            residual.vecchia_neighbors(df, KERN, k=2)
    full = pd.DataFrame(X, columns=["a", "b", "c"]).astype("Float64")
    np.testing.assert_array_equal(residual.brute_force_knn(full, 2)[1],
                                  residual.brute_force_knn(X, 2)[1])


def test_default_inducing_points_fit_small_data():
    # n_inducing=None is min(200, n - 1): 29 here, where 200 would be refused
    res = residual.vecchia_neighbors(X, KERN, k=5)
    ref = residual.vecchia_neighbors(X, KERN, k=5, n_inducing=29)
    np.testing.assert_array_equal(res.neighbors, ref.neighbors)
    np.testing.assert_array_equal(res.distances, ref.distances)
    with pytest.raises(ValueError, match="n_inducing must be <= 30, got 31"):
        residual.vecchia_neighbors(X, KERN, k=5, n_inducing=31)
    assert [residual.vecchia.default_n_inducing(n) for n in (1, 2, 30, 201, 10**6)] == [
        1, 1, 29, 200, 200]
