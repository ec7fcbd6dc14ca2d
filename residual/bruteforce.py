"""Exact brute-force kNN: the float64 oracle every other answer is checked against."""

import numpy as np

from residual import _blas, _bruteforce
from residual._parallel import resolve_num_threads, single_threaded_blas
from residual._tiles import Metric
from residual._validate import (as_points, check_precision, check_query, check_rows,
                                resolve_chunk_size)

#: Queries per parallel work item when ``chunk_size`` is None. 256 rows per BLAS call pack
#: the candidate tiles half as often as 128 (n = 32768, 2 threads: 4-5 % faster in float64
#: and with the float32 screen).
DEFAULT_CHUNK_SIZE = 256

#: Chunks are rounded up to a multiple of this, so every query row sits at the same place in
#: BLAS's register blocking whatever ``chunk_size`` is (BLAS edge kernels may sum in another
#: order, and the answer must not depend on the chunking).
CHUNK_ALIGN = 32

#: The counters of ``return_stats`` that are summed over calls in ``Metric.screen_counts``.
COUNTERS = ("pairs", "screened_float32", "recomputed_float64", "float64_pairs")


def brute_force_knn(X_or_model, k, Y=None, *, predecessors=False, rows=None, num_threads=None,
                    chunk_size=None, precision="auto", return_stats=False):
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
    precision : {"auto", "float32", "float64"}, default="auto"
        How residual pairs are computed; the answer is the same, bit for bit, with each.
        ``"float64"``: every pair by float64 tiles. ``"float32"``: a float32 product with a
        proven error bound rules out the pairs that cannot be neighbours, and only the rest
        is computed in float64, with the float64 tiles' arithmetic. ``"auto"``: float32 where
        the model's residual variances make it pay (on the standard harness, p ~ 1e-6, they
        do not), else float64. Euclidean distances are always float64. float32 is never used
        where its bound would not hold (V rows with norms over 1e18), where BLAS's dgemm
        arithmetic is not reproduced (checked once per process), or for k over n / 8.
    return_stats : bool, default=False
        Also return a dict of counters: ``float32`` (whether the float32 screen ran),
        ``pairs`` (pairs considered), ``screened_float32`` (ruled out by the float32 bound),
        ``recomputed_float64`` (kept by it and computed in float64), ``float64_pairs``
        (computed by the float64 tiles: every pair without the screen, else those of query
        chunks the bound could not screen) and ``hit_rate``
        (``screened_float32 / (screened_float32 + recomputed_float64)``, nan without the
        screen).

    Returns
    -------
    dist : ndarray of shape (n_queries, k), float64
        Distances, each row ascending by (distance, index); ``inf`` where padded.
    idx : ndarray of shape (n_queries, k), int64
        Neighbour indices (rows of X); ``-1`` where padded.
    stats : dict
        Only with ``return_stats=True`` (see there).

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
    check_precision(precision)
    cands = Metric.euclidean(X) if model is None else model.metric
    if Y is None:
        out = in_sample_rows(cands, k, bool(predecessors), start, stop, nt, chunk,
                             precision=precision, return_stats=True)
    else:
        out = _new_points(cands, model, Y, k, nt, chunk, precision)
    return out if return_stats else out[:2]


def _new_points(cands, model, Y, k, nt, chunk, precision):
    """The kNN of new points Y (checked) among ``cands``: ``(dist, idx, stats)``."""
    nq = Y.shape[0]
    if nq == 0:
        return (np.empty((0, k)), np.empty((0, k), dtype=np.int64),
                _stats(np.zeros((0, 3), dtype=np.int64), False))
    pad = -nq % CHUNK_ALIGN
    if pad:
        # whole 32-row groups only, as for in-sample blocks: a new point's answer then
        # does not depend on how many points are queried with it, nor on its place
        Y = np.concatenate([Y, np.repeat(Y[:1], pad, axis=0)])
    queries = Metric.euclidean(Y) if model is None else model._query_metric(Y, nt)
    dist, idx, stats = _knn(cands, queries, k, False, False, 0, nt, chunk, precision)
    return (dist[:nq].copy(), idx[:nq].copy(), stats) if pad else (dist, idx, stats)


