"""method="auto" for residual conditioning sets (residual/_auto.py): each path is chosen in a
case built for it, the choice is reported, and it never changes the neighbours.

The brute force's cases are deterministic (few rows; a build over its budget). The pilot's
own comparison is tested where the tree wins by a wide margin; where the tree merely loses
(D = 8), the margin is small enough that a loaded machine's timings could flip it.
"""

import numpy as np
import pytest

import residual
from residual import _auto
from residual.__main__ import main
from residual.vecchia import vecchia_neighbors
from conftest import harness_like


def _pilot_everywhere(monkeypatch, budget):
    """Run the pilot at any n, with the build's budget scaled by `budget`."""
    monkeypatch.setattr(_auto, "BRUTE_UP_TO", 0)
    monkeypatch.setattr(_auto, "BUILD_BUDGET", budget)


def test_small_n_takes_the_brute_force_without_a_pilot():
    res = vecchia_neighbors(harness_like(400), residual.RBF(), k=8, n_inducing=30)
    assert res.method == "brute"
    auto = res.stats["auto"]
    assert auto["method"] == "brute" and "no pilot" in auto["reason"]
    assert auto["brute_s"] is None and auto["build_s"] is None


def test_the_tree_where_it_prunes_nearly_everything(monkeypatch):
    # 1-D, ten lengthscales, p ~ 0.2: a query scores about 80 of its 15000 predecessors (at
    # 12000 rows the brute force, with its float32 screen, came within 2x of the tree's pilot,
    # whose 256-row blocks are short enough there for thread wake-ups to count)
    _pilot_everywhere(monkeypatch, budget=1e9)
    X = np.random.default_rng(1).uniform(0, 5, size=(30000, 1))
    kw = dict(k=5, n_inducing=8, seed=2)
    res = vecchia_neighbors(X, residual.Matern(nu=1.5, lengthscale=0.5), **kw)
    auto = res.stats["auto"]
    assert res.method == auto["method"] == "tree", auto
    assert auto["tree_query_s"] < auto["brute_s"] and auto["build_s"] > 0
    brute = vecchia_neighbors(X, residual.Matern(nu=1.5, lengthscale=0.5), method="brute",
                              **kw)
    # the tree scores its candidates with the brute force's arithmetic: the same bits
    np.testing.assert_array_equal(res.neighbors, brute.neighbors)
    assert res.distances.tobytes() == brute.distances.tobytes()
    # the tree the pilot built answered the query: its evaluations are far below the brute's
    assert res.stats["distance_evaluations"] < brute.stats["distance_evaluations"] / 10


def test_a_build_over_its_budget_is_stopped(monkeypatch):
    _pilot_everywhere(monkeypatch, budget=0.0)
    calls = []
    res = vecchia_neighbors(harness_like(1500), residual.RBF(), k=6, n_inducing=30,
                            progress=lambda *a: calls.append(a))
    auto = res.stats["auto"]
    assert res.method == "brute" and "budget" in auto["reason"]
    assert auto["brute_s"] > 0 and auto["tree_query_s"] is None
    build = [(d, t) for s, d, t in calls if s == "build"]
    assert build[0] == (0, 1500) and build[-1] == (1500, 1500)


def test_euclidean_auto_is_the_kdtree():
    res = vecchia_neighbors(harness_like(300), k=5, metric="euclidean")
    assert res.method == "kdtree" and "auto" not in res.stats


def test_cli_prints_the_choice(monkeypatch, capsys):
    assert main(["--n", "300", "--dim", "2", "--k", "5", "--n-inducing", "20", "--quiet"]) == 0
    out = capsys.readouterr()[0]
    assert "method = brute" in out and "method chosen by auto:" in out and "no pilot" in out


@pytest.mark.parametrize("bad", [lambda d, t: None, None])
def test_tree_build_progress(bad):
    X = harness_like(3000)
    calls = []
    tree = residual.CoverTree(X, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (3000, 3000) and all(t == 3000 for _, t in calls)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    again = residual.CoverTree(X, progress=bad)
    np.testing.assert_array_equal(tree.parents, again.parents)


def test_tree_build_progress_must_be_callable():
    with pytest.raises(TypeError, match="progress must be None or a callable"):
        residual.CoverTree(harness_like(50), progress=3)


def test_pilot_rows_equal_the_full_query():
    # the pilot queries runs of the depth-first order as an array of rows: each row's answer
    # is that row of the full query, bit for bit (also the Euclidean search's row array)
    for data in (residual.ResidualCorrelation.from_kernel(harness_like(1500), residual.RBF(),
                                                         n_inducing=40, seed=0),
                 harness_like(1500)):
        tree = residual.CoverTree(data)
        dist, idx = tree.query(k=7, predecessors=True)
        rows = np.ascontiguousarray(tree._depth_first_order()[300:700])
        d, i = tree._query(None, 7, True, rows, 2)
        np.testing.assert_array_equal(i, idx[rows])
        np.testing.assert_array_equal(d, dist[rows])
