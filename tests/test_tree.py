"""CoverTree build: the compressed-cover-tree invariants on varied data, determinism, errors."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

import residual
from conftest import harness_like


def _clustered(n, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((8, 3)) * 5
    return centres[rng.integers(0, 8, n)] + 0.01 * rng.standard_normal((n, 3))


def _duplicate_heavy(n, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n // 5, 3))
    return base[rng.integers(0, len(base), n)]


def _grid(side=7):
    g = np.arange(float(side))
    X = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    return X[np.random.default_rng(0).permutation(len(X))]


DATASETS = {
    "random": lambda: harness_like(1500, seed=1),
    "clustered": lambda: _clustered(1200),
    "duplicates": lambda: _duplicate_heavy(1000),
    "grid": lambda: _grid(),
    "random8d": lambda: harness_like(800, dim=8, seed=2),
}


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_euclidean_invariants(name):
    X = DATASETS[name]()
    tree = residual.CoverTree(X, batch_size=128)
    tree.check_invariants(pairwise=True)
    assert tree.stats["distance_evaluations"] > 0 and tree.stats["batches"] > 1
    if name == "duplicates":
        assert tree.stats["aliases"] > 0


@pytest.mark.parametrize("name", ["random", "clustered", "duplicates", "grid"])
def test_residual_invariants(name, any_kernel):
    X = DATASETS[name]()[:900]
    model = residual.ResidualCorrelation.from_kernel(X, any_kernel, n_inducing=64, seed=3)
    tree = residual.CoverTree(model, batch_size=100)
    tree.check_invariants(pairwise=True)
    assert tree.levels[tree.root] == 0         # d <= 1 = 2^0: a level-0 root covers all


def test_residual_tiny_p_and_ard():
    X = harness_like(1500, dim=3, seed=4)
    model = residual.ResidualCorrelation.from_kernel(
        X, residual.RBF(lengthscale=[0.8, 1.0, 1.5]), n_inducing=400)
    assert np.median(model.p_diag) < 1e-3
    tree = residual.CoverTree(model)
    tree.check_invariants(pairwise=True)


def test_degenerate_points_hang_from_the_root():
    X = harness_like(300, seed=5)
    model = residual.ResidualCorrelation.from_kernel(X, residual.RBF(), n_inducing=30)
    p = model.p_diag.copy()
    p[[7, 8, 9]] = 0.0
    m2 = residual.ResidualCorrelation(X, model.kernel, V=model.V, p_diag=p)
    tree = residual.CoverTree(m2, seed=1)
    tree.check_invariants(pairwise=True)
    for i in (7, 8, 9):
        if i != tree.root:
            assert tree.parents[i] == tree.root and tree.levels[i] == -1


def test_every_point_once():
    X = _duplicate_heavy(700, seed=6)
    tree = residual.CoverTree(X)
    is_node = tree.alias_of < 0
    assert sorted(tree.insertion_order.tolist()) == np.nonzero(is_node)[0].tolist()
    assert tree.children.size == is_node.sum() - 1
    assert tree.min_index[tree.root] == 0


@pytest.mark.parametrize("metric", ["euclidean", "residual"])
def test_stats_are_measured(metric):
    """Every documented entry, each consistent with what the tree and the schedule imply."""
    X = _duplicate_heavy(700, seed=6)
    obj = X if metric == "euclidean" else residual.ResidualCorrelation.from_kernel(
        X, residual.RBF(lengthscale=0.8), n_inducing=40)
    tree = residual.CoverTree(obj, batch_size=100)
    s, sec = tree.stats, tree.stats["seconds"]
    assert set(sec) == {"traversal", "traversal_net", "traversal_children", "pairwise",
                        "conflict", "mis", "attach", "radii", "finalise", "total"}
    assert set(s) == {"seconds", "distance_evaluations", "traversal_evaluations",
                      "pairwise_evaluations", "radius_evaluations", "kernel_tiles",
                      "kernel_elements", "conflict_edges", "rounds", "batches", "height",
                      "aliases"}
    # disjoint stages of one build (conflict, mis and attach are parts of resolving a batch)
    stages = ("traversal", "pairwise", "conflict", "mis", "attach", "radii", "finalise")
    assert sum(sec[key] for key in stages) <= sec["total"]
    assert sec["traversal_net"] + sec["traversal_children"] <= sec["traversal"]
    if metric == "euclidean":
        assert sec["traversal_net"] == sec["traversal_children"] == 0
    # doubling batches 1, 2, 4, ..., 64, then 100 at a time, over the 699 points after the root
    sizes, left, size = [], 699, 1
    while left:
        sizes.append(min(size, left))
        left -= sizes[-1]
        size = min(2 * size, 100)
    assert s["batches"] == len(sizes)
    assert s["pairwise_evaluations"] == sum(b * (b - 1) // 2 for b in sizes)
    depth = np.zeros(tree.n_samples, dtype=int)           # parents are inserted first
    for u in tree.insertion_order:
        if u != tree.root:
            depth[u] = depth[tree.parents[u]] + 1
    assert s["height"] == depth.max()
    assert s["aliases"] == (tree.alias_of >= 0).sum() > 0
    assert s["distance_evaluations"] == (s["traversal_evaluations"] + s["pairwise_evaluations"]
                                         + s["radius_evaluations"])


def _same_tree(a, b):
    for name in ("levels", "parents", "parent_distances", "alias_of", "radii", "min_index",
                 "children_ptr", "children", "insertion_order"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


@pytest.mark.parametrize("metric", ["euclidean", "residual"])
def test_identical_for_threads_and_chunks(metric):
    X = harness_like(2500, seed=7)
    obj = X if metric == "euclidean" else residual.ResidualCorrelation.from_kernel(
        X, residual.Matern(1.5, lengthscale=0.7), n_inducing=100)
    base = residual.CoverTree(obj, num_threads=1)
    _same_tree(base, residual.CoverTree(obj, num_threads=2))
    _same_tree(base, residual.CoverTree(obj, num_threads=2, chunk_size=3))
    other = residual.CoverTree(obj, seed=1)
    assert other.root != base.root or not np.array_equal(other.levels, base.levels)
    other.check_invariants()


def test_fixed_schedule_and_tiny_inputs():
    X = harness_like(600, seed=8)
    residual.CoverTree(X, schedule="fixed", batch_size=50).check_invariants(pairwise=True)
    one = residual.CoverTree(X[:1])
    assert one.root == 0 and one.height == 0
    one.check_invariants()
    same = residual.CoverTree(np.zeros((5, 2)))
    assert (same.alias_of >= 0).sum() == 4
    same.check_invariants()


@settings(max_examples=40, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 60), st.integers(1, 4)),
              elements=st.floats(-4, 4, allow_nan=False, width=32)),
       st.integers(0, 5), st.integers(1, 16))
def test_property_euclidean(X, seed, batch_size):
    tree = residual.CoverTree(X, seed=seed, batch_size=batch_size)
    tree.check_invariants(pairwise=True)


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 80), st.integers(1, 3), st.integers(0, 1000),
       st.sampled_from([0.5, 1.5, 2.5, None]), st.integers(1, 8))
def test_property_residual(n, dim, seed, nu, batch_size):
    X = np.random.default_rng(seed).standard_normal((n, dim))
    if seed % 3 == 0:
        X = np.round(X)                                   # ties and duplicates
    kern = residual.RBF(0.7) if nu is None else residual.Matern(nu, 0.7)
    model = residual.ResidualCorrelation.from_kernel(X, kern, n_inducing=max(1, n // 4),
                                                     seed=seed)
    residual.CoverTree(model, seed=seed, batch_size=batch_size).check_invariants(pairwise=True)


@pytest.mark.parametrize("kw, exc, match", [
    ({"batch_size": 0}, ValueError, "batch_size must be >= 1"),
    ({"batch_size": 2.0}, TypeError, "batch_size must be an integer"),
    ({"seed": -1}, ValueError, "seed must be >= 0"),
    ({"num_threads": 0}, ValueError, "num_threads must be a non-zero"),
    ({"chunk_size": 0}, ValueError, "chunk_size must be >= 1"),
    ({"schedule": "random"}, ValueError, "schedule must be"),
])
def test_bad_arguments(kw, exc, match):
    with pytest.raises(exc, match=match):
        residual.CoverTree(harness_like(20), **kw)


def test_bad_data():
    with pytest.raises(ValueError, match="X contains NaN"):
        residual.CoverTree(np.full((3, 2), np.nan))
    with pytest.raises(TypeError, match="not a kernel"):
        residual.CoverTree(residual.RBF())
    with pytest.raises(ValueError, match="X is empty"):
        residual.CoverTree(np.zeros((0, 2)))


def test_conflict_step_refuses_a_missing_block():
    from residual import _build, _tiles
    X = harness_like(10)
    builder = _build.TreeBuilder(_tiles.Metric.euclidean(X), 0, 3, 8, 1e-9)
    batch = np.arange(1, 5, dtype=np.intp)
    best_d, best_q = np.ones(4), np.zeros(4, dtype=np.intp)
    with pytest.raises(ValueError, match="pairwise block must be 4 x 4"):
        builder.resolve(batch, np.zeros((3, 3)), best_d, best_q, 1)


def test_spatial_order_is_a_permutation_that_keeps_neighbours_together():
    """The build's Morton renumbering: a permutation of the rows, None where it cannot help."""
    from residual.tree import _spatial_order
    X = harness_like(4000, seed=5)
    order = _spatial_order(X)
    assert sorted(order.tolist()) == list(range(len(X)))
    step = np.linalg.norm(np.diff(X[order], axis=0), axis=1)
    shuffled = np.linalg.norm(np.diff(X, axis=0), axis=1)
    assert np.median(step) < 0.25 * np.median(shuffled)       # consecutive rows are close
    np.testing.assert_array_equal(_spatial_order(X), order)     # deterministic
    assert _spatial_order(X[:1]) is None
    assert _spatial_order(np.zeros((10, 17))) is None             # too many dimensions
    assert _spatial_order(np.array([[np.inf, 0.0], [0.0, 1.0]])) is None
    flat = np.zeros((5, 3))
    assert sorted(_spatial_order(flat).tolist()) == list(range(5))  # zero extent on every axis


def test_star_tree_grows_the_children_pool():
    """Equidistant points hang from the root: its children run doubles past the builder's
    first pool allocation (2 slots per point), so the pool must grow and runs move."""
    X = np.eye(300) * 3.0
    tree = residual.CoverTree(X, batch_size=64)
    tree.check_invariants(pairwise=True)
    assert (tree.parents == tree.root).sum() == 299
    d, i = tree.query(k=5)
    d_ref, i_ref = residual.brute_force_knn(X, 5)
    np.testing.assert_array_equal(i, i_ref)
    np.testing.assert_allclose(d, d_ref, rtol=1e-12)