def in_sample_rows(cands, k, predecessors, start, stop, num_threads,
                   chunk=DEFAULT_CHUNK_SIZE, *, precision="auto", return_stats=False):
    """Rows ``start..stop-1`` of the in-sample query over the Metric ``cands``, on checked
    arguments (the validated core of :func:`brute_force_knn`, also used by the Vecchia
    path): ``(dist, idx)``, and the stats dict with ``return_stats``."""
    # widen the block to CHUNK_ALIGN boundaries: every row then meets BLAS in the same
    # register-block position as in the full query, so the answer is the same to the bit
    lo = start // CHUNK_ALIGN * CHUNK_ALIGN
    hi = min(cands.n, -(-stop // CHUNK_ALIGN) * CHUNK_ALIGN)
    dist, idx, stats = _knn(cands, cands.take(slice(lo, hi)), k, True, predecessors, lo,
                            num_threads, chunk, precision)
    if (lo, hi) != (start, stop):
        dist, idx = dist[start - lo:stop - lo].copy(), idx[start - lo:stop - lo].copy()
    return (dist, idx, stats) if return_stats else (dist, idx)


def _knn(cands, queries, k, in_sample, predecessors, row_offset, nt, chunk, precision):
    """The compiled search of the Metric ``queries`` among ``cands`` (see _bruteforce.knn):
    ``(dist, idx, stats)``; the counters are also added to ``cands.screen_counts``.

    Rows the float32 screen defers are answered here by the float64 tiles, gathered in
    CHUNK_ALIGN groups (their bits do not depend on which rows they are tiled with).
    """
    n_queries = queries.n
    dist = np.empty((n_queries, k))
    idx = np.empty((n_queries, k), dtype=np.int64)
    counts = np.zeros((0, 3), dtype=np.int64)
    screen = ()
    if n_queries:
        with single_threaded_blas():
            screen = _screen(cands, queries, k, in_sample, row_offset, precision)
        counts, deferred = _run(cands, queries, in_sample, predecessors, row_offset,
                                (dist, idx), (chunk, nt), screen)
        late = np.flatnonzero(deferred)
        if late.size:
            # pad to whole CHUNK_ALIGN groups with copies of the last row (answered twice)
            rows = np.concatenate([late, np.repeat(late[-1:], -late.size % CHUNK_ALIGN)])
            sub = (np.empty((rows.size, k)), np.empty((rows.size, k), dtype=np.int64))
            more, _ = _run(cands, queries.take(rows), in_sample, predecessors,
                           rows + row_offset, sub, (chunk, nt), ())
            dist[late], idx[late] = sub[0][:late.size], sub[1][:late.size]
            pad_pairs = (rows.size - late.size) * _row_pairs(cands.n, in_sample, predecessors,
                                                               rows[-1] + row_offset)
            counts = np.concatenate([counts, more, [[0, 0, -pad_pairs]]])
    stats = _stats(counts, bool(screen))
    for name in COUNTERS:
        cands.screen_counts[name] = cands.screen_counts.get(name, 0) + stats[name]
    return dist, idx, stats


def _row_pairs(n_cand, in_sample, predecessors, point):
    """The pairs a query row considers (predecessors: j < point; in-sample: itself not)."""
    return point if predecessors else n_cand - bool(in_sample)


def _run(cands, queries, in_sample, predecessors, rows, out, plan, screen):
    """One _bruteforce.knn call: ``(counts, deferred)`` (see there)."""
    n_queries = queries.n
    chunk = min(plan[0], n_queries)                # no workspace larger than the work
    chunk = -(-chunk // CHUNK_ALIGN) * CHUNK_ALIGN
    counts = np.zeros((-(-n_queries // chunk), 3), dtype=np.int64)
    deferred = np.zeros(n_queries, dtype=np.uint8)
    with single_threaded_blas():
        _bruteforce.knn(queries, cands, in_sample, predecessors, rows,
                        (*out, counts, deferred), (chunk, plan[1]), screen)
    return counts, deferred


def _screen(cands, queries, k, in_sample, row_offset, precision):
    """The ``screen`` argument of _bruteforce.knn: () for float64 tiles only, else the float32
    rows and norms of queries and candidates and dgemm's blocking (see ``precision``).
    Called with BLAS held to one thread, as the tiles run."""
    if precision == "float64" or not cands.float32_safe():
        return ()
    if 8 * k > cands.n:     # most pairs would be kept: nothing to screen (and 4k kept per row)
        return ()
    if precision == "auto" and not cands.float32_pays():
        return ()
    if not in_sample and not queries.float32_safe():
        return ()
    chain = _blas.dgemm_chain(cands.m)
    if chain[0] == 0:
        return ()
    vc32, nc = cands.float32_rows()
    if in_sample:       # the queries are rows of cands: their float32 copy is a slice of it
        vq32, nq = vc32[row_offset:row_offset + queries.n], nc[row_offset:row_offset + queries.n]
    else:
        vq32, nq = queries.float32_rows()
    return vq32, nq, vc32, nc, chain


def _stats(counts, screened):
    """The stats dict of ``return_stats`` from _bruteforce.knn's per-chunk counts."""
    screened_pairs, recomputed, float64_pairs = (int(c) for c in counts.sum(axis=0))
    decided = screened_pairs + recomputed
    return {"float32": screened, "pairs": decided + float64_pairs,
            "screened_float32": screened_pairs, "recomputed_float64": recomputed,
            "float64_pairs": float64_pairs,
            "hit_rate": screened_pairs / decided if decided else float("nan")}
