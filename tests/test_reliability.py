"""Reliability of every public entry point (issue part 7).

1. Bad input is refused with a ValueError / TypeError that names the argument, *before any
   work*: the compiled modules are replaced by tripwires while the sweep runs, so a refusal
   that comes only after the work started fails the test.
   The command-line tool turns the same refusals into one line and exit status 2.
2. Repeated queries do not grow the process (RSS) or the Python heap (tracemalloc).
3. Queries from several Python threads at once (the compiled code releases the GIL) give the
   single-threaded answers: there is no shared mutable workspace, and the search layout a
   tree builds on its first query may be built by racing first queries.
4. Answers do not depend on the memory layout or dtype of the input (Fortran order, strided,
   read-only, memory-mapped, big-endian, float32, integers).

tests/test_validation.py holds the first checks of brute_force_knn and from_kernel; this file
sweeps the other entry points with the same table and adds the cases found missing there.
"""

import concurrent.futures
import gc
import os
import re
import sys
import threading
import tracemalloc
import warnings

import numpy as np
import pytest

import residual
from residual import bruteforce, kdtree, kernels, tree as tree_module
from residual.cli import main as cli_main

N = 30
X = np.random.default_rng(0).standard_normal((N, 3))
KERN = residual.RBF()
MODEL = residual.ResidualCorrelation.from_kernel(X, KERN, n_inducing=8)
USER_MODEL = residual.ResidualCorrelation(X, KERN, V=MODEL.V, p_diag=MODEL.p_diag)
TREE_E = residual.CoverTree(X)
TREE_R = residual.CoverTree(MODEL)
TREE_U = residual.CoverTree(USER_MODEL)
for _t in (TREE_E, TREE_R, TREE_U):   # the first query builds the search layout: do it here
    _t.query(k=1)


# -- tripwires: no compiled work may start before the arguments are checked -----------------------

class _Tripwire:
    """Stands in for a compiled module: touching any of its functions fails the test."""

    def __init__(self, name):
        self._name = name

    def __getattr__(self, attr):
        raise AssertionError(f"{self._name}.{attr} was reached: the work started before the "
                             "bad argument was refused")


@pytest.fixture
def no_work(monkeypatch):
    """Replace every compiled module the public layer calls into by a tripwire."""
    monkeypatch.setattr(bruteforce, "_bruteforce", _Tripwire("_bruteforce"))
    monkeypatch.setattr(tree_module, "_build", _Tripwire("_build"))
    monkeypatch.setattr(tree_module, "_search", _Tripwire("_search"))
    monkeypatch.setattr(kdtree, "_kdtree", _Tripwire("_kdtree"))
    monkeypatch.setattr(kernels, "_tiles", _Tripwire("_tiles"))   # kernel tiles: model, Y


