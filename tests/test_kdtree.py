"""KDTree.query equals brute_force_knn (the float64 oracle) bit for bit, in every mode."""

import pickle
import threading
import time
import _thread

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import residual
from residual.kdtree import KDTree
from conftest import harness_like

KERN = residual.RBF(1.0)


def assert_same(got, want):
    """Indices identical and distances equal bit for bit (both sum the squares directly)."""
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])


def all_modes(X, k, Y=None, **build):
    """Every query mode of KDTree(X) against the brute force."""
    tree = KDTree(X, **build)
    n = len(X)
    if k < n:
        assert_same(tree.query(k=k), residual.brute_force_knn(X, k))
    assert_same(tree.query(k=k, predecessors=True),
                residual.brute_force_knn(X, k, predecessors=True))
    if Y is not None:
        assert_same(tree.query(Y, k=k), residual.brute_force_knn(X, k, Y))
    return tree


@pytest.mark.parametrize("dim", range(1, 9))
def test_all_modes_every_dimension(dim):
    X = harness_like(1500, dim, seed=dim)
    all_modes(X, 7, Y=harness_like(50, dim, seed=20 + dim) * 1.5)


@pytest.mark.parametrize("k", [1, 30, 200])
def test_k_small_and_larger_than_a_leaf(k):
    X = np.random.default_rng(3).uniform(size=(2000, 2))
    all_modes(X, k, Y=np.random.default_rng(4).uniform(-0.5, 1.5, size=(40, 2)))


def test_duplicates_and_grid_ties():
    # a grid: many equal distances, decided by index; every point three times
    g = np.stack(np.meshgrid(np.arange(12.0), np.arange(9.0)), -1).reshape(-1, 2)
    X = np.concatenate([g, g[::-1], g])
    X = X[np.random.default_rng(5).permutation(len(X))]
    for leaf in (2, 5, 16):
        all_modes(X, 10, Y=g[:20] + 0.5, leaf_size=leaf)
    all_modes(np.zeros((50, 3)), 9, Y=np.ones((3, 3)))       # all points equal


def test_equal_points_settle_on_the_smallest_indices():
    # all distances tie: the search reaches the smallest indices first and prunes the rest,
    # instead of scanning every leaf whose box holds the query (all of them)
    X = np.zeros((5000, 2))
    tree = all_modes(X, 30)
    for pred in (False, True):
        _, idx, evals = tree._query(None, 30, pred, (0, 5000), 1)
        assert evals < 100 * 5000
    np.testing.assert_array_equal(idx[4999], np.arange(30))


def test_many_duplicates_per_site_stay_cheap():
    # 25 sites, 1600 points each: the k best of a query are the smallest indices at its site
    X = np.random.default_rng(17).integers(0, 5, size=(40_000, 2)).astype(float)
    tree = KDTree(X)
    for pred in (False, True):
        _, idx, evals = tree._query(None, 30, pred, (0, len(X)), 2)
        assert evals < 400 * len(X)     # a depth-first search took 440-780 per query here
    site = np.flatnonzero((X == X[-1]).all(axis=1))
    np.testing.assert_array_equal(idx[-1], site[:30])


def test_tiny_inputs():
    all_modes(np.array([[1.0, 2.0]]), 1, Y=np.zeros((2, 2)))
    all_modes(np.arange(3.0)[:, None], 2, Y=np.array([[0.4]]))


def test_rows_blocks_equal_the_whole_query():
    X = harness_like(900, 2, seed=7)
    tree = KDTree(X)
    for pred in (False, True):
        whole = tree.query(k=6, predecessors=pred)
        for start, stop in [(0, 1), (0, 300), (300, 301), (450, 900), (899, 900), (10, 10)]:
            part = tree.query(k=6, predecessors=pred, rows=(start, stop))
            np.testing.assert_array_equal(part[0], whole[0][start:stop])
            np.testing.assert_array_equal(part[1], whole[1][start:stop])


