"""residual.dask: distributed queries and Vecchia sets equal the single-process answers."""

import sys

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")
da = pytest.importorskip("dask.array")

import dask  # noqa: E402

import residual  # noqa: E402
import residual.dask as rdask  # noqa: E402
from residual import CoverTree, ResidualCorrelation  # noqa: E402

KERN = residual.RBF(lengthscale=1.0)
M = 40


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None, host="127.0.0.1")
    # not the default client: tests pass it, or make it current, so the local path is testable
    c = distributed.Client(cluster, set_as_default=False)
    yield c
    c.close()
    cluster.close()


def _data(n, seed, dim=3):
    return np.random.default_rng(seed).standard_normal((n, dim))


@pytest.fixture(scope="module")
def trees():
    X = _data(1200, 0)
    model = ResidualCorrelation.from_kernel(X, KERN, n_inducing=M, seed=0)
    return {"euclidean": CoverTree(X), "residual": CoverTree(model)}


@pytest.fixture
def count_pickles(monkeypatch):
    """Count __getstate__ calls of trees and models in this (the client's) process."""
    counts = {"CoverTree": 0, "ResidualCorrelation": 0}
    for cls in (CoverTree, ResidualCorrelation):
        original = cls.__getstate__

        def counting(self, _original=original, _name=cls.__name__):
            counts[_name] += 1
            return _original(self)
        monkeypatch.setattr(cls, "__getstate__", counting)
    return counts


# -- query ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("metric", ["euclidean", "residual"])
@pytest.mark.parametrize("kind", ["numpy", "dask"])
def test_query_equals_tree_query(client, trees, metric, kind):
    tree = trees[metric]
    Y = _data(700, 1)
    chunks = (100, 37, 300, 1, 262)                                 # uneven
    if kind == "dask":
        Y = da.from_array(Y, chunks=(chunks, (2, 1)))                  # and split columns
    dist, idx = rdask.query(tree, Y, 6, client=client)
    assert dist.dtype == np.float64 and idx.dtype == np.int64
    assert dist.shape == idx.shape == (700, 6)
    if kind == "dask":
        assert dist.chunks == idx.chunks == (Y.chunks[0], (6,))
    dist, idx = client.compute([dist, idx], sync=True)
    Y = _data(700, 1)
    ref_d, ref_i = tree.query(Y, 6)
    np.testing.assert_array_equal(idx, ref_i)
    np.testing.assert_array_equal(dist, ref_d)      # bit for bit, both metrics


def test_query_finds_the_current_client_and_scatters_once(client, trees, count_pickles):
    tree = trees["residual"]
    Y = da.from_array(_data(600, 2), chunks=60)                   # ten blocks
    with client.as_current():
        dist, idx = rdask.query(tree, Y, 4)
    assert count_pickles["CoverTree"] == 1                        # scattered, once
    assert not any(isinstance(v, CoverTree) for v in dict(idx.__dask_graph__()).values())
    got = client.compute([dist, idx], sync=True)
    got_again = client.compute(idx, sync=True)
    assert count_pickles["CoverTree"] == 1                        # no copy per task or compute
    ref_d, ref_i = tree.query(_data(600, 2), 4)
    np.testing.assert_array_equal(got[1], ref_i)
    np.testing.assert_array_equal(got_again, ref_i)
    np.testing.assert_array_equal(got[0], ref_d)


def test_query_local_scheduler_without_client(trees, count_pickles):
    tree = trees["euclidean"]
    Y = _data(300, 3).astype(np.float32)[:, ::-1]                 # non-contiguous, float32
    dist, idx = rdask.query(tree, Y, 3, num_threads=1)
    dist, idx = dask.compute(dist, idx, scheduler="threads")
    ref_d, ref_i = tree.query(Y, 3)
    np.testing.assert_array_equal(idx, ref_i)
    np.testing.assert_array_equal(dist, ref_d)
    assert count_pickles["CoverTree"] == 0                        # used in place


def test_query_empty_Y(client, trees):
    dist, idx = rdask.query(trees["euclidean"], np.empty((0, 3)), 2, client=client)
    assert client.compute(idx, sync=True).shape == (0, 2)


