"""Exact brute-force kNN: the float64 oracle every other answer is checked against."""

import numpy as np

from residual import _bruteforce
from residual._parallel import resolve_num_threads, single_threaded_blas
from residual._tiles import Metric
from residual._validate import as_points, check_query, check_rows, resolve_chunk_size

#: Queries per parallel work item when ``chunk_size`` is None.
DEFAULT_CHUNK_SIZE = 128

#: Chunks are rounded up to a multiple of this, so every query row sits at the same place in
#: BLAS's register blocking whatever ``chunk_size`` is (BLAS edge kernels may sum in another
#: order, and the answer must not depend on the chunking).
CHUNK_ALIGN = 32


def brute_force_knn(X_or_model, k, Y=None, *, predecessors=False, rows=None, num_threads=None,
                    chunk_size=None):
    """Exact k nearest neighbours by exhaustive search, in float64.

    Parameters
    ----------
    X_or_model : array-like of shape (n_samples, n_features) or ResidualCorrelation
        Coordinates (Euclidean distance) or a residual-correlation model.
    k : int
        Neighbours per query. In-sample queries: ``1 <= k <= n_samples - 1``; new points:
        ``k <= n_samples``; with ``predecessors=True``: ``k <= n_samples`` (rows with fewer
        predecessors are padded).
    Y : array-like of shape (n_queries, n_features), default=None
        New query points. None queries every indexed point, itself excluded. For a residual
        model, V and p of the new points come from the model's L and ``k(U, Y)``.
    predecessors : bool, default=False
        Vecchia mode (in-sample only): row i considers only points j < i and returns
        ``min(k, i)`` neighbours.
    rows : (start, stop) or range, default=None
        In-sample only: answer only rows ``start..stop-1`` (a block of the in-sample query,
        e.g. for progress reports or to spread it over workers). The result equals the
        corresponding rows of the full query, bit for bit.
    num_threads : int, default=None
        OpenMP threads (None = ``OMP_NUM_THREADS`` if set, else all usable cores; negative
        counts back from the usable cores).
    chunk_size : int, default=None
        Queries per parallel work item (None = ``DEFAULT_CHUNK_SIZE``), rounded up to a
        multiple of ``CHUNK_ALIGN``. Results do not depend on it, nor on ``num_threads``.

    Returns
    -------
    dist : ndarray of shape (n_queries, k), float64
        Distances, each row ascending by (distance, index); ``inf`` where padded.
    idx : ndarray of shape (n_queries, k), int64
        Neighbour indices (rows of X); ``-1`` where padded.

    Raises
    ------
    TypeError, ValueError
        On bad input, before any work starts; the message names the argument.

    Examples
    --------
    >>> import numpy as np, residual
    >>> X = np.arange(5.0)[:, None]
    >>> dist, idx = residual.brute_force_knn(X, k=2)
    >>> idx[2]
    array([1, 3])
    """
    model, X = as_points(X_or_model)
    n, dim = X.shape
    Y, k = check_query(Y, k, predecessors, n, dim, euclidean=model is None)
    start, stop = check_rows(rows, n, Y is None)
    nt = resolve_num_threads(num_threads)
    chunk = resolve_chunk_size(chunk_size, DEFAULT_CHUNK_SIZE)
    cands = Metric.euclidean(X) if model is None else model.metric
    if Y is None:
        return in_sample_rows(cands, k, bool(predecessors), start, stop, nt, chunk)
    nq = Y.shape[0]
    if nq == 0:
        return np.empty((0, k)), np.empty((0, k), dtype=np.int64)
    pad = -nq % CHUNK_ALIGN
    if pad:
        # whole 32-row groups only, as for in-sample blocks: a new point's answer then
        # does not depend on how many points are queried with it, nor on its place
        Y = np.concatenate([Y, np.repeat(Y[:1], pad, axis=0)])
    queries = Metric.euclidean(Y) if model is None else model._query_metric(Y, nt)
    dist, idx = _knn(cands, queries, k, False, False, 0, nt, chunk)
    return (dist[:nq].copy(), idx[:nq].copy()) if pad else (dist, idx)


def in_sample_rows(cands, k, predecessors, start, stop, num_threads,
                   chunk=DEFAULT_CHUNK_SIZE):
    """Rows ``start..stop-1`` of the in-sample query over the Metric ``cands``, on checked
    arguments (the validated core of :func:`brute_force_knn`, also used by the Vecchia
    path)."""
    # widen the block to CHUNK_ALIGN boundaries: every row then meets BLAS in the same
    # register-block position as in the full query, so the answer is the same to the bit
    lo = start // CHUNK_ALIGN * CHUNK_ALIGN
    hi = min(cands.n, -(-stop // CHUNK_ALIGN) * CHUNK_ALIGN)
    dist, idx = _knn(cands, cands.take(slice(lo, hi)), k, True, predecessors, lo, num_threads,
                     chunk)
    if (lo, hi) != (start, stop):
        return dist[start - lo:stop - lo].copy(), idx[start - lo:stop - lo].copy()
    return dist, idx


def _knn(cands, queries, k, in_sample, predecessors, row_offset, nt, chunk):
    """The compiled search of the Metric ``queries`` among ``cands`` (see _bruteforce.knn)."""
    n_queries = queries.n
    chunk = min(chunk, max(n_queries, 1))          # no workspace larger than the work
    chunk = -(-chunk // CHUNK_ALIGN) * CHUNK_ALIGN
    dist = np.empty((n_queries, k))
    idx = np.empty((n_queries, k), dtype=np.int64)
    if n_queries:
        with single_threaded_blas():
            _bruteforce.knn(queries, cands, in_sample, predecessors, row_offset, (dist, idx),
                            (chunk, nt))
    return dist, idx
