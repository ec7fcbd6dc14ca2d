"""Orderings for Vecchia approximations: the exact maximin (farthest-first) ordering.

The farthest-first loop runs in ``_maximin.pyx`` over a tree (a :class:`~residual.CoverTree`
for a model, a k-d ball tree of its own for coordinates); see its opening comment for the
range search and why the answer is exact.
"""

import time
from typing import NamedTuple

import numpy as np

from residual import _maximin
from residual.tree import CoverTree, euclidean_slack
from residual._parallel import resolve_num_threads, single_threaded_blas
from residual._tiles import Metric
from residual._validate import as_points, check_int

#: A step (its range search or scan) runs on several threads when the step before it reached
#: at least this much work: points reached times the numbers one distance reads
#: (coordinates, plus the V row for the residual metric). Below that, starting and joining
#: the threads costs more than they save (on a busy machine a thread that is descheduled
#: stalls every join): 8192 residual points with m = 512, but Euclidean steps in 2-D or 3-D
#: stay on one thread unless they reach over a million points.
PARALLEL_MIN_WORK = 8192 * 512

#: A step scans every point instead of searching the tree when the step before it reached
#: at least this fraction of the points: its search evaluated them or, for a scan, they lay
#: within its radius. Such a search would reach most of the tree anyway, and a scan reads
#: the rows in storage order.
SCAN_FRACTION = 0.5

#: When the tree's root has at least this many children (the residual metric's wide top),
#: their distances to the next few centres are evaluated together, reading each child's data
#: once for all of them (see ``_maximin.pyx``).
AHEAD_MIN_CHILDREN = 64

#: Most points in a leaf of the k-d ball tree that orders coordinates (a leaf's points are
#: evaluated together whenever the search reaches it).
LEAF_SIZE = 32

#: The compiled loop runs in slices of about this many seconds; between slices ``progress`` is
#: called and Ctrl-C is honoured.
SLICE_SECONDS = 0.1


def maximin_order(X_or_model, *, start=None, num_threads=None, tree=None,
                  return_distances=False, return_stats=False, progress=None):
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
        OpenMP threads (None = ``OMP_NUM_THREADS`` if set, else all usable cores; negative
        counts back from them). The order does not depend on it.
    tree : CoverTree, default=None
        A tree already built over ``X_or_model`` (the same model object, or equal
        coordinates); None builds one: ``CoverTree(X_or_model)`` for a model, and for
        coordinates a k-d ball tree of the loop's own (built in O(n log n), much faster
        than a cover tree). The order does not depend on the tree.
    return_distances : bool, default=False
        Also return the maximin distances.
    return_stats : bool, default=False
        Also return a dict of counters and timings (see Notes).
    progress : callable, default=None
        ``progress(done, total)``, called about every 0.1 s while the points are placed, and
        once at the end (``done == total``): ``done`` points are placed so far, increasing.
        The order does not depend on it.

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
        ``tree_distance_evaluations`` (those of building the tree; 0 when ``tree`` was
        given) and ``seconds`` with
        ``tree``, ``order`` and ``total``.

    Raises
    ------
    TypeError
        If ``X_or_model`` is a kernel, ``start`` is not an integer, ``tree`` is not a
        CoverTree or ``progress`` is not callable.
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
    equals the O(n^2) farthest-first loop run with those distances, whatever the tree.

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
    model, coords = as_points(X_or_model)
    n = coords.shape[0]
    nt = resolve_num_threads(num_threads)
    start = _nearest_mean(coords) if start is None else check_int(start, "start", minimum=0,
                                                                  maximum=n - 1)
    _check_tree(tree, model, coords)
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be None or a callable, got {type(progress).__name__}")
    order = np.empty(n, dtype=np.int64)
    dist = np.empty(n)
    counters = {"distance_evaluations": 0, "updates": 0, "scan_steps": 0,
                "parallel_steps": 0}
    tree_evals = 0
    if n == 1:
        t1 = time.perf_counter()
        order[0], dist[0] = start, np.inf
        if progress is not None:
            progress(1, 1)
    else:
        if tree is None and model is not None:
            tree = CoverTree(model, num_threads=nt)
            tree_evals = tree.stats["distance_evaluations"]
        if tree is None:
            metric, layout, tree_evals = _kd_layout(coords)
        else:
            metric, layout = _layout(tree)
        t1 = time.perf_counter()
        counters = _run(metric, layout, start, order, dist, nt, progress)
    t2 = time.perf_counter()
    stats = {**counters, "n_squared_half": n * (n - 1) // 2,
             "tree_distance_evaluations": tree_evals,
             "seconds": {"tree": t1 - t0, "order": t2 - t1, "total": t2 - t0}}
    out = (order,) + ((dist,) if return_distances else ()) + ((stats,) if return_stats else ())
    return out[0] if len(out) == 1 else out


