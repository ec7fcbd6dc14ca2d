"""Inducing points (rows, coordinates, k-means++) and the nugget-aware residual distance, against
dense float64 NumPy references; tree, brute force and maximin agree with them."""

import numpy as np
import pytest

import residual
from conftest import harness_like
from reference import assert_knn_equal, kernel_ref, knn_ref, residual_dist_ref
from test_ordering import assert_valid_maximin, maximin_ref, mean_start

RTOL = residual.DEGENERATE_P_RTOL


def model_ref_points(X, kernel, U, jitter):
    """(L, V, p) for inducing coordinates U, with numpy.linalg."""
    kuu = kernel_ref(kernel, U, U) + jitter * kernel.variance * np.eye(len(U))
    L = np.linalg.cholesky(kuu)
    V = np.linalg.solve(L, kernel_ref(kernel, U, X)).T
    return L, V, kernel.variance - (V ** 2).sum(1)


def nugget_dist_ref(model, nugget, Y=None):
    """Dense d = sqrt(1 - |C| / sqrt((p_i + s2)(p_j + s2))), from coordinates and U alone."""
    U = model.inducing_points
    _, V, p = model_ref_points(model.X, model.kernel, U, model.jitter)
    if Y is None:
        Yq, Vq, pq = model.X, V, p
    else:
        _, Vq, pq = model_ref_points(Y, model.kernel, U, model.jitter)
        Yq = Y
    return residual_dist_ref(model.kernel, Yq, Vq, pq + nugget, model.X, V, p + nugget, RTOL)


def _check_knn(got, D, k, tol=1e-9, **mode):
    d_ref, i_ref = knn_ref(D, k, **mode)
    assert_knn_equal(*got, d_ref, i_ref, D_full=D, tol=tol)


