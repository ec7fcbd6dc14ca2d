"""maximin_order against an O(n^2) NumPy farthest-first reference on the float64 oracle."""

import threading
import _thread

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

import residual
from residual import ordering
from residual.ordering import maximin_order

from conftest import harness_like
from reference import euclidean_dist_ref, residual_dist_ref

TOL = 1e-9      # on squared distances: the oracle and the compiled pair rounding differ


def dist_matrix(data):
    """The oracle's float64 distance matrix for coordinates or a model."""
    if isinstance(data, residual.ResidualCorrelation):
        m = data
        return residual_dist_ref(m.kernel, m.X, m.V, m.p_diag, m.X, m.V, m.p_diag,
                                 residual.DEGENERATE_P_RTOL)
    X = np.asarray(data, dtype=float)
    return euclidean_dist_ref(X, X)


def mean_start(X):
    X = np.asarray(X, dtype=float)
    return int(np.argmin(((X - X.mean(axis=0)) ** 2).sum(axis=1)))


def maximin_ref(D, start):
    """Farthest-first traversal of D: (order, dist, near_tie) with near_tie True when some
    step's runner-up was within TOL of the chosen distance without equalling it (the compiled
    pair rounding may then choose differently)."""
    n = D.shape[0]
    order, dist = np.empty(n, dtype=np.int64), np.empty(n)
    order[0], dist[0] = start, np.inf
    chosen = np.zeros(n, bool)
    chosen[start] = True
    dmin = np.where(chosen, -1.0, D[start])
    near_tie = False
    for t in range(1, n):
        c = int(np.argmax(dmin))                  # the first maximum: ties -> smallest index
        gap = dmin[c] ** 2 - dmin[~chosen] ** 2
        near_tie |= bool(((gap > 0) & (gap <= TOL)).any())
        order[t], dist[t] = c, dmin[c]
        chosen[c] = True
        dmin = np.where(chosen, -1.0, np.minimum(dmin, D[c]))
    return order, dist, near_tie


def assert_valid_maximin(order, dist, D, start):
    """order is a farthest-first traversal of D up to TOL, and dist its distances."""
    n = D.shape[0]
    assert order.dtype == np.int64 and dist.dtype == np.float64
    np.testing.assert_array_equal(np.sort(order), np.arange(n))
    assert order[0] == start and dist[0] == np.inf
    dmin = D[start].copy()
    chosen = np.zeros(n, bool)
    chosen[start] = True
    for t in range(1, n):
        c = order[t]
        assert not chosen[c]
        assert abs(dist[t] ** 2 - dmin[c] ** 2) <= TOL, f"step {t}: distance {dist[t]!r}"
        best = dmin[~chosen].max()
        assert dmin[c] ** 2 >= best ** 2 - TOL, f"step {t}: {c} is not the farthest"
        # exact ties in the oracle (duplicates at 0, degenerate rows at 1): smallest index
        assert not (~chosen[:c] & (dmin[:c] == best) & (dmin[c] < best)).any()
        chosen[c] = True
        dmin = np.minimum(dmin, D[c])


def check(data, start=None, **kw):
    """maximin_order(data) equals the reference (exactly where no near-tie)."""
    order, dist = maximin_order(data, start=start, return_distances=True, **kw)
    coords = data.X if isinstance(data, residual.ResidualCorrelation) else data
    s = mean_start(coords) if start is None else start
    D = dist_matrix(data)
    assert_valid_maximin(order, dist, D, s)
    ref_order, ref_dist, near_tie = maximin_ref(D, s)
    if not near_tie:
        np.testing.assert_array_equal(order, ref_order)
    return order, dist


def model(X, kernel=None, m=16, seed=0):
    kernel = residual.RBF(lengthscale=0.7) if kernel is None else kernel
    return residual.ResidualCorrelation.from_kernel(X, kernel, n_inducing=min(m, len(X)),
                                                    seed=seed)


# -- agreement with the reference ----------------------------------------------------------------

@pytest.mark.parametrize("n,dim", [(300, 2), (600, 3), (50, 1)])
def test_euclidean_matches_reference(n, dim):
    check(harness_like(n, dim, seed=n))


def test_residual_matches_reference(any_kernel):
    check(model(harness_like(250, 2, seed=1), any_kernel))


def test_residual_harness_like():
    check(model(harness_like(400, 3, seed=2), residual.RBF(lengthscale=1.0), m=32))


def test_ard_lengthscales():
    X = harness_like(300, 3, seed=3) * [1.0, 3.0, 0.3]
    check(model(X, residual.Matern(2.5, lengthscale=[0.5, 2.0, 0.2])))
    check(X)


