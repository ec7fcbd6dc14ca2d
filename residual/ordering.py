"""Orderings for Vecchia approximations: the exact maximin (farthest-first) ordering.

The farthest-first loop runs in ``_maximin.pyx`` over a :class:`~residual.CoverTree`; see
its opening comment for the range search and why the answer is exact.
"""

import time

import numpy as np

from residual import _maximin
from residual.kernels import Kernel
from residual.model import ResidualCorrelation
from residual.tree import CoverTree
from residual._parallel import resolve_num_threads, single_threaded_blas
from residual._validate import as_float_matrix, check_euclidean_range, check_int

#: A step's range search runs on several threads when the step before it reached at least
#: this many points (see SCAN_FRACTION). Below that, starting and joining the threads every
#: step costs more than they save (on a busy machine a thread that is descheduled stalls
#: every join); those steps run on one thread, with the wide root's children evaluated
#: ahead in parallel batches.
PARALLEL_MIN_EVALUATIONS = 8192

#: A step scans every point instead of searching the tree when the step before it reached
#: at least this fraction of the points: its search evaluated them or, for a scan, they lay
#: within its radius. Such a search would reach most of the tree anyway, and a scan reads
#: the rows in storage order.
SCAN_FRACTION = 0.5

#: When the tree's root has at least this many children (the residual metric's wide top),
#: their distances to the next few centres are evaluated together, reading each child's data
#: once for all of them (see ``_maximin.pyx``).
AHEAD_MIN_CHILDREN = 64


def maximin_order(X_or_model, *, start=None, num_threads=None, tree=None,
                  return_distances=False, return_stats=False):
    """Exact maximin ordering: each next point is the farthest from those already chosen.

    Parameters
    ----------
    X_or_model : array-like of shape (n_samples, n_features) or ResidualCorrelation
        Coordinates (Euclidean distance) or a residual-correlation model (distance
        ``sqrt(1 - |rho|)``, as everywhere in the library).
    start : int, default=None
        The first row. None: the row nearest the mean of the coordinates (Euclidean distance
        in the raw coordinates ``X``, also for a model; ties go to the smallest index).
    num_threads : int, default=None
        OpenMP threads (None = all usable cores; negative counts back from them). The order
        does not depend on it.
    tree : CoverTree, default=None
        A tree already built over ``X_or_model`` (the same model object, or equal
        coordinates); None builds one with ``CoverTree(X_or_model)``.
    return_distances : bool, default=False
        Also return the maximin distances.
    return_stats : bool, default=False
        Also return a dict of counters and timings (see Notes).

    Returns
    -------
    order : ndarray of int64, shape (n_samples,)
        ``order[t]`` is the row chosen at step t (a permutation of the rows).
    dist : ndarray of float64, shape (n_samples,)
        Only with ``return_distances``: ``dist[t]`` is the distance of ``order[t]`` to
        ``order[:t]`` when it was chosen (inf for t = 0); non-increasing. GP codes use it
        for sparsity radii.
    stats : dict
        Only with ``return_stats``: ``distance_evaluations`` (pairs evaluated by the
        ordering, not counting the tree build), ``n_squared_half`` (n(n-1)/2, what the
        O(n^2) loop evaluates), ``updates`` (distance-to-set decreases), ``scan_steps``
        (steps that scanned every point instead of searching the tree), ``parallel_steps``,
        ``tree_distance_evaluations`` (0 when ``tree`` was given) and ``seconds`` with
        ``tree``, ``order`` and ``total``.

    Raises
    ------
    TypeError
        If ``X_or_model`` is a kernel, ``start`` is not an integer or ``tree`` is not a
        CoverTree.
    ValueError
        On NaN/inf or mis-shaped coordinates, ``start`` out of range, or a ``tree`` built
        over other data.

    Notes
    -----
    Ties (equal distances) go to the smallest index, so points at distance 0 from a chosen
    point (duplicates) come last, in index order. Each step lowers every unchosen point's
    distance to the chosen set with a range search on the tree from the new point, pruned by
    covering radii and by the largest such distance in each subtree; every pair is evaluated
    in float64 by the same routine as the tree's, in a fixed argument order, so the result
    equals the O(n^2) farthest-first loop run with those distances.

    Examples
    --------
    >>> import numpy as np, residual
    >>> from residual.ordering import maximin_order
    >>> X = np.random.default_rng(0).standard_normal((100, 2))
    >>> order, dist = maximin_order(X, return_distances=True)
    >>> bool(np.all(np.diff(dist[1:]) <= 0))
    True
    """
    t0 = time.perf_counter()
    coords = _check_data(X_or_model)
    n = coords.shape[0]
    nt = resolve_num_threads(num_threads)
    start = _nearest_mean(coords) if start is None else check_int(start, "start", minimum=0,
                                                                  maximum=n - 1)
    _check_tree(tree, X_or_model, coords)
    order = np.empty(n, dtype=np.int64)
    dist = np.empty(n)
    counters = {"distance_evaluations": 0, "updates": 0, "scan_steps": 0,
                "parallel_steps": 0}
    built = tree is None and n > 1
    if built:
        tree = CoverTree(X_or_model, num_threads=nt)
    t1 = time.perf_counter()
    if n == 1:
        order[0], dist[0] = start, np.inf
    else:
        counters = _run(tree, start, order, dist, nt)
    t2 = time.perf_counter()
    stats = {**counters, "n_squared_half": n * (n - 1) // 2,
             "tree_distance_evaluations": tree.stats["distance_evaluations"] if built else 0,
             "seconds": {"tree": t1 - t0, "order": t2 - t1, "total": t2 - t0}}
    out = (order,) + ((dist,) if return_distances else ()) + ((stats,) if return_stats else ())
    return out[0] if len(out) == 1 else out