def test_query_bad_arguments(client, trees, monkeypatch):
    def no_work(*a, **kw):
        raise AssertionError("work started before the arguments were checked")
    monkeypatch.setattr(client, "scatter", no_work)
    tree = trees["residual"]
    Y = _data(50, 4)
    with pytest.raises(ValueError, match="k must be >= 1"):
        rdask.query(tree, Y, 0, client=client)
    with pytest.raises(ValueError, match="larger than n_samples"):
        rdask.query(tree, Y, 1201, client=client)
    with pytest.raises(TypeError, match="k must be an integer"):
        rdask.query(tree, Y, 2.0, client=client)
    with pytest.raises(ValueError, match="Y has 2 columns but 3"):
        rdask.query(tree, Y[:, :2], 3, client=client)
    with pytest.raises(ValueError, match="Y has 2 columns but 3"):
        rdask.query(tree, da.from_array(Y[:, :2]), 3, client=client)
    with pytest.raises(ValueError, match="2-D"):
        rdask.query(tree, da.from_array(Y[:, 0]), 3, client=client)
    with pytest.raises(TypeError, match="Y must be a dask array or a NumPy ndarray"):
        rdask.query(tree, Y.tolist(), 3, client=client)
    with pytest.raises(TypeError, match="Y must be a dask array"):
        rdask.query(tree, None, 3, client=client)
    with pytest.raises(TypeError, match="real numbers"):
        rdask.query(tree, da.from_array(Y.astype(complex)), 3, client=client)
    Y[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        rdask.query(tree, Y, 3, client=client)
    with pytest.raises(TypeError, match="CoverTree"):
        rdask.query(tree.model, _data(5, 0), 3, client=client)
    with pytest.raises(TypeError, match="distributed.Client"):
        rdask.query(tree, _data(5, 0), 3, client="tcp://127.0.0.1:8786")
    with pytest.raises(ValueError, match="num_threads"):
        rdask.query(tree, _data(5, 0), 3, client=client, num_threads=0)


# -- vecchia_neighbors ----------------------------------------------------------------------------

def _assert_identical(res, ref):
    assert res.metric == ref.metric and res.method == ref.method
    np.testing.assert_array_equal(res.order, ref.order)
    np.testing.assert_array_equal(res.neighbors, ref.neighbors)
    np.testing.assert_array_equal(res.distances, ref.distances)


@pytest.mark.parametrize("metric", ["residual", "euclidean"])
@pytest.mark.parametrize("method", ["brute", "tree"])
def test_vecchia_equals_single_process(client, metric, method, count_pickles):
    n = 1500
    X = _data(n, 5)
    calls = []
    res = rdask.vecchia_neighbors(X, KERN, 7, client=client, n_blocks=6, n_inducing=M,
                                  metric=metric, method=method,
                                  progress=lambda *a: calls.append(a))
    ref = residual.vecchia_neighbors(X, KERN, 7, n_inducing=M, metric=metric, method=method)
    _assert_identical(res, ref)
    s = res.stats
    assert s["dask"] == {"n_blocks": 6, "n_workers": 2}
    assert set(s["seconds"]) == {"model", "ordering", "build", "scatter", "query", "total"}
    assert s["n_neighbors"] == ref.stats["n_neighbors"]
    if method == "brute":
        assert s["distance_evaluations"] == n * (n - 1) // 2
    done = [d for stage, d, _ in calls if stage == "query"]
    assert done[0] == 0 and done[-1] == n and done == sorted(done) and len(done) == 7
    # the searcher (tree, or the ordered model for brute force) crossed over once
    shipped = "CoverTree" if method == "tree" else "ResidualCorrelation"
    assert count_pickles[shipped] == (1 if method == "tree" or metric == "residual" else 0)


def test_vecchia_defaults_current_client_and_model_input(client):
    X = _data(3000, 6)
    model = ResidualCorrelation.from_kernel(X, KERN, n_inducing=M, seed=1)
    with client.as_current():
        res = rdask.vecchia_neighbors(model, k=5, ordering="natural")
    assert res.stats["dask"]["n_workers"] == 2 and res.stats["dask"]["n_blocks"] > 1
    _assert_identical(res, residual.vecchia_neighbors(model, k=5, ordering="natural"))


def test_vecchia_local_scheduler_and_padding():
    X = _data(400, 7)
    res = rdask.vecchia_neighbors(X, KERN, 400, n_inducing=M, n_blocks=3, num_threads=2)
    _assert_identical(res, residual.vecchia_neighbors(X, KERN, 400, n_inducing=M))
    assert res.stats["seconds"]["scatter"] >= 0 and res.stats["dask"]["n_workers"] == 1


def test_vecchia_inducing_and_nugget_reach_the_model():
    # dask binds the keywords itself: the model's options must not be dropped on the way
    X = _data(400, 9)
    kw = dict(n_inducing=M, inducing="kmeans++", nugget=1e-2, n_blocks=3, num_threads=1)
    res = rdask.vecchia_neighbors(X, KERN, 6, **kw)
    kw.pop("n_blocks")
    _assert_identical(res, residual.vecchia_neighbors(X, KERN, 6, **kw))
    plain = residual.vecchia_neighbors(X, KERN, 6, n_inducing=M)
    assert not np.array_equal(res.distances, plain.distances)


def test_vecchia_bad_arguments(client, monkeypatch):
    def no_work(*a, **kw):
        raise AssertionError("work started before the arguments were checked")
    monkeypatch.setattr(client, "scatter", no_work)
    monkeypatch.setattr(ResidualCorrelation, "from_kernel", no_work)
    X = _data(300, 8)
    with pytest.raises(ValueError, match="k must be >= 1"):
        rdask.vecchia_neighbors(X, KERN, 0, client=client)
    with pytest.raises(ValueError, match="n_blocks must be >= 1"):
        rdask.vecchia_neighbors(X, KERN, 3, client=client, n_blocks=0)
    with pytest.raises(TypeError, match="unexpected keyword argument 'n_inducng'"):
        rdask.vecchia_neighbors(X, KERN, 3, client=client, n_inducng=10)
    with pytest.raises(ValueError, match="kernel is required"):
        rdask.vecchia_neighbors(X, None, 3, client=client)
    with pytest.raises(ValueError, match="method must be one of"):
        rdask.vecchia_neighbors(X, KERN, 3, client=client, method="kd")
    with pytest.raises(ValueError, match="n_inducing must be <= 300"):
        rdask.vecchia_neighbors(X, KERN, 3, client=client, n_inducing=301)


def test_missing_dask_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "dask", None)
    with pytest.raises(ImportError, match=r'pip install "dask\[distributed\]"'):
        rdask.vecchia_neighbors(_data(10, 0), KERN, 2)
    with pytest.raises(ImportError, match=r'pip install "dask\[distributed\]"'):
        rdask.query(None, None, 1)