def test_threads_and_leaf_size_do_not_change_the_answer():
    X = harness_like(3000, 3, seed=8)
    Y = harness_like(100, 3, seed=9)
    ref = None
    for nt in (1, 2):
        for leaf in (2, 16, 100):
            tree = KDTree(X, leaf_size=leaf, num_threads=nt)
            got = [tree.query(k=12, num_threads=nt),
                   tree.query(k=12, predecessors=True, num_threads=nt),
                   tree.query(Y, k=12, num_threads=nt)]
            if ref is None:
                ref = got
            for a, b in zip(got, ref):
                assert_same(a, b)


def test_input_layout_does_not_change_the_answer():
    X = harness_like(500, 3, seed=10)
    want = KDTree(X).query(k=5)
    for layout in (np.asfortranarray(X), X.astype(np.float32).astype(np.float64), X.tolist()):
        got = KDTree(layout).query(k=5)
        ref = residual.brute_force_knn(np.asarray(layout, dtype=np.float64), 5)
        assert_same(got, ref)
    assert_same(KDTree(np.asfortranarray(X)).query(k=5), want)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 90), st.integers(1, 5), st.integers(0, 10_000), st.integers(1, 12),
       st.integers(2, 9), st.sampled_from([0, 1, 3]))
def test_hypothesis_matches_the_oracle(n, dim, seed, k, leaf, decimals):
    # coordinates rounded to few decimals: duplicates and exact distance ties are common
    rng = np.random.default_rng(seed)
    X = np.round(rng.standard_normal((n, dim)), decimals)
    Y = np.round(rng.standard_normal((5, dim)), decimals)
    all_modes(X, min(k, n), Y=Y, leaf_size=leaf)
    if n > 1:
        all_modes(X, min(k, n - 1), leaf_size=leaf)


def test_pickle_round_trip_answers_the_same():
    X = harness_like(400, 2, seed=11)
    tree = KDTree(X)
    again = pickle.loads(pickle.dumps(tree))
    assert_same(again.query(k=4, predecessors=True), tree.query(k=4, predecessors=True))
    assert repr(again) == "KDTree(n_samples=400, n_features=2, leaf_size=16)"


def test_query_counts_its_evaluations():
    X = harness_like(2000, 2, seed=12)
    tree = KDTree(X)
    _, _, evals = tree._query(None, 5, False, (0, 2000), 1)
    assert 5 * 2000 <= evals < 2000 * 1999 // 10          # at least k each, far below n^2
    assert tree.stats["distance_evaluations"] == 0 and tree.stats["seconds"]["query"] >= 0


# -- bad input -----------------------------------------------------------------------------------

@pytest.mark.parametrize("X, kw, exc, match", [
    (np.array([[np.nan, 1.0]]), {}, ValueError, "X contains NaN"),
    (np.zeros((0, 2)), {}, ValueError, "X is empty"),
    (np.zeros(3), {}, ValueError, "X must be a 2-D"),
    (np.full((2, 2), 1e200), {}, ValueError, "X has entries above 1e150"),
    (np.zeros((4, 2)), {"leaf_size": 1}, ValueError, "leaf_size must be >= 2"),
    (np.zeros((4, 2)), {"leaf_size": 2.0}, TypeError, "leaf_size must be an integer"),
    (np.zeros((4, 2)), {"num_threads": "two"}, TypeError, "num_threads"),
])
def test_bad_build_arguments(X, kw, exc, match):
    with pytest.raises(exc, match=match):
        KDTree(X, **kw)


