"""Exact brute-force kNN: the float64 oracle every other answer is checked against."""

import numpy as np

from residual import _bruteforce
from residual.model import ResidualCorrelation
from residual.kernels import Kernel
from residual._parallel import resolve_num_threads, single_threaded_blas
from residual._tiles import Metric
from residual._validate import (as_float_matrix, check_euclidean_range, check_int,
                                resolve_chunk_size)

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
        On bad input, before any work starts (see Notes of DESIGN section 2).

    Examples
    --------
    >>> import numpy as np, residual
    >>> X = np.arange(5.0)[:, None]
    >>> dist, idx = residual.brute_force_knn(X, k=2)
    >>> idx[2]
    array([1, 3])
    """
    if isinstance(X_or_model, Kernel):
        raise TypeError("X_or_model must be coordinates or a ResidualCorrelation, not a kernel; "
                        "build ResidualCorrelation.from_kernel(X, kernel) first")
    residual = isinstance(X_or_model, ResidualCorrelation)
    X = X_or_model.X if residual else as_float_matrix(X_or_model, "X")
    n, dim = X.shape
    if not residual:
        check_euclidean_range(X, "X")
    Y, k = check_query(Y, k, predecessors, n, dim, euclidean=not residual)
    in_sample = Y is None
    start, stop = check_rows(rows, n, in_sample)
    nt = resolve_num_threads(num_threads)
    chunk = resolve_chunk_size(chunk_size, DEFAULT_CHUNK_SIZE)
    if in_sample:
        # widen the block to CHUNK_ALIGN boundaries: every row then meets BLAS in the same
        # register-block position as in the full query, so the answer is the same to the bit
        lo = start // CHUNK_ALIGN * CHUNK_ALIGN
        hi = min(n, -(-stop // CHUNK_ALIGN) * CHUNK_ALIGN)
    else:
        lo, hi = 0, Y.shape[0]
        pad = -hi % CHUNK_ALIGN
        if pad and hi:
            # whole 32-row groups only, as for in-sample blocks: a new point's answer then
            # does not depend on how many points are queried with it, nor on its place
            Y = np.concatenate([Y, np.repeat(Y[:1], pad, axis=0)])
            dist, idx = brute_force_knn(X_or_model, k, Y, num_threads=num_threads,
                                        chunk_size=chunk_size)
            return dist[:hi].copy(), idx[:hi].copy()
    n_queries = hi - lo
    chunk = min(chunk, max(n_queries, 1))          # no workspace larger than the work
    chunk = -(-chunk // CHUNK_ALIGN) * CHUNK_ALIGN

    dist = np.empty((n_queries, k))
    idx = np.empty((n_queries, k), dtype=np.int64)
    if n_queries == 0:
        return dist, idx
    cands = X_or_model.metric if residual else Metric.euclidean(X)
    if in_sample:
        queries = cands.take(slice(lo, hi))
    else:
        queries = X_or_model._query_metric(Y, nt) if residual else Metric.euclidean(Y)
    with single_threaded_blas():
        _bruteforce.knn(queries, cands, in_sample, bool(predecessors), lo, (dist, idx),
                        (chunk, nt))
    if (lo, hi) != (start, stop) and in_sample:
        return dist[start - lo:stop - lo].copy(), idx[start - lo:stop - lo].copy()
    return dist, idx


def check_rows(rows, n, in_sample):
    """Validate ``rows`` (None, a (start, stop) pair or a step-1 range) -> (start, stop)."""
    if rows is None:
        return 0, n
    if not in_sample:
        raise ValueError("rows applies to in-sample queries only (Y=None)")
    if isinstance(rows, range):
        if rows.step != 1:
            raise ValueError(f"rows must be a range with step 1, got {rows!r}")
        rows = (rows.start, rows.stop)
    if not isinstance(rows, (tuple, list)) or len(rows) != 2:
        raise TypeError(f"rows must be a (start, stop) pair or a range, got {rows!r}")
    start = check_int(rows[0], "rows start", minimum=0)
    stop = check_int(rows[1], "rows stop", minimum=0)
    if not start <= stop <= n:
        raise ValueError(f"rows must satisfy 0 <= start <= stop <= n_samples = {n}, "
                         f"got ({start}, {stop})")
    return start, stop


def check_query(Y, k, predecessors, n, dim, *, euclidean):
    """Validate a query's arguments (shared by brute_force_knn and CoverTree.query).

    Returns ``(Y, k)``: Y as C-contiguous float64 (None for in-sample queries) and k checked
    against the eligible set.
    """
    if not isinstance(predecessors, (bool, np.bool_)):
        raise TypeError(f"predecessors must be a bool, got {type(predecessors).__name__}")
    if Y is not None:
        if predecessors:
            raise ValueError("predecessors=True applies to in-sample queries only (Y=None)")
        Y = as_float_matrix(Y, "Y", ncols=dim, allow_empty=True)
        if euclidean:
            check_euclidean_range(Y, "Y")
    return Y, _check_k(k, n, Y is None, predecessors)


def _check_k(k, n, in_sample, predecessors):
    k = check_int(k, "k", minimum=1)
    if in_sample and not predecessors and k > n - 1:
        raise ValueError(f"k = {k} is larger than the n_samples - 1 = {n - 1} other points")
    if k > n:
        raise ValueError(f"k = {k} is larger than n_samples = {n}")
    return k