def _run(tree, start, order, dist, nt):
    """The compiled farthest-first loop over a built tree."""
    residual, kind, variance, x, v, s = tree._metric
    with single_threaded_blas():
        return _maximin.maximin(residual, kind, variance, x, v, s, tree.root,
                                tree.children_ptr, tree.children, tree.aliases_ptr,
                                tree.aliases, tree.radii, tree.parent_distances, tree._slack,
                                start, order, dist, nt, PARALLEL_MIN_EVALUATIONS,
                                AHEAD_MIN_CHILDREN, max(1, int(SCAN_FRACTION * order.size)),
                                _bottom_up(tree),
                                np.zeros(order.size, dtype=np.int64))


def _bottom_up(tree):
    """The tree's nodes (aliases left out) by ascending level: children before parents."""
    nodes = np.nonzero(tree.alias_of < 0)[0]
    return nodes[np.argsort(tree.levels[nodes], kind="stable")].astype(np.int64)


def _check_data(X_or_model):
    """The raw coordinates of X_or_model, validated."""
    if isinstance(X_or_model, Kernel):
        raise TypeError("X_or_model must be coordinates or a ResidualCorrelation, not a "
                        "kernel; build ResidualCorrelation.from_kernel(X, kernel) first")
    if isinstance(X_or_model, ResidualCorrelation):
        return X_or_model.X
    coords = as_float_matrix(X_or_model, "X")
    check_euclidean_range(coords, "X")
    return coords


def _nearest_mean(coords):
    """The row nearest the column means (first such row on ties)."""
    return int(np.argmin(((coords - coords.mean(axis=0)) ** 2).sum(axis=1)))


def _check_tree(tree, X_or_model, coords):
    """Refuse a tree that was not built over this data with this metric."""
    if tree is None:
        return
    if not isinstance(tree, CoverTree):
        raise TypeError(f"tree must be a residual.CoverTree, got {type(tree).__name__}")
    if isinstance(X_or_model, ResidualCorrelation):
        ok = tree.residual and tree.model is X_or_model
    else:
        x = tree._metric[3]
        ok = not tree.residual and x.shape == coords.shape and np.array_equal(x, coords)
    if not ok:
        raise ValueError("tree was built over other data or another metric: pass the tree of "
                         "this X_or_model (CoverTree(X_or_model)) or tree=None")