def _blobs(n, centres, spread, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.asarray(centres, dtype=float)
    labels = rng.integers(len(centres), size=n)
    return centres[labels] + spread * rng.standard_normal((n, centres.shape[1])), labels


# -- inducing points ------------------------------------------------------------------------------

def test_coordinates_match_the_reference(any_kernel):
    X = harness_like(250)
    U = np.random.default_rng(7).uniform(-2, 2, size=(30, 3))
    model = residual.ResidualCorrelation.from_kernel(X, any_kernel, inducing=U)
    L, V, p = model_ref_points(X, any_kernel, U, 1e-6)
    np.testing.assert_allclose(model.L, L, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(model.V @ model.V.T, V @ V.T, rtol=0, atol=1e-9)
    np.testing.assert_allclose(model.p_diag, p, rtol=0, atol=1e-9 * any_kernel.variance)
    assert model.inducing is None
    np.testing.assert_array_equal(model.inducing_points, U)
    assert model.n_inducing == 30


def test_coordinates_of_rows_give_the_row_model_bit_for_bit():
    X = harness_like(300, seed=1)
    kern = residual.Matern(1.5, lengthscale=[0.5, 1.0, 2.0])
    rows = np.array([5, 90, 17, 250, 3])
    by_rows = residual.ResidualCorrelation.from_kernel(X, kern, inducing=rows)
    by_points = residual.ResidualCorrelation.from_kernel(X, kern, inducing=X[rows])
    for key in ("V", "p_diag", "L", "_us", "_inv_sqrt_p"):
        assert getattr(by_rows, key).tobytes() == getattr(by_points, key).tobytes(), key
    np.testing.assert_array_equal(by_rows.inducing, rows)
    np.testing.assert_array_equal(by_rows.inducing_points, X[rows])


def test_random_is_the_default_and_draws_as_before():
    X = harness_like(200, seed=2)
    a = residual.ResidualCorrelation.from_kernel(X, residual.RBF(), n_inducing=20, seed=4)
    b = residual.ResidualCorrelation.from_kernel(X, residual.RBF(), n_inducing=20, seed=4,
                                                 inducing="random")
    expected = np.random.default_rng(4).choice(200, 20, replace=False)
    np.testing.assert_array_equal(a.inducing, expected)
    assert a.V.tobytes() == b.V.tobytes()


def test_kmeanspp_finds_separated_clusters():
    centres = [[0, 0], [10, 0], [0, 10], [10, 10]]        # key x + 100 y ascending
    X, labels = _blobs(400, centres, 0.3, seed=3)
    model = residual.ResidualCorrelation.from_kernel(X, residual.RBF(), n_inducing=4,
                                                     inducing="kmeans++", seed=5)
    assert model.inducing is None and model.inducing_points.shape == (4, 2)
    # one centre per blob, at the blob's mean (Lloyd converges on clusters this clear)
    got = model.inducing_points[np.argsort(np.round(model.inducing_points) @ [1, 100])]
    want = np.array([X[labels == c].mean(axis=0) for c in range(4)])  # blobs in that order
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_kmeanspp_is_seeded_and_beats_random_rows_on_clusters():
    X, _ = _blobs(1500, np.random.default_rng(0).uniform(-4, 4, size=(40, 3)), 0.05, seed=6)
    kern = residual.Matern(2.5, lengthscale=0.5)

    def km(seed):
        return residual.ResidualCorrelation.from_kernel(X, kern, n_inducing=40, seed=seed,
                                                        inducing="kmeans++")
    a, b, c = km(1), km(1), km(2)
    assert a.inducing_points.tobytes() == b.inducing_points.tobytes()
    assert not np.array_equal(a.inducing_points, c.inducing_points)
    rand = residual.ResidualCorrelation.from_kernel(X, kern, n_inducing=40, seed=1)
    # centres inside the clusters explain more of the variance than random rows
    assert a.p_diag.mean() < 0.5 * rand.p_diag.mean()


def test_kmeanspp_with_fewer_distinct_rows_than_centres():
    distinct = harness_like(3, dim=2, seed=8)
    X = np.repeat(distinct, 10, axis=0)
    model = residual.ResidualCorrelation.from_kernel(X, residual.RBF(), n_inducing=5,
                                                     inducing="kmeans++", jitter=1e-4)
    # every centre sits on a distinct row (the mean of its copies), and each row has one
    gap = np.sqrt(((model.inducing_points[:, None] - distinct[None]) ** 2).sum(-1))
    assert (gap.min(axis=1) < 1e-12).all() and (gap.min(axis=0) < 1e-12).all()
    assert np.isfinite(model.V).all()


@pytest.mark.parametrize("kw, exc, match", [
    ({"inducing": "kmeans"}, ValueError, "inducing must be one of"),
    ({"inducing": np.zeros((4, 2))}, ValueError, "inducing has 2 columns but 3"),
    ({"inducing": np.zeros((0, 3))}, ValueError, "inducing is empty"),
    ({"inducing": [0.0, 1.0]}, TypeError, "inducing must be integer row indices when 1-D"),
    ({"inducing": [[0.0, 1.0, np.nan]]}, ValueError, "inducing contains NaN"),
    ({"inducing": np.zeros((2, 3, 1))}, ValueError, "inducing must be a non-empty 1-D"),
    ({"inducing": "kmeans++", "n_inducing": 31}, ValueError, "n_inducing must be <= 30"),
    ({"nugget": -1e-3}, ValueError, "nugget must be a finite number >= 0"),
    ({"nugget": np.inf}, ValueError, "nugget must be a finite number >= 0"),
    ({"nugget": True}, TypeError, "nugget must be a real number"),
    ({"nugget": "0.1"}, TypeError, "nugget must be a real number"),
], ids=repr)
def test_bad_arguments(kw, exc, match):
    X = harness_like(30)
    with pytest.raises(exc, match=match):
        residual.ResidualCorrelation.from_kernel(X, residual.RBF(), **{"n_inducing": 8, **kw})


def test_bad_nugget_for_user_factors_and_vecchia():
    X = harness_like(30)
    model = residual.ResidualCorrelation.from_kernel(X, residual.RBF(), n_inducing=8)
    with pytest.raises(ValueError, match="nugget must be a finite number >= 0"):
        residual.ResidualCorrelation(X, model.kernel, V=model.V, p_diag=model.p_diag,
                                     nugget=np.nan)
    with pytest.raises(ValueError, match="nugget must be 0 when X is a prebuilt"):
        residual.vecchia_neighbors(model, k=3, nugget=0.1)
    with pytest.raises(ValueError, match="nugget must be a finite number >= 0"):
        residual.vecchia_neighbors(X, residual.RBF(), k=3, n_inducing=8, nugget=-1.0)
    with pytest.raises(ValueError, match="inducing must be one of"):
        residual.vecchia_neighbors(X, residual.RBF(), k=3, n_inducing=8, inducing="grid")


# -- the nugget -----------------------------------------------------------------------------------

NUGGETS = [1e-6, 1e-2, 0.5]


def _noisy_model(nugget, inducing="random", n=500, seed=0, duplicates=True):
    X = harness_like(n, seed=seed)
    if duplicates:
        X[-15:] = X[:15]           # duplicates: distance sqrt(s2 / (p + s2)) > 0 with a nugget
    return residual.ResidualCorrelation.from_kernel(X, residual.Matern(1.5, lengthscale=0.7),
                                                    n_inducing=60, seed=seed,
                                                    inducing=inducing, nugget=nugget)


@pytest.mark.parametrize("nugget", NUGGETS)
@pytest.mark.parametrize("inducing", ["random", "kmeans++"])
def test_brute_force_and_tree_match_the_dense_reference(nugget, inducing):
    model = _noisy_model(nugget, inducing)
    D = nugget_dist_ref(model, nugget)
    tree = residual.CoverTree(model)
    tree.check_invariants()
    Y = harness_like(40, seed=9) * 1.2
    DY = nugget_dist_ref(model, nugget, Y)
    for searcher in (residual.brute_force_knn, tree.query):
        call = (lambda **kw: searcher(model, **kw)) if searcher is residual.brute_force_knn \
            else (lambda **kw: searcher(**kw))
        _check_knn(call(k=9), D, 9, in_sample=True)
        _check_knn(call(k=9, predecessors=True), D, 9, in_sample=True, predecessors=True)
        _check_knn(call(k=9, Y=Y), DY, 9)


def test_nugget_makes_duplicates_distinct_and_distances_longer():
    plain, noisy = _noisy_model(0.0), _noisy_model(0.05)
    d0, _ = residual.brute_force_knn(plain, 1)
    d1, _ = residual.brute_force_knn(noisy, 1)
    dup = np.arange(15)
    assert (d0[dup, 0] ** 2 <= 1e-9).all()              # an exact duplicate: distance ~0
    p = noisy.p_diag[dup]
    # ... with a nugget: rho = p / (p + s2), the two noises being independent
    np.testing.assert_allclose(d1[dup, 0] ** 2, 0.05 / (p + 0.05), rtol=0, atol=1e-9)
    assert (d1 ** 2 >= d0 ** 2 - 1e-9).all()


def test_nugget_rescues_degenerate_rows():
    # inducing rows with a tiny jitter keep p ~ 1e-12 there: degenerate without a nugget
    X = harness_like(200)
    rows = np.arange(0, 200, 20)
    kw = dict(inducing=rows, jitter=1e-12)
    plain = residual.ResidualCorrelation.from_kernel(X, residual.RBF(), **kw)
    noisy = residual.ResidualCorrelation.from_kernel(X, residual.RBF(), nugget=1e-3, **kw)
    assert plain.degenerate[rows].all() and not noisy.degenerate.any()
    assert repr(noisy).endswith("nugget=0.001)") and "nugget" not in repr(plain)
    assert noisy.p_diag.tobytes() == plain.p_diag.tobytes()      # p excludes the nugget
    D = nugget_dist_ref(noisy, 1e-3)
    _check_knn(residual.brute_force_knn(noisy, 5), D, 5, in_sample=True)
    tree = residual.CoverTree(noisy)
    tree.check_invariants()
    _check_knn(tree.query(k=5), D, 5, in_sample=True)


def test_maximin_with_a_nugget():
    model = _noisy_model(1e-2, n=300)
    order, dist = residual.maximin_order(model, return_distances=True)
    D = nugget_dist_ref(model, 1e-2)
    np.fill_diagonal(D, 0.0)
    start = mean_start(model.X)
    assert_valid_maximin(order, dist, D, start)
    ref_order, _, near_tie = maximin_ref(D, start)
    if not near_tie:
        np.testing.assert_array_equal(order, ref_order)


@pytest.mark.parametrize("ordering", ["random", "maximin"])
def test_vecchia_passes_inducing_and_nugget_through(ordering):
    X = harness_like(400, seed=4)
    kern = residual.RBF(lengthscale=0.6)
    res = residual.vecchia_neighbors(X, kern, k=6, n_inducing=30, inducing="kmeans++",
                                     nugget=1e-2, ordering=ordering, seed=3)
    model = residual.ResidualCorrelation.from_kernel(X, kern, n_inducing=30, seed=3,
                                                     inducing="kmeans++", nugget=1e-2)
    D = nugget_dist_ref(model, 1e-2)[np.ix_(res.order, res.order)]
    _check_knn((res.distances, res.neighbors), D, 6, in_sample=True, predecessors=True)
    tree_res = residual.vecchia_neighbors(X, kern, k=6, n_inducing=30, inducing="kmeans++",
                                          nugget=1e-2, ordering=ordering, seed=3, method="tree")
    np.testing.assert_array_equal(tree_res.neighbors, res.neighbors)


def test_permuted_model_answers_new_points_as_the_original():
    model = _noisy_model(1e-3, inducing="kmeans++", n=300, duplicates=False)
    order = np.random.default_rng(0).permutation(300)
    permuted = model.take(order)
    assert permuted.nugget == model.nugget and permuted.inducing is None
    Y = harness_like(20, seed=11)
    d, i = residual.brute_force_knn(model, 5, Y)
    dp, ip = residual.brute_force_knn(permuted, 5, Y)
    np.testing.assert_array_equal(order[ip], i)
    np.testing.assert_allclose(dp, d, rtol=0, atol=1e-12)