@pytest.mark.parametrize("args, kw, exc, match", [
    ((), {"k": 10}, ValueError, "k = 10 is larger than the n_samples - 1"),
    ((), {"k": 0}, ValueError, "k must be >= 1"),
    ((np.zeros((2, 3)),), {"k": 1}, ValueError, "Y has 3 columns but 2"),
    ((np.zeros((2, 2)),), {"k": 1, "predecessors": True}, ValueError, "in-sample queries only"),
    ((np.zeros((2, 2)),), {"k": 1, "rows": (0, 1)}, ValueError, "rows applies to in-sample"),
    ((), {"k": 1, "rows": (3, 2)}, ValueError, "rows must satisfy"),
    ((), {"k": 1, "predecessors": 1}, TypeError, "predecessors must be a bool"),
])
def test_bad_query_arguments(args, kw, exc, match):
    tree = KDTree(harness_like(10, 2))
    with pytest.raises(exc, match=match):
        tree.query(*args, **kw)


# -- interrupts ----------------------------------------------------------------------------------

def test_keyboard_interrupt_stops_the_query():
    """Ctrl-C (a SIGINT, here from another thread) stops a long query between chunks."""
    X = harness_like(400_000, 3, seed=13)
    tree = KDTree(X)
    timer = threading.Timer(0.2, _thread.interrupt_main)
    t = time.perf_counter()
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        tree.query(k=60, num_threads=1)         # about 8 s uninterrupted on the test machine
        timer.cancel()
        pytest.fail("the query ended before the interrupt came")
    assert time.perf_counter() - t < 2.0


# -- the Vecchia path ----------------------------------------------------------------------------

@pytest.mark.parametrize("ordering", ["random", "maximin"])
def test_vecchia_kdtree_equals_brute(ordering):
    X = harness_like(700, 2, seed=14)
    kw = dict(k=10, metric="euclidean", ordering=ordering, seed=3)
    kd = residual.vecchia_neighbors(X, method="kdtree", **kw)
    brute = residual.vecchia_neighbors(X, method="brute", **kw)
    assert (kd.method, residual.vecchia_neighbors(X, **kw).method) == ("kdtree", "kdtree")
    np.testing.assert_array_equal(kd.order, brute.order)
    np.testing.assert_array_equal(kd.neighbors, brute.neighbors)
    np.testing.assert_array_equal(kd.distances, brute.distances)
    assert 0 < kd.stats["distance_evaluations"] < brute.stats["distance_evaluations"]


def test_vecchia_kdtree_progress_blocks_change_nothing(monkeypatch):
    monkeypatch.setattr(residual.vecchia, "QUERY_BLOCK_MIN_ROWS", 40)
    X = harness_like(900, 3, seed=15)
    calls = []
    res = residual.vecchia_neighbors(X, k=6, metric="euclidean", method="kdtree",
                                     progress=lambda *a: calls.append(a))
    ref = residual.vecchia_neighbors(X, k=6, metric="euclidean", method="kdtree",
                                     num_threads=1)
    np.testing.assert_array_equal(res.neighbors, ref.neighbors)
    np.testing.assert_array_equal(res.distances, ref.distances)
    done = [d for s, d, _ in calls if s == "query"]
    assert len(done) > 10 and done == sorted(done) and done[-1] == 900


def test_vecchia_kdtree_needs_the_euclidean_metric():
    with pytest.raises(ValueError, match="method='kdtree' needs metric='euclidean'"):
        residual.vecchia_neighbors(harness_like(20, 2), KERN, k=3, method="kdtree")


def test_dask_blocks_of_the_kdtree_equal_the_single_process():
    rdask = pytest.importorskip("residual.dask")
    X = harness_like(600, 2, seed=16)
    ref = residual.vecchia_neighbors(X, k=7, metric="euclidean", ordering="maximin")
    res = rdask.vecchia_neighbors(X, k=7, metric="euclidean", ordering="maximin", n_blocks=5)
    assert res.method == ref.method == "kdtree" and res.stats["dask"]["n_blocks"] == 5
    np.testing.assert_array_equal(res.neighbors, ref.neighbors)
    np.testing.assert_array_equal(res.distances, ref.distances)
    assert res.stats["distance_evaluations"] == ref.stats["distance_evaluations"]