@pytest.mark.parametrize("metric", ["euclidean", "residual"])
def test_start_given(metric):
    X = harness_like(200, 2, seed=4)
    data = X if metric == "euclidean" else model(X)
    for start in (0, 17, 199):
        order, _ = check(data, start=start)
        assert order[0] == start


@pytest.mark.parametrize("metric", ["euclidean", "residual"])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_tiny(metric, n):
    X = harness_like(n, 2, seed=5)
    data = X if metric == "euclidean" else model(X, m=1)
    order, dist = check(data)
    assert order.shape == (n,) and dist[0] == np.inf
    order, dist = check(data, start=n - 1)


def test_default_start_is_nearest_the_mean():
    X = harness_like(100, 2, seed=6)
    order = maximin_order(X)
    assert order[0] == mean_start(X)
    m = model(X)
    assert maximin_order(m)[0] == mean_start(X)      # raw coordinates, also for a model


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_grid_ties_go_by_index(dim):
    """On an integer grid every distance is exact, so the oracle's ties are exact: the order
    must be the reference's, position for position, ties by the smallest index."""
    side = {1: 40, 2: 13, 3: 7}[dim]
    axes = np.meshgrid(*[np.arange(side, dtype=float)] * dim, indexing="ij")
    X = np.stack([a.ravel() for a in axes], axis=1)
    X = X[np.random.default_rng(dim).permutation(len(X))]      # ties not in storage order
    for start in (None, 0, len(X) - 1):
        order, dist = maximin_order(X, start=start, return_distances=True)
        s = mean_start(X) if start is None else start
        ref_order, ref_dist, near_tie = maximin_ref(dist_matrix(X), s)
        assert not near_tie
        np.testing.assert_array_equal(order, ref_order)
        np.testing.assert_array_equal(dist, ref_dist)


def test_residual_grid():
    X = np.stack(np.meshgrid(np.arange(9.0), np.arange(9.0), indexing="ij"), -1).reshape(-1, 2)
    check(model(X, residual.Matern(1.5, lengthscale=3.0)), start=40)


# -- duplicates and degenerate rows --------------------------------------------------------------

def test_euclidean_duplicates_come_last_in_index_order():
    rng = np.random.default_rng(7)
    base = rng.standard_normal((60, 2))
    X = np.concatenate([base, base[[3, 10, 10, 59]], base[:5]])
    order, dist = check(X)
    zero = np.nonzero(dist == 0)[0]
    assert zero.size == 9
    assert zero.min() == len(X) - 9                  # all at the end
    assert (np.diff(order[zero]) > 0).all()          # in index order
    assert (dist[:zero.min()] > 0).all()


@pytest.mark.parametrize("metric", ["euclidean", "residual"])
def test_all_rows_equal(metric):
    X = np.tile([[0.3, -1.2]], (7, 1))
    data = X if metric == "euclidean" else model(X, m=1)
    order, dist = maximin_order(data, start=4, return_distances=True)
    np.testing.assert_array_equal(order, [4, 0, 1, 2, 3, 5, 6])
    assert dist[0] == np.inf and (dist[1:] == dist[1]).all()
    if metric == "euclidean":
        assert (dist[1:] == 0).all()


def test_residual_duplicates():
    X = harness_like(80, 2, seed=8)
    X = np.concatenate([X, X[[1, 2, 2, 40]]])
    order, dist = check(model(X))
    assert np.sort(dist)[:4].max() < 1e-3            # each duplicate at ~0 when it comes


def test_degenerate_rows():
    """Rows with p = 0 are at distance exactly 1 from everything."""
    X = harness_like(120, 2, seed=9)
    m = model(X)
    p = m.p_diag.copy()
    p[[0, 5, 77]] = 0.0
    user = residual.ResidualCorrelation(X, m.kernel, V=m.V, p_diag=p)
    order, dist = check(user)
    when = np.argsort(order)                         # step at which each row was chosen
    for row in (0, 5, 77):
        assert row == order[0] or dist[when[row]] == 1.0


# -- threads, trees, input layout ----------------------------------------------------------------

@pytest.mark.parametrize("metric", ["euclidean", "residual"])
def test_threads_give_identical_orders(metric, monkeypatch):
    X = harness_like(500, 3, seed=10)
    data = X if metric == "euclidean" else model(X)
    one = maximin_order(data, num_threads=1, return_distances=True)
    monkeypatch.setattr(ordering, "PARALLEL_MIN_WORK", 0)   # every step in parallel
    for nt in (2, 3):
        other = maximin_order(data, num_threads=nt, return_distances=True)
        np.testing.assert_array_equal(one[0], other[0])
        np.testing.assert_array_equal(one[1], other[1])


