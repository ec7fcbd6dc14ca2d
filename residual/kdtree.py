"""KDTree: exact Euclidean k nearest neighbours on a k-d tree.

The public layer: validation, the query's visiting order and the per-query rules (output row,
predecessor bound, the point itself). The tree and the search are in ``_kdtree.pyx``; see its
opening comment for why the answers equal the brute force's bit for bit.
"""

import time

import numpy as np

from residual import _kdtree
from residual._parallel import resolve_num_threads
from residual._validate import (as_float_matrix, check_euclidean_range, check_int, check_query,
                                check_rows)

#: Most points in a leaf when ``leaf_size`` is None (leaves hold between half that and that).
DEFAULT_LEAF_SIZE = 16


class KDTree:
    """Exact Euclidean kNN on a k-d tree: median splits, tight bounding boxes.

    Builds in O(n log n) with no distance evaluations, much faster than a
    :class:`~residual.CoverTree`, and answers the same queries with the same contract as
    :func:`residual.brute_force_knn`: equal indices, and equal distances bit for bit (both
    sum the squared differences directly, in float64). Best in low dimension (D up to about
    8); the cover tree adapts to the data's intrinsic dimension instead.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
        Coordinates.
    leaf_size : int, default=None
        Most points in a leaf, at least 2 (None = ``DEFAULT_LEAF_SIZE``). Answers do not
        depend on it.
    num_threads : int, default=None
        OpenMP threads for the build (None = ``OMP_NUM_THREADS`` if set, else all usable
        cores; negative counts back from them). The tree does not depend on it.

    Attributes
    ----------
    n_samples, n_features : int
    stats : dict
        ``seconds``: ``build``, and ``query`` after a query (the last one);
        ``distance_evaluations`` of the build (0: it compares coordinates only).

    Examples
    --------
    >>> import numpy as np
    >>> from residual.kdtree import KDTree
    >>> X = np.arange(5.0)[:, None]
    >>> KDTree(X).query(k=2)[1][2]
    array([1, 3])
    """

    def __init__(self, X, *, leaf_size=None, num_threads=None):
        t0 = time.perf_counter()
        x = as_float_matrix(X, "X")
        check_euclidean_range(x, "X")
        leaf_size = (DEFAULT_LEAF_SIZE if leaf_size is None
                     else check_int(leaf_size, "leaf_size", minimum=2))
        nt = resolve_num_threads(num_threads)
        self.n_samples, self.n_features = x.shape
        self.leaf_size = leaf_size
        # (coordinates in tree order, slot -> row, node ranges, boxes, smallest row, first leaf)
        self._tree = _kdtree.build(x, leaf_size, nt)
        # the build compares coordinates only: no distances
        self.stats = {"seconds": {"build": time.perf_counter() - t0}, "distance_evaluations": 0}

    def query(self, Y=None, k=1, *, predecessors=False, rows=None, num_threads=None):
        """Exact k nearest neighbours, ties by index.

        Same contract as :func:`residual.brute_force_knn`: in-sample queries (``Y=None``)
        exclude the point itself; ``predecessors=True`` keeps only j < i and returns
        ``min(k, i)`` neighbours; rows ascend by (distance, index), padded with inf / -1.

        Parameters
        ----------
        Y : array-like of shape (n_queries, n_features), default=None
            New points; None queries every indexed point.
        k : int, default=1
        predecessors : bool, default=False
        rows : (start, stop) or range, default=None
            In-sample only: answer only rows ``start..stop-1``, as the full query would.
        num_threads : int, default=None
            As for the build. Results do not depend on it.

        Returns
        -------
        dist : ndarray of shape (n_queries, k), float64
        idx : ndarray of shape (n_queries, k), int64

        Raises
        ------
        TypeError, ValueError
            On bad input, before any work starts; the message names the argument.
        """
        Y, k = check_query(Y, k, predecessors, self.n_samples, self.n_features,
                           euclidean=True)
        rows = check_rows(rows, self.n_samples, Y is None)
        dist, idx, _ = self._query(Y, k, bool(predecessors), rows,
                                   resolve_num_threads(num_threads))
        return dist, idx

    def _query(self, Y, k, predecessors, rows, nt):
        """:meth:`query` on checked arguments: new points Y, or None for the in-sample rows
        ``rows = (start, stop)``; ``nt`` threads. Returns ``(dist, idx, evaluations)``, the
        distances evaluated in all (kept out of ``stats``: concurrent callers may share the
        tree)."""
        t0 = time.perf_counter()
        x, index = self._tree[0], self._tree[1]
        if Y is None:
            # the rows' slots, ascending: neighbouring queries read the same leaves
            start, stop = rows
            if (start, stop) == (0, self.n_samples):
                visit = np.arange(self.n_samples, dtype=np.int64)
            else:
                visit = np.flatnonzero((index >= start) & (index < stop)).astype(np.int64)
            rows_of = np.asarray(index, dtype=np.int64)
            rules = (rows_of - start, rows_of if predecessors else None, rows_of)
            xq = x
            nq = stop - start
        else:
            nq = Y.shape[0]
            xq, visit = Y, np.arange(nq, dtype=np.int64)
            rules = (visit, None, None)
        dist = np.empty((nq, k))
        idx = np.empty((nq, k), dtype=np.int64)
        evals = np.zeros(nq, dtype=np.int64)
        _kdtree.knn(self._tree, xq, visit, rules, (dist, idx, evals), nt)
        self.stats["seconds"]["query"] = time.perf_counter() - t0
        return dist, idx, int(evals.sum())

    def __repr__(self):
        return (f"KDTree(n_samples={self.n_samples}, n_features={self.n_features}, "
                f"leaf_size={self.leaf_size})")