class Layout(NamedTuple):
    """A tree relabelled for the farthest-first loop (``_maximin.Farthest`` reads it).

    row: label -> the point's row; children_ptr, alias_ptr: the children and aliases of label
    u as the label ranges ``ptr[u]:ptr[u + 1]``; radius, pdist: covering radii and parent
    distances by label; slack: the tree's slack; bottom_up: the node labels by ascending
    level (each node after its children). Integer arrays are int64, all C-contiguous.
    """
    row: np.ndarray
    children_ptr: np.ndarray
    alias_ptr: np.ndarray
    radius: np.ndarray
    pdist: np.ndarray
    slack: float
    bottom_up: np.ndarray


def _run(metric, layout, start, order, dist, nt, progress):
    """The compiled farthest-first loop over a relabelled tree, in slices of SLICE_SECONDS."""
    row = layout.row
    label = np.empty_like(row)
    label[row] = np.arange(row.size)
    width = metric.dim + metric.m                             # numbers read per distance
    loop = _maximin.Farthest(metric, layout, int(label[start]), order, dist,
                             np.zeros(order.size, dtype=np.int64), nt,
                             (-(-PARALLEL_MIN_WORK // width), AHEAD_MIN_CHILDREN,
                              max(1, int(SCAN_FRACTION * order.size))))
    done = 0
    with single_threaded_blas():
        while done < order.size:
            done = loop.run(SLICE_SECONDS)      # raises KeyboardInterrupt on Ctrl-C
            if progress is not None:
                progress(done, order.size)
    return loop.counters()


def _kd_layout(coords):
    """The metric, :class:`Layout` and distance evaluations of the k-d ball
    tree over coordinates (``_maximin.kd_layout``), the rows copied in label order."""
    x = np.ascontiguousarray(coords, dtype=np.float64)
    row, children_ptr, alias_ptr, radius, pdist, bottom_up, evals = _maximin.kd_layout(
        x, LEAF_SIZE)
    slack = euclidean_slack(float(radius[0]))
    metric = Metric.euclidean(x[row])
    return metric, Layout(row, children_ptr, alias_ptr, radius, pdist, slack, bottom_up), evals


def _layout(tree):
    """The cover tree's metric and the tree relabelled for the loop (a :class:`Layout`),
    Euclidean rows copied in label order."""
    ptr, kids, aptr = tree.children_ptr, tree.children, tree.aliases_ptr
    nodes = [np.array([tree.root], dtype=np.int64)]
    while True:                              # breadth-first, one depth at a time
        f = nodes[-1]
        counts = ptr[f + 1] - ptr[f]
        if not counts.sum():
            break
        nodes.append(kids[_ranges(ptr[f], counts)])
    nodes = np.concatenate(nodes)
    acount = aptr[nodes + 1] - aptr[nodes]
    row = np.concatenate([nodes, tree.aliases[_ranges(aptr[nodes], acount)]]).astype(np.int64)
    n, nn = row.size, nodes.size
    children_ptr = np.full(n + 1, nn, dtype=np.int64)
    children_ptr[:nn] = 1 + np.cumsum(ptr[nodes + 1] - ptr[nodes]) - (ptr[nodes + 1] - ptr[nodes])
    alias_ptr = np.full(n + 1, n, dtype=np.int64)
    alias_ptr[:nn] = nn + np.cumsum(acount) - acount
    bottom_up = np.argsort(tree.levels[nodes], kind="stable").astype(np.int64)
    metric = tree._metric if tree.residual else tree._metric.take(row)
    return metric, Layout(
        row, children_ptr, alias_ptr, np.ascontiguousarray(tree.radii[row]),
        np.ascontiguousarray(tree.parent_distances[row]), tree._slack, bottom_up)


def _ranges(starts, counts):
    """Concatenated ``arange(starts[i], starts[i] + counts[i])``."""
    total = int(counts.sum())
    return np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(total)


def _nearest_mean(coords):
    """The row nearest the column means (first such row on ties)."""
    return int(np.argmin(((coords - coords.mean(axis=0)) ** 2).sum(axis=1)))


def _check_tree(tree, model, coords):
    """Refuse a tree that was not built over this data with this metric."""
    if tree is None:
        return
    if not isinstance(tree, CoverTree):
        raise TypeError(f"tree must be a residual.CoverTree, got {type(tree).__name__}")
    if model is not None:
        ok = tree.residual and tree.model is model
    else:
        x = tree._metric.x
        ok = not tree.residual and x.shape == coords.shape and np.array_equal(x, coords)
    if not ok:
        raise ValueError("tree was built over other data or another metric: pass the tree of "
                         "this X_or_model (CoverTree(X_or_model)) or tree=None")