def test_threads_without_a_tree(monkeypatch):
    """The k-d ball tree that orders coordinates, with every step in parallel."""
    X = harness_like(2000, 2, seed=15)
    one = maximin_order(X, num_threads=1, return_distances=True)
    monkeypatch.setattr(ordering, "PARALLEL_MIN_WORK", 0)
    for nt in (2, 3):
        other = maximin_order(X, num_threads=nt, return_distances=True)
        np.testing.assert_array_equal(one[0], other[0])
        np.testing.assert_array_equal(one[1], other[1])


@pytest.mark.parametrize("leaf", [1, 2, 3, 16, 100])
def test_leaf_sizes(leaf, monkeypatch):
    monkeypatch.setattr(ordering, "LEAF_SIZE", leaf)
    X = harness_like(500, 3, seed=16)
    X[::7] = X[3]                                   # duplicates across leaves
    check(X)


def test_kd_tree_covers_its_points():
    """Every node's radius bounds the distance to each point below it; children and aliases
    are label ranges that partition the points."""
    X = harness_like(700, 2, seed=17)
    metric, layout, evals = ordering._kd_layout(X)
    row, cptr, aptr, radius, pdist, slack, bottom_up = layout
    n = len(X)
    np.testing.assert_array_equal(np.sort(row), np.arange(n))
    xs = metric.x
    np.testing.assert_array_equal(xs, X[row])
    seen = np.zeros(n, int)
    nodes = bottom_up.size

    def below(u):                                    # labels in u's subtree
        out = [u] + list(range(aptr[u], aptr[u + 1]))
        for w in range(cptr[u], cptr[u + 1]):
            out += below(w)
        return out

    for u in range(nodes):
        sub = below(u)
        d = np.sqrt(((xs[sub] - xs[u]) ** 2).sum(1))
        assert d.max() <= radius[u] + slack
        for w in range(cptr[u], cptr[u + 1]):
            assert w > u and abs(np.sqrt(((xs[w] - xs[u]) ** 2).sum()) - pdist[w]) <= slack
        seen[u] += 1
        seen[aptr[u]:aptr[u + 1]] += 1
    assert (seen == 1).all() and evals > 0
    assert sorted(bottom_up) == list(range(nodes))   # every node, children first
    assert all(np.nonzero(bottom_up == w)[0][0] < np.nonzero(bottom_up == u)[0][0]
               for u in range(nodes) for w in range(cptr[u], cptr[u + 1]))


KNOBS = [  # (SCAN_FRACTION, AHEAD_MIN_CHILDREN, PARALLEL_MIN_WORK, threads)
    (1e9, 10 ** 9, 10 ** 9, 1),     # the tree search alone
    (0.0, 10 ** 9, 10 ** 9, 1),     # every step a scan
    (1e9, 1, 10 ** 9, 1),           # root children always evaluated ahead
    (1e9, 1, 0, 2),                 # every step a parallel search
    (0.5, 64, 8192, 2),             # the defaults
]


@pytest.mark.parametrize("metric", ["euclidean", "residual"])
def test_strategies_do_not_change_the_order(metric, monkeypatch):
    """Scanning, evaluating ahead and parallel search are invisible in the answer."""
    X = harness_like(400, 3, seed=14)
    data = X if metric == "euclidean" else model(X, residual.RBF(lengthscale=1.0), m=32)
    tree = residual.CoverTree(data)
    runs = []
    for scan, ahead, par, nt in KNOBS:
        monkeypatch.setattr(ordering, "SCAN_FRACTION", scan)
        monkeypatch.setattr(ordering, "AHEAD_MIN_CHILDREN", ahead)
        monkeypatch.setattr(ordering, "PARALLEL_MIN_WORK", par)
        runs.append(maximin_order(data, tree=tree, num_threads=nt, return_distances=True))
    for order, dist in runs[1:]:
        np.testing.assert_array_equal(order, runs[0][0])
        np.testing.assert_array_equal(dist, runs[0][1])
    check(data)


def test_tree_given():
    X = harness_like(300, 2, seed=11)
    m = model(X)
    for data in (X, m):
        tree = residual.CoverTree(data, seed=3)
        order, dist, stats = maximin_order(data, tree=tree, return_distances=True,
                                           return_stats=True)
        np.testing.assert_array_equal(order, maximin_order(data))
        assert stats["tree_distance_evaluations"] == 0