def _refused(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# -- 1a. bad arrays, for every argument that takes one --------------------------------------------

def _masked():
    a = np.ma.masked_array(X.copy())
    a[4, 1] = np.ma.masked
    return a


# (id, value, exception, message with {name} standing for the argument's name)
BAD_MATRICES = [
    ("nan", np.where(X > 1.5, np.nan, X), ValueError, "{name} contains NaN or inf"),
    ("+inf", np.where(X > 1.5, np.inf, X), ValueError, "{name} contains NaN or inf"),
    ("-inf", np.where(X > 1.5, -np.inf, X), ValueError, "{name} contains NaN or inf"),
    ("object-nan", np.where(X > 1.5, np.nan, X).astype(object), ValueError,
     "{name} contains NaN or inf"),
    ("1-D", X[:, 0], ValueError, "{name} must be a 2-D array"),
    ("3-D", X[None], ValueError, "{name} must be a 2-D array"),
    ("numpy-scalar", np.float64(1.0), ValueError, "{name} must be a 2-D array"),
    ("python-scalar", 1.0, ValueError, "{name} must be a 2-D array"),
    ("no-columns", np.zeros((N, 0)), ValueError, "{name} has no columns"),
    ("strings", X.astype(str), TypeError, "{name} must hold real numbers"),
    ("bytes", X.astype("S8"), TypeError, "{name} must hold real numbers"),
    ("objects", np.full(X.shape, object()), TypeError, "{name} must be a numeric array"),
    ("complex", X + 1j, TypeError, "{name} must hold real numbers"),
    ("complex-zero-imag", X.astype(complex), TypeError, "{name} must hold real numbers"),
    ("python-complex", [[1 + 0j, 2.0, 3.0]] * N, TypeError, "{name} must hold real numbers"),
    ("bool", X > 0, TypeError, "{name} must hold real numbers"),
    ("datetime", np.zeros(X.shape, "datetime64[s]"), TypeError, "{name} must hold real"),
    ("structured", np.zeros(X.shape, [("a", float)]), TypeError, "{name} must hold real"),
    ("ragged", [[1.0, 2.0, 3.0]] * (N - 1) + [[1.0, 2.0]], TypeError,
     "{name} must be a numeric array"),
    ("None", None, TypeError, "{name} must be an array, got None"),
    pytest.param("masked", _masked(), ValueError, "{name}.*mask", id="masked"),
]
BAD_MATRICES = [c if hasattr(c, "marks") else pytest.param(*c, id=c[0]) for c in BAD_MATRICES]

# every argument that takes coordinates, as (id, name, call(bad))
COORDINATE_ARGS = [
    ("CoverTree", "X", lambda a: residual.CoverTree(a)),
    ("ResidualCorrelation.X", "X",
     lambda a: residual.ResidualCorrelation(a, KERN, V=MODEL.V, p_diag=MODEL.p_diag)),
    ("ResidualCorrelation.V", "V",
     lambda a: residual.ResidualCorrelation(X, KERN, V=a, p_diag=MODEL.p_diag)),
    ("vecchia.residual", "X", lambda a: residual.vecchia_neighbors(a, KERN, k=2, n_inducing=4)),
    ("vecchia.euclidean", "X",
     lambda a: residual.vecchia_neighbors(a, k=2, metric="euclidean")),
    ("kernel.X", "X", lambda a: KERN(a)),
    ("kernel.Y", "Y", lambda a: KERN(X, a)),
    ("CoverTree.query.euclidean", "Y", lambda a: TREE_E.query(a, k=2)),
    ("CoverTree.query.residual", "Y", lambda a: TREE_R.query(a, k=2)),
    ("brute_force_knn.Y.euclidean", "Y", lambda a: residual.brute_force_knn(X, 2, a)),
    ("brute_force_knn.Y.residual", "Y", lambda a: residual.brute_force_knn(MODEL, 2, a)),
]
COORDINATE_ARGS = [pytest.param(*c[1:], id=c[0]) for c in COORDINATE_ARGS]


def _bad_array_cases():
    """Every coordinate argument with every bad array, but a None Y: that is the in-sample
    query, not a bad Y."""
    for arg in COORDINATE_ARGS:
        name, call = arg.values
        for case in BAD_MATRICES:
            label, bad, exc, match = case.values
            if not (bad is None and name == "Y"):
                yield pytest.param(name, call, label, bad, exc, match, marks=case.marks,
                                   id=f"{case.id}-{arg.id}")


@pytest.mark.parametrize("name, call, label, bad, exc, match", list(_bad_array_cases()))
def test_bad_arrays_are_refused_before_any_work(no_work, name, call, label, bad, exc, match):
    _refused(lambda: call(bad), exc, match.format(name=name))


@pytest.mark.parametrize("name, call", [
    pytest.param("X", lambda a: residual.CoverTree(a), id="CoverTree"),
    pytest.param("X", lambda a: residual.ResidualCorrelation(a, KERN, V=a, p_diag=a[:, 0]),
                 id="ResidualCorrelation"),
    pytest.param("X", lambda a: residual.vecchia_neighbors(a, KERN, k=2), id="vecchia"),
    pytest.param("X", lambda a: KERN(a), id="kernel"),
])
def test_empty_coordinates_are_refused(no_work, name, call):
    _refused(lambda: call(np.zeros((0, 3))), ValueError, f"{name} is empty")


@pytest.mark.parametrize("tree", [TREE_E, TREE_R], ids=["euclidean", "residual"])
def test_no_query_points_give_an_empty_answer(tree):
    for Y in (np.zeros((0, 3)), np.zeros((0, 3), dtype=np.float32)):
        d, i = tree.query(Y, k=3)
        assert d.shape == i.shape == (0, 3) and d.dtype == np.float64 and i.dtype == np.int64


@pytest.mark.parametrize("call", [
    pytest.param(lambda Y: TREE_E.query(Y, k=1), id="CoverTree.query.euclidean"),
    pytest.param(lambda Y: TREE_R.query(Y, k=1), id="CoverTree.query.residual"),
    pytest.param(lambda Y: residual.brute_force_knn(X, 1, Y), id="brute_force_knn.euclidean"),
    pytest.param(lambda Y: residual.brute_force_knn(MODEL, 1, Y), id="brute_force_knn.residual"),
    pytest.param(lambda Y: KERN(X, Y), id="kernel"),
])
@pytest.mark.parametrize("cols", [1, 2, 4])
def test_query_with_the_wrong_dimension(no_work, call, cols):
    _refused(lambda: call(np.zeros((3, cols))), ValueError,
             f"Y has {cols} columns but 3 were expected")


def test_new_points_on_a_tree_of_user_factors(no_work):
    _refused(lambda: TREE_U.query(X[:2], k=1), ValueError, "from_kernel")


@pytest.mark.parametrize("label, p_diag, exc, match", [
    ("nan", np.where(MODEL.p_diag > 0, np.nan, 0.0), ValueError, "p_diag contains NaN or inf"),
    ("+inf", np.full(N, np.inf), ValueError, "p_diag contains NaN or inf"),
    ("-inf", np.full(N, -np.inf), ValueError, "p_diag contains NaN or inf"),
    ("negative", MODEL.p_diag - 1.0, ValueError, "p_diag must be >= 0"),
    ("short", MODEL.p_diag[:-1], ValueError, r"p_diag must have shape \(30,\)"),
    ("2-D", MODEL.p_diag[:, None], ValueError, r"p_diag must have shape \(30,\)"),
    ("scalar", 1.0, ValueError, r"p_diag must have shape \(30,\)"),
    ("empty", np.zeros(0), ValueError, r"p_diag must have shape \(30,\)"),
    ("strings", MODEL.p_diag.astype(str), TypeError, "p_diag must hold real numbers"),
    ("complex", MODEL.p_diag + 1j, TypeError, "p_diag must hold real numbers"),
    ("complex-zero-imag", MODEL.p_diag.astype(complex), TypeError, "p_diag must hold real"),
    ("bool", MODEL.p_diag > 0, TypeError, "p_diag must hold real numbers"),
    ("None", None, TypeError, "p_diag must be an array, got None"),
])
def test_bad_p_diag(no_work, label, p_diag, exc, match):
    _refused(lambda: residual.ResidualCorrelation(X, KERN, V=MODEL.V, p_diag=p_diag), exc, match)


def test_bad_factor_shapes(no_work):
    _refused(lambda: residual.ResidualCorrelation(X, KERN, V=MODEL.V[:-1], p_diag=MODEL.p_diag),
             ValueError, "V has 29 rows but X has 30")
    _refused(lambda: residual.ResidualCorrelation(X, KERN, V=MODEL.V[:0], p_diag=MODEL.p_diag),
             ValueError, "V is empty")
    _refused(lambda: residual.ResidualCorrelation(X, "rbf", V=MODEL.V, p_diag=MODEL.p_diag),
             TypeError, "kernel must be a residual kernel")


# -- 1b. ragged lists and object arrays in the non-matrix arguments -------------------------------

@pytest.mark.parametrize("name, call", [
    pytest.param("lengthscale", lambda: residual.RBF(lengthscale=[1.0, [2.0, 3.0]]),
                 id="RBF.lengthscale"),
    pytest.param("lengthscale", lambda: residual.Matern(1.5, lengthscale=[[1.0], [2.0, 3.0]]),
                 id="Matern.lengthscale"),
    pytest.param("p_diag", lambda: residual.ResidualCorrelation(
        X, KERN, V=MODEL.V, p_diag=[[1.0]] * (N - 1) + [[1.0, 2.0]]), id="p_diag"),
    pytest.param("inducing", lambda: residual.ResidualCorrelation.from_kernel(
        X, KERN, inducing=[[0], [1, 2]]), id="from_kernel.inducing"),
    pytest.param("ordering", lambda: residual.vecchia_neighbors(
        X, KERN, k=2, n_inducing=4, ordering=[[0]] * (N - 1) + [[1, 2]]),
        id="vecchia.ordering"),
    pytest.param("V", lambda: residual.ResidualCorrelation(
        X, KERN, V=[[1.0, 2.0]] * (N - 1) + [[1.0]], p_diag=MODEL.p_diag), id="V"),
])
def test_ragged_lists_name_the_argument(no_work, name, call):
    _refused(call, (TypeError, ValueError), name)


@pytest.mark.parametrize("call", [
    pytest.param(lambda: residual.ResidualCorrelation(
        X, KERN, V=MODEL.V, p_diag=MODEL.p_diag.astype(object)).p_diag,
        id="p_diag"),
    pytest.param(lambda: residual.RBF(lengthscale=np.array([1.0, 2.0, 0.5], dtype=object))(X),
                 id="lengthscale"),
    pytest.param(lambda: residual.ResidualCorrelation.from_kernel(
        X, KERN, inducing=np.arange(8).astype(object)).V, id="inducing"),
    pytest.param(lambda: residual.vecchia_neighbors(
        X, KERN, k=2, n_inducing=4, ordering=np.arange(N).astype(object)).neighbors,
        id="vecchia.ordering"),
    pytest.param(lambda: residual.ResidualCorrelation(
        X, KERN, V=MODEL.V.astype(object), p_diag=MODEL.p_diag).V, id="V"),
])
def test_object_arrays_of_numbers_are_accepted(call):
    assert np.isfinite(call()).all()


# -- 1c. k ----------------------------------------------------------------------------------------

_K_TYPES = [2.5, 2.0, np.float64(3.0), True, False, np.bool_(True), "3", None, 3 + 0j,
            np.array(3), np.array([3])]
_K_VALUES = [0, -1, -(2 ** 63), np.int64(0)]


def _k_calls():
    calls = [("CoverTree.query.euclidean", lambda k: TREE_E.query(k=k)),
             ("CoverTree.query.residual", lambda k: TREE_R.query(k=k)),
             ("CoverTree.query.new-points", lambda k: TREE_R.query(X[:2] + 0.1, k=k)),
             ("CoverTree.query.predecessors", lambda k: TREE_E.query(k=k, predecessors=True)),
             ("vecchia", lambda k: residual.vecchia_neighbors(X, KERN, k=k, n_inducing=4)),
             ("vecchia.euclidean",
              lambda k: residual.vecchia_neighbors(X, k=k, metric="euclidean"))]
    return [pytest.param(c, id=i) for i, c in calls]


@pytest.mark.parametrize("call", _k_calls())
@pytest.mark.parametrize("k", _K_TYPES, ids=repr)
def test_k_of_the_wrong_type(no_work, call, k):
    _refused(lambda: call(k), TypeError, "k must be an integer")


@pytest.mark.parametrize("call", _k_calls())
@pytest.mark.parametrize("k", _K_VALUES, ids=repr)
def test_k_below_one(no_work, call, k):
    _refused(lambda: call(k), ValueError, "k must be >= 1")


@pytest.mark.parametrize("tree", [TREE_E, TREE_R], ids=["euclidean", "residual"])
@pytest.mark.parametrize("k", [N, N + 1, 10 ** 20])
def test_k_larger_than_the_eligible_set(no_work, tree, k):
    _refused(lambda: tree.query(k=k), ValueError, f"k = {k} is larger than the n_samples - 1")
    if k > N:
        _refused(lambda: tree.query(X[:2], k=k), ValueError, f"k = {k} is larger than n_samples")
        _refused(lambda: tree.query(k=k, predecessors=True), ValueError,
                 f"k = {k} is larger than n_samples")


@pytest.mark.parametrize("k", [10 ** 9, 10 ** 20])
def test_vecchia_refuses_absurd_k_before_any_work(no_work, k):
    calls = []
    _refused(lambda: residual.vecchia_neighbors(X, KERN, k=k, n_inducing=4,
                                                progress=lambda *a: calls.append(a)),
             ValueError, r"\bk\b")
    assert calls == []


# -- 1d. rows, num_threads, chunk_size, predecessors, build parameters ----------------------------

_QUERIES = [pytest.param(lambda **kw: TREE_E.query(k=2, **kw), id="CoverTree.query.euclidean"),
            pytest.param(lambda **kw: TREE_R.query(k=2, **kw), id="CoverTree.query.residual"),
            pytest.param(lambda **kw: residual.brute_force_knn(MODEL, 2, **kw),
                         id="brute_force_knn")]


@pytest.mark.parametrize("query", _QUERIES)
@pytest.mark.parametrize("kw, exc, match", [
    ({"rows": (0, N + 1)}, ValueError, "rows must satisfy 0 <= start <= stop <= n_samples"),
    ({"rows": (5, 3)}, ValueError, "rows must satisfy"),
    ({"rows": (-1, 3)}, ValueError, "rows start must be >= 0"),
    ({"rows": (0, 2 ** 70)}, ValueError, "rows must satisfy"),
    ({"rows": (0.0, 3)}, TypeError, "rows start must be an integer"),
    ({"rows": (0, True)}, TypeError, "rows stop must be an integer"),
    ({"rows": (0, 3, 1)}, TypeError, "rows must be a"),
    ({"rows": "0:3"}, TypeError, "rows must be a"),
    ({"rows": slice(0, 3)}, TypeError, "rows must be a"),
    ({"rows": np.array([0, 3])}, TypeError, "rows must be a"),
    ({"rows": range(0, 10, 2)}, ValueError, "rows must be a range with step 1"),
    ({"Y": X[:2], "rows": (0, 1)}, ValueError, "rows applies to in-sample queries only"),
    ({"num_threads": 0}, ValueError, "num_threads must be a non-zero"),
    ({"num_threads": 10 ** 6}, ValueError, "num_threads must be <="),
    ({"num_threads": -10 ** 6}, ValueError, "num_threads must be >="),
    ({"num_threads": 1.5}, TypeError, "num_threads must be an integer"),
    ({"num_threads": True}, TypeError, "num_threads must be an integer"),
    ({"num_threads": "2"}, TypeError, "num_threads must be an integer"),
    ({"chunk_size": 0}, ValueError, "chunk_size must be >= 1"),
    ({"chunk_size": -1}, ValueError, "chunk_size must be >= 1"),
    ({"chunk_size": 1.5}, TypeError, "chunk_size must be an integer"),
    ({"chunk_size": True}, TypeError, "chunk_size must be an integer"),
    ({"predecessors": 1}, TypeError, "predecessors must be a bool"),
    ({"predecessors": None}, TypeError, "predecessors must be a bool"),
    ({"predecessors": "False"}, TypeError, "predecessors must be a bool"),
    ({"Y": X[:2], "predecessors": True}, ValueError, "predecessors=True applies to in-sample"),
], ids=repr)
def test_bad_query_arguments(no_work, query, kw, exc, match):
    _refused(lambda: query(**kw), exc, match)


@pytest.mark.parametrize("kw, exc, match", [
    ({"num_threads": 0}, ValueError, "num_threads must be a non-zero"),
    ({"num_threads": 2.0}, TypeError, "num_threads must be an integer"),
    ({"chunk_size": 0}, ValueError, "chunk_size must be >= 1"),
    ({"chunk_size": "8"}, TypeError, "chunk_size must be an integer"),
    ({"batch_size": 0}, ValueError, "batch_size must be >= 1"),
    ({"batch_size": True}, TypeError, "batch_size must be an integer"),
    ({"batch_size": 2.0}, TypeError, "batch_size must be an integer"),
    ({"seed": -1}, ValueError, "seed must be >= 0"),
    ({"seed": 1.0}, TypeError, "seed must be an integer"),
    ({"seed": np.random.RandomState(0)}, TypeError,
     "seed must be an integer >= 0, a numpy.random.Generator or None"),
    ({"schedule": "x"}, ValueError, "schedule must be 'doubling' or 'fixed'"),
    ({"schedule": None}, ValueError, "schedule must be"),
], ids=repr)
@pytest.mark.parametrize("data", [X, MODEL], ids=["euclidean", "residual"])
def test_bad_build_arguments(no_work, data, kw, exc, match):
    _refused(lambda: residual.CoverTree(data, **kw), exc, match)


def test_not_coordinates(no_work):
    _refused(lambda: residual.CoverTree(KERN), TypeError, "not a kernel")
    _refused(lambda: residual.CoverTree(TREE_E), TypeError, "X must be a numeric array")
    _refused(lambda: residual.CoverTree("abc"), TypeError, "X must hold real numbers")
    _refused(lambda: residual.brute_force_knn(TREE_E, 1), TypeError, "X must be a numeric")


@pytest.mark.parametrize("call", [
    pytest.param(lambda c: residual.brute_force_knn(MODEL, 2, chunk_size=c)[1],
                 id="brute_force_knn"),
    pytest.param(lambda c: TREE_E.query(k=2, chunk_size=c)[1], id="CoverTree.query"),
    pytest.param(lambda c: TREE_R.query(X[:3], k=2, chunk_size=c)[1],
                 id="CoverTree.query.new-points"),
    pytest.param(lambda c: residual.CoverTree(X, chunk_size=c).query(k=2)[1], id="CoverTree"),
])
def test_oversized_chunk_size_is_clamped_or_refused(call):
    try:
        got = call(2 ** 70)
    except ValueError as exc:                  # a clear refusal is fine too
        assert "chunk_size" in str(exc)
        return
    np.testing.assert_array_equal(got, call(None))


# -- 1e. model and kernel parameters --------------------------------------------------------------

@pytest.mark.parametrize("kw, exc, match", [
    ({"lengthscale": 0}, ValueError, "lengthscale must be finite and > 0"),
    ({"lengthscale": -1.0}, ValueError, "lengthscale must be finite and > 0"),
    ({"lengthscale": np.nan}, ValueError, "lengthscale must be finite and > 0"),
    ({"lengthscale": np.inf}, ValueError, "lengthscale must be finite and > 0"),
    ({"lengthscale": -np.inf}, ValueError, "lengthscale must be finite and > 0"),
    ({"lengthscale": [1.0, 0.0, 1.0]}, ValueError, "lengthscale must be finite and > 0"),
    ({"lengthscale": [1.0, np.nan]}, ValueError, "lengthscale must be finite and > 0"),
    ({"lengthscale": 1e-320}, ValueError, "lengthscale is too small"),
    ({"lengthscale": []}, ValueError, "lengthscale must be a scalar or a 1-D array"),
    ({"lengthscale": [[1.0, 2.0]]}, ValueError, "lengthscale must be a scalar or a 1-D array"),
    ({"lengthscale": "1"}, TypeError, "lengthscale must be a real number"),
    ({"lengthscale": None}, TypeError, "lengthscale must be a real number"),
    ({"lengthscale": True}, TypeError, "lengthscale must be a real number"),
    ({"lengthscale": [True, False]}, TypeError, "lengthscale must be a real number"),
    ({"lengthscale": 1 + 0j}, TypeError, "lengthscale must be a real number"),
    ({"lengthscale": 1 + 1j}, TypeError, "lengthscale must be a real number"),
    ({"variance": 0}, ValueError, "variance must be a finite number > 0"),
    ({"variance": -1.0}, ValueError, "variance must be a finite number > 0"),
    ({"variance": np.nan}, ValueError, "variance must be a finite number > 0"),
    ({"variance": np.inf}, ValueError, "variance must be a finite number > 0"),
    ({"variance": "1"}, TypeError, "variance must be a real number"),
    ({"variance": None}, TypeError, "variance must be a real number"),
    ({"variance": True}, TypeError, "variance must be a real number"),
    ({"variance": 1 + 0j}, TypeError, "variance must be a real number"),
    ({"variance": [1.0]}, TypeError, "variance must be a real number"),
], ids=repr)
@pytest.mark.parametrize("cls", [residual.RBF, lambda **kw: residual.Matern(1.5, **kw)],
                         ids=["RBF", "Matern"])
def test_bad_kernel_parameters(no_work, cls, kw, exc, match):
    _refused(lambda: cls(**kw), exc, match)


@pytest.mark.parametrize("nu, exc", [
    (0, ValueError), (1, ValueError), (2, ValueError), (3.5, ValueError), (np.nan, ValueError),
    (1.5000001, ValueError), (np.int64(1), ValueError), (True, TypeError),
    (np.bool_(True), TypeError), ("2.5", TypeError), (None, TypeError), (2.5 + 0j, TypeError),
    ([2.5], TypeError), (np.array(2.5), TypeError),
], ids=repr)
def test_unsupported_nu(no_work, nu, exc):
    _refused(lambda: residual.Matern(nu), exc, "nu must be")


@pytest.mark.parametrize("call", [
    pytest.param(lambda k: residual.ResidualCorrelation.from_kernel(X, k, n_inducing=4),
                 id="from_kernel"),
    pytest.param(lambda k: residual.ResidualCorrelation(X, k, V=MODEL.V, p_diag=MODEL.p_diag),
                 id="ResidualCorrelation"),
    pytest.param(lambda k: residual.vecchia_neighbors(X, k, k=2, n_inducing=4), id="vecchia"),
    pytest.param(lambda k: k(X), id="kernel"),
])
def test_ard_lengthscales_that_do_not_match_the_data(no_work, call):
    _refused(lambda: call(residual.Matern(2.5, lengthscale=[1.0, 2.0])), ValueError,
             "kernel has 2 lengthscales")


@pytest.mark.parametrize("kw, exc, match", [
    ({"n_inducing": True}, TypeError, "n_inducing must be an integer"),
    ({"n_inducing": None}, TypeError, "n_inducing must be an integer"),
    ({"n_inducing": 10 ** 30}, ValueError, "n_inducing must be <= 30"),
    ({"seed": True}, TypeError, "seed must be an integer"),
    ({"seed": "0"}, TypeError, "seed must be an integer"),
    ({"jitter": np.nan}, ValueError, "jitter must be a finite number > 0"),
    ({"jitter": np.inf}, ValueError, "jitter must be a finite number > 0"),
    ({"jitter": -1.0}, ValueError, "jitter must be a finite number > 0"),
    ({"jitter": True}, TypeError, "jitter must be a real number"),
    ({"jitter": "1e-6"}, TypeError, "jitter must be a real number"),
    ({"inducing": np.arange(N) % 2 == 0}, TypeError, "inducing must be integer row indices"),
    ({"inducing": [0, 1 + 0j]}, TypeError, "inducing must be integer row indices"),
    ({"inducing": [1, None]}, TypeError, "inducing must be integer row indices"),
    ({"inducing": "01"}, ValueError, "inducing must be one of"),
    ({"inducing": [[0, 1], [2, 3]]}, ValueError, "inducing has 2 columns but 3 were expected"),
    ({"inducing": 3}, ValueError, "inducing must be a non-empty 1-D array"),
    ({"inducing": [-1, 2]}, ValueError, r"inducing indices must lie in \[0, 29\]"),
    ({"num_threads": 0}, ValueError, "num_threads must be a non-zero"),
    ({"num_threads": True}, TypeError, "num_threads must be an integer"),
], ids=repr)
def test_bad_from_kernel_arguments(no_work, kw, exc, match):
    _refused(lambda: residual.ResidualCorrelation.from_kernel(X, KERN, **{"n_inducing": 8, **kw}),
             exc, match)


@pytest.mark.parametrize("kw, exc, match", [
    ({"n_inducing": 0}, ValueError, "n_inducing must be >= 1"),
    ({"n_inducing": N + 1}, ValueError, "n_inducing must be <= 30"),
    ({"n_inducing": 2.0}, TypeError, "n_inducing must be an integer"),
    ({"seed": -1}, ValueError, "seed must be >= 0"),
    ({"seed": True}, TypeError, "seed must be an integer"),
    ({"ordering": "bogus"}, ValueError, "ordering must be one of"),
    ({"ordering": None}, TypeError, "ordering must be a string or an integer permutation"),
    ({"ordering": np.arange(N) * 1.0}, TypeError, "ordering must be a string or an integer"),
    ({"ordering": np.ones(N, bool)}, TypeError, "ordering must be a string or an integer"),
    ({"ordering": np.arange(N - 1)}, ValueError, "ordering must be a permutation"),
    ({"ordering": np.arange(N)[None]}, ValueError, "ordering must be a permutation"),
    ({"ordering": np.zeros(N, int)}, ValueError, "ordering must be a permutation"),
    ({"ordering": np.arange(N) + 1}, ValueError, "ordering must be a permutation"),
    ({"metric": "cosine"}, ValueError, "metric must be one of"),
    ({"metric": None}, ValueError, "metric must be one of"),
    ({"method": "kd"}, ValueError, "method must be one of"),
    ({"num_threads": 0}, ValueError, "num_threads must be a non-zero"),
    ({"num_threads": 1.0}, TypeError, "num_threads must be an integer"),
    ({"progress": 3}, TypeError, "progress must be None or a callable"),
    ({"kernel": None}, ValueError, "kernel is required"),
    ({"kernel": "rbf"}, TypeError, "kernel must be a residual kernel"),
    ({"kernel": residual.RBF}, TypeError, "kernel must be a residual kernel"),
], ids=repr)
def test_bad_vecchia_arguments(no_work, kw, exc, match):
    args = {"kernel": KERN, "k": 3, "n_inducing": 8, **kw}
    kernel = args.pop("kernel")
    _refused(lambda: residual.vecchia_neighbors(X, kernel, **args), exc, match)


def test_vecchia_refuses_a_model_with_a_kernel_and_a_kernel_as_X(no_work):
    _refused(lambda: residual.vecchia_neighbors(MODEL, KERN, k=2), ValueError,
             "kernel must be None")
    _refused(lambda: residual.vecchia_neighbors(KERN, k=2), TypeError, "not a kernel")


# -- 1f. save / load paths ------------------------------------------------------------------------

_SAVERS = [pytest.param(TREE_R, id="CoverTree"), pytest.param(MODEL, id="ResidualCorrelation")]


@pytest.mark.parametrize("obj", _SAVERS)
def test_load_refuses_missing_files_directories_and_the_wrong_class(obj, tmp_path):
    cls = type(obj)
    _refused(lambda: cls.load(tmp_path / "missing"), ValueError, "No such file")
    _refused(lambda: cls.load(tmp_path), ValueError, "Is a directory")
    other = MODEL if cls is residual.CoverTree else TREE_E
    path = other.save(tmp_path / "other")
    _refused(lambda: cls.load(path), ValueError, f"use {type(other).__name__}.load")


@pytest.mark.parametrize("obj", _SAVERS)
@pytest.mark.parametrize("path", [None, 3, ["a.npz"]], ids=repr)
def test_bad_path_types_name_the_argument(obj, path):
    _refused(lambda: obj.save(path), TypeError, "path")
    _refused(lambda: type(obj).load(path), TypeError, "path")


# -- 1g. the command-line tool --------------------------------------------------------------------

def _cli(argv, capsys):
    """Run the CLI in-process: (status, stdout, stderr, Python warnings it emitted)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        status = cli_main(argv + ["--quiet"])
    out, err = capsys.readouterr()
    return status, out, err, [str(w.message) for w in caught]


@pytest.mark.parametrize("argv, match", [
    (["--n", "50", "--lengthscale", "nan"], "--lengthscale must be finite and > 0"),
    (["--n", "50", "--lengthscale", "0"], "--lengthscale must be finite and > 0"),
    (["--n", "50", "--variance", "inf"], "--variance must be a finite number > 0"),
    (["--n", "50", "--variance", "nan"], "--variance must be a finite number > 0"),
    (["--n", "50", "--n-inducing", "5", "--threads", "0"], "--threads must be a non-zero"),
    (["--n", "50", "--n-inducing", "5", "--seed", "-1"], "--seed must be >= 0"),
    (["--n", "50", "--n-inducing", "5", "--k", "-5"], "--k must be >= 1"),
    (["--n", "50", "--n-inducing", "0"], "--n-inducing must be >= 1"),
    pytest.param(["--n", "50", "--n-inducing", "5", "--k", "1000000000"],
                 r"--k must be <= the number of points \(50\)", id="huge-k"),
], ids=repr)
def test_cli_bad_arguments_exit_2_before_any_work(no_work, capsys, argv, match):
    status, out, err, caught = _cli(argv, capsys)
    assert status == 2 and out == "" and caught == []
    assert err.startswith("residual: error: ") and err.count("\n") == 1, err
    assert re.search(match, err), err


def _write(tmp_path, name, content):
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content)
    else:
        np.save(path, content, allow_pickle=True)
    return str(path)


@pytest.mark.parametrize("name, content, match", [
    ("complex.npy", X + 1j, "must hold real numbers"),
    ("bool.npy", X > 0, "must hold real numbers"),
    ("strings.npy", X.astype(str), "must hold real numbers"),
    ("objects.npy", X.astype(object), "holds Python objects, not numbers"),
    ("three.npy", X[None], "must be an n x D array"),
    ("rows0.npy", np.zeros((0, 3)), "holds no data"),
    ("cols0.npy", np.zeros((5, 0)), "holds no data"),
    ("inf.csv", "1,2\n3,-inf\n", "contains NaN or inf"),
    ("ragged.csv", "1,2\n3\n", "line 2 has 1 value but line 1 has 2"),
    ("complex.csv", "1,2\n3,4+1j\n", "line 2: value 2 is not a number"),
    pytest.param("empty.csv", "", "holds no data lines", id="empty.csv"),
    pytest.param("header.csv", "x,y\n", "only a header line", id="header.csv"),
], ids=repr)
def test_cli_bad_input_files(no_work, tmp_path, capsys, name, content, match):
    status, out, err, caught = _cli(["--input", _write(tmp_path, name, content)], capsys)
    assert status == 2 and out == ""
    assert err.startswith("residual: error: ") and err.count("\n") == 1, err
    assert match in err, err
    assert caught == [], caught


# -- 1h. far-away new points under the residual metric --------------------------------------------

FAR = np.array([[1.7e308, 1.7e308, 1.7e308], [-1.7e308, 1.7e308, 0.0], [1e200, 0.0, 0.0]])
MODEL_SHORT = residual.ResidualCorrelation.from_kernel(X, residual.RBF(0.5), n_inducing=8)
TREE_SHORT = residual.CoverTree(MODEL_SHORT)
_FAR_CALLS = [
    pytest.param(lambda: TREE_SHORT.query(FAR, k=3), id="CoverTree.query"),
    pytest.param(lambda: residual.brute_force_knn(MODEL_SHORT, 3, FAR), id="brute_force_knn"),
]


@pytest.mark.parametrize("call", _FAR_CALLS)
def test_far_new_points_are_at_distance_one(call):
    # finite coordinates whose scaled values overflow: k(x, y) = 0, so rho = 0 and d = 1 to
    # every point, ties broken by index
    with np.errstate(over="ignore"):
        d, i = call()
    np.testing.assert_array_equal(d, np.ones((3, 3)))
    np.testing.assert_array_equal(i, np.tile(np.arange(3), (3, 1)))


@pytest.mark.parametrize("call", _FAR_CALLS + [
    pytest.param(lambda: residual.RBF(0.5)(X, FAR), id="kernel")])
def test_far_new_points_emit_no_warning(call):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        call()


def test_the_tripwires_catch_work(no_work):
    """The sweep's 'before any work' claim: valid calls do reach the tripwires."""
    for call in (lambda: TREE_E.query(k=1), lambda: TREE_R.query(X[:2], k=1),
                 lambda: residual.brute_force_knn(X, 1), lambda: residual.CoverTree(X),
                 lambda: residual.ResidualCorrelation.from_kernel(X, KERN, n_inducing=4),
                 lambda: residual.vecchia_neighbors(X, k=2, metric="euclidean"),
                 lambda: KERN(X)):
        with pytest.raises(AssertionError, match="the work started"):
            call()


# -- 2. no memory growth --------------------------------------------------------------------------

def _rss():
    """Resident set size of this process in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _assert_no_growth(step, iterations, warmup=20, rss_bound=10 << 20, heap_bound=512 << 10):
    """Run ``step(i)`` repeatedly: neither the RSS nor the traced Python heap may grow.

    The traced heap includes numpy's array buffers (numpy reports them to tracemalloc), so a
    result array kept alive per call shows there; memory the compiled code takes with malloc
    shows only in the RSS.
    """
    for i in range(warmup):
        step(i)
    gc.collect()
    tracemalloc.start()
    try:
        rss = _rss()
        heap = tracemalloc.get_traced_memory()[0]
        for i in range(iterations):
            step(i)
        gc.collect()
        heap = tracemalloc.get_traced_memory()[0] - heap
        rss = _rss() - rss
    finally:
        tracemalloc.stop()
    assert rss < rss_bound, f"RSS grew by {rss / 2 ** 20:.1f} MiB in {iterations} calls"
    assert heap < heap_bound, f"traced heap grew by {heap / 2 ** 10:.0f} KiB in {iterations} calls"


@pytest.fixture(scope="module")
def big():
    """A residual model (n = 2000) and its tree, plus query points."""
    rng = np.random.default_rng(7)
    Xb = rng.standard_normal((2000, 3))
    model = residual.ResidualCorrelation.from_kernel(Xb, residual.RBF(), n_inducing=64,
                                                     num_threads=1)
    return model, residual.CoverTree(model, num_threads=1), rng.standard_normal((100, 3))


def _bad_call(fn):
    try:
        fn()
    except (TypeError, ValueError):
        pass


# Loops run with num_threads=1 (one call in eight with 2): the test machine may be shared, and
# OpenMP teams on busy cores slow down many times over; threads are exercised in section 3.

@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_tree_queries_do_not_grow_memory(big):
    model, tree, Y = big

    def step(i):
        r = i % 8
        if r == 0:
            tree.query(k=10, num_threads=1)                           # every point
        elif r == 1:
            tree.query(Y[:20], k=10, num_threads=2)                   # an OpenMP team
        elif r % 2:
            tree.query(Y, k=10, num_threads=1)                        # new points
        elif r == 2:
            tree.query(k=10, predecessors=True, rows=(1000, 1200), num_threads=1)
        elif r == 4:
            tree.query(k=10, rows=(32, 232), chunk_size=3, num_threads=1)
        else:
            _bad_call(lambda: tree.query(Y, k=0))                     # error paths too
            _bad_call(lambda: tree.query(np.full((2, 3), np.nan), k=1))

    _assert_no_growth(step, 200)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_brute_force_and_vecchia_do_not_grow_memory(big):
    model, _, Y = big
    Xs = model.X[:300]

    def step(i):
        nt = 2 if i % 8 == 0 else 1
        if i % 2:
            residual.brute_force_knn(model, 10, Y, num_threads=nt)
        else:
            residual.brute_force_knn(model, 10, rows=(0, 200), predecessors=True,
                                     num_threads=nt)
        residual.brute_force_knn(Xs, 10, num_threads=nt)

    _assert_no_growth(step, 60, warmup=10)

    def vecchia(i):
        residual.vecchia_neighbors(Xs, residual.RBF(), k=10, n_inducing=32, seed=i % 3,
                                   method="tree" if i % 2 else "brute", num_threads=1)

    _assert_no_growth(vecchia, 30, warmup=10)


# -- 3. concurrent queries ------------------------------------------------------------------------

THREADS, ROUNDS = 4, 20


def _run_concurrently(tasks, rounds=ROUNDS):
    """Run the tasks ``rounds`` times from THREADS Python threads at once; return the results."""
    barrier = threading.Barrier(THREADS)

    def worker(w):
        barrier.wait()                              # start together
        out = []
        for r in range(rounds):
            name, fn = tasks[(w + r) % len(tasks)]  # threads run different tasks at once
            out.append((name, fn()))
        return out

    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        futures = [pool.submit(worker, w) for w in range(THREADS)]
        return [res for fut in futures for res in fut.result()]


def _assert_same(results, reference):
    for name, (d, i) in results:
        np.testing.assert_array_equal(i, reference[name][1], err_msg=name)
        np.testing.assert_array_equal(d, reference[name][0], err_msg=name)


@pytest.fixture(scope="module")
def mid():
    rng = np.random.default_rng(11)
    Xm = rng.standard_normal((600, 4))
    model = residual.ResidualCorrelation.from_kernel(Xm, residual.RBF(1.2), n_inducing=48,
                                                     num_threads=1)
    return Xm, model, rng.standard_normal((64, 4))


def _query_tasks(tree, Y):
    # mostly one OpenMP thread per call (the Python threads are the concurrency under test);
    # one task runs a team of 2 inside its Python thread
    return [("new", lambda: tree.query(Y, k=8, num_threads=1)),
            ("in-sample", lambda: tree.query(k=8, num_threads=1, chunk_size=5)),
            ("predecessors", lambda: tree.query(k=8, predecessors=True, num_threads=1)),
            ("rows", lambda: tree.query(k=8, rows=(100, 250), num_threads=2))]


@pytest.mark.parametrize("metric", ["euclidean", "residual"])
def test_concurrent_queries_on_one_tree(mid, metric):
    Xm, model, Y = mid
    tree = residual.CoverTree(Xm if metric == "euclidean" else model, num_threads=1)
    tasks = _query_tasks(tree, Y)
    reference = {name: fn() for name, fn in tasks}
    _assert_same(_run_concurrently(tasks), reference)


def test_concurrent_brute_force(mid):
    Xm, model, Y = mid
    tasks = [("res-new", lambda: residual.brute_force_knn(model, 8, Y, num_threads=1)),
             ("res-in", lambda: residual.brute_force_knn(model, 8, num_threads=1)),
             ("res-pred", lambda: residual.brute_force_knn(model, 8, predecessors=True,
                                                           rows=(64, 400), num_threads=1)),
             ("euc-new", lambda: residual.brute_force_knn(Xm, 8, Y, num_threads=2)),
             ("euc-in", lambda: residual.brute_force_knn(Xm, 8, chunk_size=7, num_threads=1))]
    reference = {name: fn() for name, fn in tasks}
    _assert_same(_run_concurrently(tasks, rounds=10), reference)


@pytest.mark.parametrize("metric", ["euclidean", "residual"])
def test_racing_first_queries_on_a_fresh_tree(mid, metric):
    Xm, model, Y = mid
    data = Xm[:300] if metric == "euclidean" else residual.ResidualCorrelation.from_kernel(
        Xm[:300], residual.RBF(1.2), n_inducing=32, num_threads=1)
    reference_tree = residual.CoverTree(data, num_threads=1)
    reference = {name: fn() for name, fn in _query_tasks(reference_tree, Y)}
    for attempt in range(3):
        fresh = residual.CoverTree(data, num_threads=1)     # no search layout yet
        assert getattr(fresh, "_search_layout", None) is None
        # every thread's first call is a first query of the tree, all released together
        _assert_same(_run_concurrently(_query_tasks(fresh, Y), rounds=2), reference)


def test_concurrent_builds_give_the_same_tree(mid):
    _, model, _ = mid
    ref = residual.CoverTree(model, num_threads=1)
    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        trees = list(pool.map(lambda nt: residual.CoverTree(model, num_threads=nt),
                              [1, 1, 1, 2]))
    for t in trees:
        for name in ("levels", "parents", "alias_of", "radii", "min_index", "children"):
            np.testing.assert_array_equal(getattr(t, name), getattr(ref, name), err_msg=name)


# -- 4. input layout independence -----------------------------------------------------------------

def _layouts(A):
    """(label, an input holding the values of A, the float64 values the library must see)."""
    wide = np.zeros((A.shape[0], 2 * A.shape[1]))
    wide[:, ::2] = A
    tall = np.zeros((2 * A.shape[0], A.shape[1]))
    tall[::2] = A
    ro = A.copy()
    ro.flags.writeable = False
    f32 = A.astype(np.float32)
    ints = np.round(A * 4).astype(np.int32)
    yield "fortran", np.asfortranarray(A), A
    yield "column-strided", wide[:, ::2], A
    yield "row-strided", tall[::2], A
    yield "read-only", ro, A
    yield "big-endian", A.astype(">f8"), A
    yield "list", A.tolist(), A
    yield "negative-stride", A[::-1], np.ascontiguousarray(A[::-1])
    yield "float32", f32, f32.astype(np.float64)
    yield "float32-fortran", np.asfortranarray(f32), f32.astype(np.float64)
    yield "int32", ints, ints.astype(np.float64)
    yield "uint8", np.abs(ints).astype(np.uint8), np.abs(ints).astype(np.float64)


def _same(got, want, label):
    np.testing.assert_array_equal(got[1], want[1], err_msg=label)
    np.testing.assert_array_equal(got[0], want[0], err_msg=label)


@pytest.fixture(scope="module")
def small():
    rng = np.random.default_rng(21)
    return rng.standard_normal((150, 3)), rng.standard_normal((12, 3))


ONE = {"num_threads": 1}


def test_euclidean_tree_layout_independence(small):
    Xs, Y = small
    for label, A, values in _layouts(Xs):
        tree = residual.CoverTree(A, **ONE)
        ref = residual.CoverTree(np.ascontiguousarray(values), **ONE)
        tree.check_invariants()
        _same(tree.query(k=5, **ONE), ref.query(k=5, **ONE), label)
        _same(tree.query(k=5, predecessors=True, **ONE),
              ref.query(k=5, predecessors=True, **ONE), label)
        _same(residual.brute_force_knn(A, 5, **ONE), residual.brute_force_knn(values, 5, **ONE),
              label)
    tree = residual.CoverTree(Xs, **ONE)
    for label, B, values in _layouts(Y):
        _same(tree.query(B, k=5, **ONE), tree.query(values, k=5, **ONE), label)
        _same(residual.brute_force_knn(Xs, 5, B, **ONE),
              residual.brute_force_knn(Xs, 5, values, **ONE), label)


def test_residual_model_layout_independence(small):
    Xs, Y = small
    kern = residual.Matern(1.5, lengthscale=0.8)
    for label, A, values in _layouts(Xs):
        m = residual.ResidualCorrelation.from_kernel(A, kern, n_inducing=20, **ONE)
        ref = residual.ResidualCorrelation.from_kernel(values, kern, n_inducing=20, **ONE)
        np.testing.assert_array_equal(m.V, ref.V, err_msg=label)
        _same(residual.CoverTree(m, **ONE).query(k=5, **ONE),
              residual.CoverTree(ref, **ONE).query(k=5, **ONE), label)
        _same(residual.brute_force_knn(m, 5, Y, **ONE), residual.brute_force_knn(ref, 5, Y, **ONE),
              label)
    model = residual.ResidualCorrelation.from_kernel(Xs, kern, n_inducing=20, **ONE)
    tree = residual.CoverTree(model, **ONE)
    for label, B, values in _layouts(Y):
        _same(tree.query(B, k=5, **ONE), tree.query(values, k=5, **ONE), label)
        _same(residual.brute_force_knn(model, 5, B, **ONE),
              residual.brute_force_knn(model, 5, values, **ONE), label)
        np.testing.assert_array_equal(kern(Xs, B, **ONE), kern(Xs, values, **ONE),
                                      err_msg=label)


def test_user_factors_layout_independence(small):
    Xs, _ = small
    kern = residual.RBF()
    base = residual.ResidualCorrelation.from_kernel(Xs, kern, n_inducing=20, **ONE)
    ref = residual.ResidualCorrelation(Xs, kern, V=base.V, p_diag=base.p_diag)
    want = residual.brute_force_knn(ref, 5, **ONE)
    want_tree = residual.CoverTree(ref, **ONE).query(k=5, **ONE)
    p_wide = np.zeros(2 * Xs.shape[0])
    p_wide[::2] = base.p_diag
    p_ro = base.p_diag.copy()
    p_ro.flags.writeable = False
    for label, V, values in _layouts(base.V):
        if values is not base.V:                      # the layouts that keep the values
            continue
        for p in (p_wide[::2], p_ro, base.p_diag.astype(">f8"), base.p_diag.tolist()):
            m = residual.ResidualCorrelation(Xs, kern, V=V, p_diag=p)
            _same(residual.brute_force_knn(m, 5, **ONE), want, label)
            _same(residual.CoverTree(m, **ONE).query(k=5, **ONE), want_tree, label)


def test_memory_mapped_read_only_input(small, tmp_path):
    Xs, _ = small
    np.save(tmp_path / "x.npy", Xs)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    assert not mm.flags.writeable
    _same(residual.CoverTree(mm, **ONE).query(k=4, **ONE),
          residual.CoverTree(Xs, **ONE).query(k=4, **ONE), "memmap")
    m = residual.ResidualCorrelation.from_kernel(mm, KERN, n_inducing=10, **ONE)
    ref = residual.ResidualCorrelation.from_kernel(Xs, KERN, n_inducing=10, **ONE)
    _same(residual.brute_force_knn(m, 4, mm[:7], **ONE),
          residual.brute_force_knn(ref, 4, Xs[:7], **ONE), "memmap")
    got = residual.vecchia_neighbors(mm, KERN, k=4, n_inducing=10, **ONE)
    want = residual.vecchia_neighbors(Xs, KERN, k=4, n_inducing=10, **ONE)
    np.testing.assert_array_equal(got.neighbors, want.neighbors)
    np.testing.assert_array_equal(got.distances, want.distances)
    del mm, m