def test_readonly_and_noncontiguous():
    X = np.asfortranarray(harness_like(200, 3, seed=12))
    X.setflags(write=False)
    np.testing.assert_array_equal(maximin_order(X), maximin_order(np.ascontiguousarray(X)))


def test_stats_and_fewer_evaluations_than_brute_force():
    X = harness_like(3000, 2, seed=13)
    order, stats = maximin_order(X, return_stats=True)
    assert stats["n_squared_half"] == 3000 * 2999 // 2
    assert 0 < stats["distance_evaluations"] < stats["n_squared_half"] / 10
    assert set(stats["seconds"]) == {"tree", "order", "total"}


# -- progress and interrupts ---------------------------------------------------------------------

@pytest.mark.parametrize("metric", ["euclidean", "residual"])
def test_progress_and_slicing(metric, monkeypatch):
    """progress gets increasing counts ending at n; the slicing does not change the order."""
    X = harness_like(400, 2, seed=18)
    data = X if metric == "euclidean" else model(X)
    whole = maximin_order(data, return_distances=True)
    monkeypatch.setattr(ordering, "SLICE_SECONDS", 0.0)         # one step per slice
    calls = []
    order, dist = maximin_order(data, return_distances=True,
                                progress=lambda done, total: calls.append((done, total)))
    np.testing.assert_array_equal(order, whole[0])
    np.testing.assert_array_equal(dist, whole[1])
    done = [d for d, _ in calls]
    assert {t for _, t in calls} == {400}
    assert done[-1] == 400 and len(done) > 10 and (np.diff(done) > 0).all()


def test_progress_single_point():
    calls = []
    maximin_order(np.zeros((1, 2)), progress=lambda *a: calls.append(a))
    assert calls == [(1, 1)]


def test_keyboard_interrupt_stops_the_loop(monkeypatch):
    """Ctrl-C (a SIGINT, here from another thread) stops the ordering between slices."""
    monkeypatch.setattr(ordering, "SLICE_SECONDS", 0.01)
    X = harness_like(200_000, 2, seed=19)
    calls = []

    def progress(done, total):
        if not calls:           # the loop is running: interrupt it from outside
            threading.Timer(0.05, _thread.interrupt_main).start()
        calls.append(done)

    with pytest.raises(KeyboardInterrupt):
        maximin_order(X, progress=progress)
    assert calls and calls[-1] < len(X)


# -- bad input -----------------------------------------------------------------------------------

def test_bad_input():
    X = harness_like(20, 2)
    bad = X.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="X contains NaN"):
        maximin_order(bad)
    with pytest.raises(ValueError, match="X must be a 2-D"):
        maximin_order(X[:, 0])
    with pytest.raises(ValueError, match="X is empty"):
        maximin_order(np.empty((0, 2)))
    with pytest.raises(TypeError, match="X_or_model .* not a kernel"):
        maximin_order(residual.RBF())
    for start in (-1, 20):
        with pytest.raises(ValueError, match="start"):
            maximin_order(X, start=start)
    for start in (1.0, True, "3"):
        with pytest.raises(TypeError, match="start must be an integer"):
            maximin_order(X, start=start)
    with pytest.raises(ValueError, match="num_threads"):
        maximin_order(X, num_threads=0)
    with pytest.raises(TypeError, match="tree must be"):
        maximin_order(X, tree="tree")
    with pytest.raises(TypeError, match="progress must be None or a callable"):
        maximin_order(X, progress="yes")
    with pytest.raises(ValueError, match="tree was built over other data"):
        maximin_order(X, tree=residual.CoverTree(X + 1))
    with pytest.raises(ValueError, match="tree was built over other data"):
        maximin_order(model(X), tree=residual.CoverTree(X))


def test_start_accepts_numpy_integers():
    X = harness_like(30, 2)
    assert maximin_order(X, start=np.int32(4))[0] == 4


# -- property ------------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 60), dim=st.integers(1, 3), seed=st.integers(0, 10 ** 6),
       metric=st.sampled_from(["euclidean", "residual"]), dup=st.booleans(),
       use_start=st.booleans())
# exact duplicates of a row tie exactly in the oracle: they must come in index order
@example(n=51, dim=1, seed=1, metric="residual", dup=True, use_start=False)
def test_property_matches_reference(n, dim, seed, metric, dup, use_start):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, dim))
    if dup and n > 2:
        X[rng.integers(0, n, n // 3)] = X[0]
    data = X if metric == "euclidean" else model(X, m=min(8, n), seed=seed % 7)
    start = int(rng.integers(0, n)) if use_start else None
    check(data, start=start)
