# Blocked exact kNN: the float64 oracle, and vecchia_neighbors' default residual search. It
# reads two Metrics (_tiles.pxd), the queries and the candidates, already checked by
# residual/bruteforce.py.
#
# Queries are cut into chunks; a `prange` over chunks gives each thread whole chunks, so a
# query's answer never depends on who computed it. For one chunk, the candidate columns are
# swept in fixed-width tiles in ascending index order: one tile = one or two BLAS calls
# (_tiles.pyx) plus a flat loop that turns the tile into selection keys and offers them to each
# row's bounded top-k buffer (_select.pxd). Memory per thread: chunk x TILE doubles for the tile
# and chunk x (2k + 64) candidates, never n x n.
#
# Keys are monotone in the distance, so the square root is taken only for the final k:
#   residual:  key = 1 - min(1, |C_ij| s_i s_j),  s = 1/sqrt(p) (0 for a degenerate p):
#              residual_key in _tiles.pxd, shared with the tree
#   euclidean: key = r^2 by the exact direct sum
# Threads: the caller holds BLAS to one thread (threadpoolctl) while this runs. Ctrl-C is
# checked before every tile (_interrupt.pxd): a chunk can be seconds of work at large n.
#
# float32 screen (residual, when Metric.float32_pays or asked; see "float32 screen" in
# _tiles.pyx for the bound and the rule). A chunk then makes two passes:
#   1. per tile, one sgemm on the float32 copies of V (half the flops and bytes of dgemm) and
#      the kernel row in float32 from the float64 r^2 (kernel32_row: its error is in the
#      bound, see "float32 kernel" in _tiles.pyx); from them each pair's key is known to lie
#      in [lo, hi]. Each row keeps the pairs whose lo is at most its thr, the k-th smallest
#      hi it has seen (a max-heap of the k smallest his, fed its whole first tile, then the
#      pairs it keeps): every other pair has a key above the row's k-th float64 key, so it
#      is not a neighbour (decided in float32). Memory per thread: chunk x TILE floats and
#      chunk x (4k + 128) kept pairs and k his.
#   2. the kept pairs (about k, plus those the bound cannot separate) are recomputed in
#      float64 with dgemm's own arithmetic (_blas.pxd gemm_elements: the k-blocked FMA chains,
#      checked against dgemm once per m by _blas.dgemm_chain) from the float64 kernel of
#      their r^2 (kernel_of_sqdist: the tiles' own loop on the tiles' r^2), and offered to
#      the top-k in ascending index order, as the float64 tiles offer them. The k nearest,
#      their keys and so their distances are the float64 path's, bit for bit
#      (tests/test_precision.py).
# A row whose full buffer stays over 3/4 full once tightened is flushed (recomputed as in 2);
# at the second flush the bound is taken not to separate its pairs (a point of p ~ jitter,
# such as an inducing point) and the row is deferred: knn leaves it unanswered and the caller
# answers the deferred rows together on the float64 tiles, where they cost a GEMM's share.

from cython.parallel cimport prange, parallel
from libc.math cimport sqrt, INFINITY
from libc.stdlib cimport free

from residual._typedefs cimport float32_t, float64_t, intp_t, int64_t
from residual._blas cimport GemmChain, gemm_elements, sgemm_rm
from residual._select cimport (Candidate, TopK, topk_init, topk_push, topk_finish,
                               sort_candidates)
from residual._tiles cimport (Block, KernelSpec, Metric, Slack32, key_upper, kernel32_row,
                              kernel_of_sqdist, key_lower, residual_cov_tile, residual_key,
                              slack32, slack32_kernel32, sqdist_direct_tile)
from residual._interrupt cimport Interrupt, interrupt_init, interrupted, reraise
from residual._workspace cimport carve, span, workspace_new

import numpy as np

cdef enum:
    # Candidate columns per tile. Tiles start at multiples of TILE and are cut short only at
    # the end of the candidates or, in predecessor mode, at a multiple of COL_ALIGN: so each
    # column sits at the same place in BLAS's register blocking whatever the chunk size (BLAS
    # edge kernels may sum in another order, and the answer must not depend on the chunking).
    TILE = 1024
    COL_ALIGN = 64
    # Keys screened per block before any is offered to the top-k (see _offer_row).
    SCREEN = 64
    # float32 screen: after this many flushes of a row's full buffer the bound is taken not
    # to separate its pairs and the row is deferred to the float64 tiles. (The first flush
    # may be a start that kept too much.)
    DEFER_AFTER = 2
    # Only chunks of a multiple of ROW_ALIGN rows (bruteforce.CHUNK_ALIGN) are screened: BLAS
    # sums every element of such a tile alike (gemm_elements' chain), but the last rows of
    # a shorter chunk (the in-sample query's last, when n is not a multiple) fall in its
    # edge kernels, which may sum otherwise. Such a chunk runs on the float64 tiles.
    ROW_ALIGN = 32

cdef enum:
    METRIC_EUCLIDEAN = 0
    METRIC_RESIDUAL = 1

cdef enum:
    # Per chunk, the counters knn returns: pairs ruled out by the float32 screen, pairs it
    # kept and recomputed in float64 (in rows it answered), pairs of the float64 tiles.
    COUNT_SCREENED = 0
    COUNT_RECOMPUTED = 1
    COUNT_FLOAT64 = 2
    N_COUNTS = 3

# A pair kept by the float32 screen: its key is at least lo; r2 is its float64 r^2.
cdef struct Kept:
    float64_t lo, r2
    intp_t j

cdef struct Problem:
    int metric
    KernelSpec spec
    intp_t dim, m, k
    bint in_sample          # queries are the candidates themselves: skip j == i
    bint predecessors       # only j < i (in-sample only)
    intp_t row_offset       # in-sample: query row r is point row_offset + r (a block of rows)
    const int64_t* qpoint   # or, if not NULL, point qpoint[r] (ascending)
    # queries
    intp_t n_queries
    const float64_t* xq     # (n_queries, dim) residual: scaled, centred; euclidean: raw
    const float64_t* vq     # (n_queries, m)                          (residual)
    const float64_t* sq     # (n_queries,) 1/sqrt(p), 0 if degenerate (residual)
    # candidates
    intp_t n_cand
    const float64_t* xct    # (dim, n_cand) candidate coordinates, transposed
    const float64_t* vc     # (n_cand, m)                             (residual)
    const float64_t* sc     # (n_cand,)                               (residual)
    # the float32 screen (screen = False: the float64 tiles only)
    bint screen
    const float32_t* vq32   # (n_queries, m) V in float32
    const float32_t* vc32   # (n_cand, m)
    const float64_t* nq     # (n_queries,) |v| in float64
    const float64_t* nc     # (n_cand,)
    Slack32 slack           # slack32 widened for kernel32_row (slack32_kernel32)
    GemmChain chain
    # outputs
    float64_t* out_dist
    int64_t* out_idx
    int64_t* counts         # (n_chunks, N_COUNTS)
    unsigned char* deferred # (n_queries,) float32 screen: 1 for rows left to the float64 tiles
    Interrupt* stop         # Ctrl-C: checked after every tile


cdef void _fill_tile(const Problem* P, intp_t q0, intp_t nrows, intp_t t0, intp_t ncols,
                     float64_t* tile) noexcept nogil:
    """tile[r, j] (row stride TILE): residual covariance C or Euclidean r^2, query q0+r vs t0+j."""
    cdef Block q, c
    if P.metric == METRIC_RESIDUAL:
        q = Block(n=nrows, ld=P.dim, x=P.xq + q0 * P.dim, v=P.vq + q0 * P.m, s=NULL)
        c = Block(n=ncols, ld=P.n_cand, x=P.xct + t0, v=P.vc + t0 * P.m, s=NULL)
        residual_cov_tile(P.spec, &q, &c, P.dim, P.m, tile, TILE)
    else:
        sqdist_direct_tile(P.xq + q0 * P.dim, nrows, P.xct + t0, P.n_cand, ncols, P.dim,
                           tile, TILE)


cdef inline void _residual_keys(float64_t* row, float64_t s_i, const float64_t* s_c,
                                intp_t ncols) noexcept nogil:
    """C -> key = 1 - min(1, |C| s_i s_j) = d^2, in place (a flat loop that vectorises)."""
    cdef intp_t j
    for j in range(ncols):
        row[j] = residual_key(row[j], s_i, s_c[j])


cdef inline void _offer_row(TopK* t, const float64_t* keys, intp_t ncols,
                            intp_t first_index) noexcept nogil:
    """Offer keys[0..ncols) (indices first_index + j, ascending) to one row's top-k.

    Once the buffer is warm almost nothing passes, so blocks are first screened with a
    branch-free count that vectorises; only blocks with a hit are walked one by one.
    """
    cdef intp_t b, j, end, hits
    cdef float64_t thr
    b = 0
    while b < ncols:
        end = min(b + <intp_t>SCREEN, ncols)
        thr = t.thr
        hits = 0
        for j in range(b, end):
            hits += keys[j] < thr
        if hits:
            for j in range(b, end):
                topk_push(t, keys[j], first_index + j)
        b = end


cdef inline intp_t _point(const Problem* P, intp_t q) noexcept nogil:
    """In-sample: the point index of query row q."""
    return P.qpoint[q] if P.qpoint != NULL else P.row_offset + q


cdef inline intp_t _col_end(const Problem* P, intp_t q1) noexcept nogil:
    """The columns a chunk ending at query q1 reads: all, or in predecessor mode those before
    its last point."""
    return _point(P, q1 - 1) if P.predecessors else P.n_cand


cdef inline intp_t _tile_cols(const Problem* P, intp_t t0, intp_t col_end) noexcept nogil:
    """Columns of the tile at t0 (see TILE and COL_ALIGN)."""
    cdef intp_t ncols = min(<intp_t>TILE, P.n_cand - t0)
    return min(ncols, (col_end - t0 + COL_ALIGN - 1) // COL_ALIGN * COL_ALIGN)


cdef inline intp_t _row_cols(const Problem* P, intp_t i, intp_t t0, intp_t ncols) noexcept nogil:
    """Of a tile's columns t0.., how many point i reads (predecessor mode: those before i)."""
    return min(ncols, i - t0) if P.predecessors else ncols


cdef inline intp_t _self_col(const Problem* P, intp_t i, intp_t t0, intp_t jmax) noexcept nogil:
    """The tile column of point i itself (not its own neighbour), or -1."""
    return i - t0 if P.in_sample and t0 <= i < t0 + jmax else -1


cdef void _chunk(const Problem* P, intp_t q0, intp_t q1, float64_t* tile,
                 TopK* tops, Candidate* cands, intp_t cap, int64_t* counts) noexcept nogil:
    """Answer queries q0..q1-1 into the output arrays with the float64 tiles."""
    cdef intp_t nrows = q1 - q0, r, i, jmax, t0, ncols, col_end = _col_end(P, q1), me
    cdef float64_t* row
    for r in range(nrows):
        topk_init(&tops[r], cands + r * cap, cap, P.k)
    t0 = 0
    while t0 < col_end:
        ncols = _tile_cols(P, t0, col_end)
        if interrupted(P.stop):
            return
        _fill_tile(P, q0, nrows, t0, ncols, tile)
        for r in range(nrows):
            i = _point(P, q0 + r)
            jmax = _row_cols(P, i, t0, ncols)
            if jmax <= 0:
                continue
            row = tile + r * TILE
            if P.metric == METRIC_RESIDUAL:
                _residual_keys(row, P.sq[q0 + r], P.sc + t0, jmax)
            me = _self_col(P, i, t0, jmax)
            if me >= 0:
                row[me] = INFINITY              # a point is not its own neighbour
            counts[COUNT_FLOAT64] += jmax - (me >= 0)
            _offer_row(&tops[r], row, jmax, t0)
        t0 += TILE
    _write_rows(P, q0, nrows, tops)


cdef void _write_rows(const Problem* P, intp_t q0, intp_t nrows, TopK* tops) noexcept nogil:
    """The top-k of rows q0.. into the outputs: keys to distances, sorted by (distance,
    index), padded with (inf, -1); deferred rows are left to the caller."""
    cdef intp_t r, i, j, count
    for r in range(nrows):
        i = q0 + r                          # output row
        if P.deferred[i]:
            continue
        count = topk_finish(&tops[r])
        for j in range(count):      # key -> distance, then one sort by (distance, index)
            tops[r].buf[j].first = sqrt(tops[r].buf[j].first)
        sort_candidates(tops[r].buf, count)
        for j in range(count):
            P.out_dist[i * P.k + j] = tops[r].buf[j].first
            P.out_idx[i * P.k + j] = tops[r].buf[j].second
        for j in range(count, P.k):
            P.out_dist[i * P.k + j] = INFINITY
            P.out_idx[i * P.k + j] = -1


# -- the float32 screen ------------------------------------------------------------------------

# One thread's buffers for the float32 screen (carved from its workspace, see _run).
cdef struct Screen:
    float32_t* tile32           # (chunk, TILE) sgemm products, row stride TILE
    float64_t* r2               # (TILE,) one row's r^2, as the float64 tiles make them
    float64_t* krow             # (TILE,) its float32 kernel values (kernel32_row)
    float64_t* lo               # (TILE,) one row's lower keys
    Kept* kept                  # (chunk, kcap) the pairs each row keeps, ascending index
    intp_t* nkept               # (chunk,)
    float64_t* thr              # (chunk,) k-th smallest upper key seen (+inf before)
    float64_t* upper            # (chunk, k) max-heaps of the k smallest upper keys seen
    intp_t* nupper              # (chunk,) their sizes
    const float64_t** ptrs      # (kcap,) V rows of pairs recomputed in float64
    float64_t* cov              # (kcap,) their covariances
    int* flushes                # (chunk,) flushes of a row's full buffer (see DEFER_AFTER)
    int64_t* pairs              # (chunk,) pairs of each row
    int64_t* rowrec             # (chunk,) of which recomputed in float64
    intp_t kcap


cdef inline void _row_keys(const Problem* P, const float64_t* krow, const float32_t* prod,
                           float64_t ani, float64_t si, intp_t t0, intp_t jmax, bint upper,
                           float64_t* out) noexcept nogil:
    """out[j] = key_lower (or key_upper) of pair (i, t0 + j), j < jmax: flat loops that
    vectorise."""
    cdef intp_t j
    cdef float64_t b = P.slack.b, t = P.slack.t
    cdef const float64_t* nc = P.nc + t0
    cdef const float64_t* sc = P.sc + t0
    if upper:
        for j in range(jmax):
            out[j] = key_upper(krow[j], prod[j], ani, nc[j], si, sc[j], b, t)
    else:
        for j in range(jmax):
            out[j] = key_lower(krow[j], prod[j], ani, nc[j], si, sc[j], b, t)


cdef inline void _offer_upper(const Problem* P, Screen* S, intp_t r,
                              float64_t h) noexcept nogil:
    """Offer the upper key h of a pair row r has not offered before to its max-heap of the k
    smallest; once k are in, thr is at most the root (k pairs have keys at most it)."""
    cdef float64_t* up = S.upper + r * P.k
    cdef intp_t pos, child, n = S.nupper[r]
    if n < P.k:                                 # not full: sift up
        pos = n
        while pos > 0 and up[(pos - 1) // 2] < h:
            up[pos] = up[(pos - 1) // 2]
            pos = (pos - 1) // 2
        up[pos] = h
        S.nupper[r] = n + 1
        if n + 1 < P.k:
            return
    elif h < up[0]:                             # below the root: it replaces the root
        pos = 0
        while True:
            child = 2 * pos + 1
            if child >= n:
                break
            if child + 1 < n and up[child] < up[child + 1]:
                child += 1
            if up[child] <= h:
                break
            up[pos] = up[child]
            pos = child
        up[pos] = h
    else:
        return
    S.thr[r] = min(S.thr[r], up[0])


cdef void _flush(const Problem* P, Screen* S, TopK* top, intp_t r, intp_t q) noexcept nogil:
    """Recompute row r's kept pairs in float64 with dgemm's arithmetic and offer them to its
    top-k (in ascending index order, as kept); the buffer is emptied."""
    cdef intp_t x, n = S.nkept[r], m = P.m
    cdef Kept* kept = S.kept + r * S.kcap
    cdef float64_t si = P.sq[q]
    for x in range(n):
        S.ptrs[x] = P.vc + kept[x].j * m
        S.cov[x] = kept[x].r2
    kernel_of_sqdist(P.spec, S.cov, n)         # the float64 tiles' kernel values
    gemm_elements(S.cov, P.vq + q * m, S.ptrs, n, m, P.chain.q, P.chain.u)
    for x in range(n):
        topk_push(top, residual_key(S.cov[x], si, P.sc[kept[x].j]), kept[x].j)
    S.nkept[r] = 0
    S.rowrec[r] += n


cdef intp_t _tighten(const Problem* P, Screen* S, TopK* top, intp_t r) noexcept nogil:
    """Lower row r's thr to its top-k's threshold and drop the pairs whose lower key is above
    thr (order kept); returns how many are left."""
    cdef Kept* kept = S.kept + r * S.kcap
    cdef intp_t n = S.nkept[r], x, w = 0
    cdef float64_t t = min(S.thr[r], top.thr)
    S.thr[r] = t
    for x in range(n):
        if kept[x].lo <= t:
            kept[w] = kept[x]
            w += 1
    S.nkept[r] = w
    return w


cdef void _first_threshold(const Problem* P, Screen* S, intp_t r, intp_t q, intp_t t0,
                           intp_t jmax, intp_t me) noexcept nogil:
    """Offer every pair of row r's first tile to its heap of upper keys: its first thr is
    then the k-th smallest upper key of the whole tile, so that the buffer does not fill with
    pairs that the threshold of the first few would keep."""
    cdef intp_t j
    cdef float64_t* his = S.lo         # free until _row_keys makes the lower keys
    _row_keys(P, S.krow, S.tile32 + r * TILE, P.slack.a * P.nq[q], P.sq[q], t0, jmax, True,
              his)
    for j in range(jmax):
        if his[j] < S.thr[r] and j != me:      # (most are not: no sift, a branch predicted)
            _offer_upper(P, S, r, his[j])


cdef void _screen_row(const Problem* P, Screen* S, TopK* top, intp_t r, intp_t q, intp_t t0,
                      intp_t jmax, intp_t me) noexcept nogil:
    """Keep the pairs of row r (query q) in this tile whose lower key is at most the row's
    thr, and offer their upper keys (but in the first tile, offered whole); blocks of SCREEN
    are counted branch-free first, as in _offer_row."""
    cdef intp_t b = 0, j, end, hits, n
    cdef float64_t thr, si = P.sq[q], ani = P.slack.a * P.nq[q]
    cdef const float64_t* lo = S.lo
    cdef const float32_t* prod = S.tile32 + r * TILE
    cdef Kept* kept = S.kept + r * S.kcap
    while b < jmax and not P.deferred[q]:
        end = min(b + <intp_t>SCREEN, jmax)
        thr = S.thr[r]
        hits = 0
        for j in range(b, end):
            hits += lo[j] <= thr
        if hits:
            for j in range(b, end):
                if lo[j] <= S.thr[r] and j != me:
                    n = S.nkept[r]
                    kept[n].lo = lo[j]
                    kept[n].r2 = S.r2[j]
                    kept[n].j = t0 + j
                    S.nkept[r] = n + 1
                    if t0 > 0:
                        _offer_upper(P, S, r, key_upper(S.krow[j], prod[j], ani, P.nc[t0 + j],
                                                       si, P.sc[t0 + j], P.slack.b, P.slack.t))
                    # full: if over 3/4 is still taken once tightened, the bound does not
                    # separate this row's pairs; flush them, or defer the row
                    if n + 1 == S.kcap and _tighten(P, S, top, r) > S.kcap - S.kcap // 4:
                        _flush(P, S, top, r, q)
                        S.flushes[r] += 1
                        P.deferred[q] = S.flushes[r] >= DEFER_AFTER
        b = end


cdef void _chunk_screened(const Problem* P, intp_t q0, intp_t q1, Screen* S, TopK* tops,
                          Candidate* cands, intp_t cap, int64_t* counts) noexcept nogil:
    """Answer queries q0..q1-1 with the float32 screen (module comment), but for the rows it
    defers."""
    cdef intp_t nrows = q1 - q0, r, i, q, jmax, t0, ncols, me
    cdef intp_t col_end = _col_end(P, q1), m = P.m
    for r in range(nrows):
        S.nkept[r] = 0
        S.thr[r] = INFINITY
        S.nupper[r] = 0
        S.flushes[r] = 0
        S.pairs[r] = 0
        S.rowrec[r] = 0
        topk_init(&tops[r], cands + r * cap, cap, P.k)
    t0 = 0
    while t0 < col_end:
        ncols = _tile_cols(P, t0, col_end)
        if interrupted(P.stop):
            return
        # products (nrows x ncols, row stride TILE) = vq32 rows (ld m) @ vc32 rows (ld m)^T
        sgemm_rm(False, True, nrows, ncols, m, 1.0, P.vq32 + q0 * m, m, P.vc32 + t0 * m, m,
                 0.0, S.tile32, TILE)
        for r in range(nrows):
            q = q0 + r
            i = _point(P, q)
            jmax = _row_cols(P, i, t0, ncols)
            if jmax <= 0 or P.deferred[q]:
                continue
            # r^2 as the float64 tiles make them (same loop), then the float32 kernel
            sqdist_direct_tile(P.xq + q * P.dim, 1, P.xct + t0, P.n_cand, jmax, P.dim, S.r2,
                               TILE)
            kernel32_row(P.spec, S.r2, S.krow, jmax)
            me = _self_col(P, i, t0, jmax)
            S.pairs[r] += jmax - (me >= 0)
            if t0 == 0:
                _first_threshold(P, S, r, q, t0, jmax, me)
            _row_keys(P, S.krow, S.tile32 + r * TILE, P.slack.a * P.nq[q], P.sq[q], t0,
                      jmax, False, S.lo)
            _screen_row(P, S, &tops[r], r, q, t0, jmax, me)
        t0 += TILE
    for r in range(nrows):
        q = q0 + r
        if P.deferred[q]:
            continue
        _tighten(P, S, &tops[r], r)        # the final threshold
        _flush(P, S, &tops[r], r, q)
        counts[COUNT_RECOMPUTED] += S.rowrec[r]
        counts[COUNT_SCREENED] += S.pairs[r] - S.rowrec[r]
    _write_rows(P, q0, nrows, tops)


cdef Screen _screen_carve(char** at, intp_t chunk, intp_t kcap, intp_t k) noexcept nogil:
    """A thread's Screen buffers, carved from its workspace (see _screen_bytes)."""
    cdef Screen S
    S.tile32 = <float32_t*>carve(at, chunk * TILE * sizeof(float32_t))
    S.r2 = <float64_t*>carve(at, TILE * sizeof(float64_t))
    S.krow = <float64_t*>carve(at, TILE * sizeof(float64_t))
    S.lo = <float64_t*>carve(at, TILE * sizeof(float64_t))
    S.kept = <Kept*>carve(at, chunk * kcap * sizeof(Kept))
    S.nkept = <intp_t*>carve(at, chunk * sizeof(intp_t))
    S.thr = <float64_t*>carve(at, chunk * sizeof(float64_t))
    S.upper = <float64_t*>carve(at, chunk * k * sizeof(float64_t))
    S.nupper = <intp_t*>carve(at, chunk * sizeof(intp_t))
    S.ptrs = <const float64_t**>carve(at, kcap * sizeof(float64_t*))
    S.cov = <float64_t*>carve(at, kcap * sizeof(float64_t))
    S.flushes = <int*>carve(at, chunk * sizeof(int))
    S.pairs = <int64_t*>carve(at, chunk * sizeof(int64_t))
    S.rowrec = <int64_t*>carve(at, chunk * sizeof(int64_t))
    S.kcap = kcap
    return S


cdef size_t _screen_bytes(intp_t chunk, intp_t kcap, intp_t k) noexcept nogil:
    """The workspace bytes _screen_carve takes."""
    return (span(chunk * TILE * sizeof(float32_t)) + 3 * span(TILE * sizeof(float64_t))
            + span(chunk * kcap * sizeof(Kept)) + 2 * span(chunk * sizeof(intp_t))
            + span(chunk * sizeof(float64_t)) + span(chunk * k * sizeof(float64_t))
            + span(kcap * sizeof(float64_t*)) + span(kcap * sizeof(float64_t))
            + span(chunk * sizeof(int)) + 2 * span(chunk * sizeof(int64_t)))


cdef int _run(Problem* P, intp_t chunk, int num_threads) noexcept nogil:
    """prange over query chunks, one workspace per thread (_workspace.pxd).

    Returns 0, or 1 if a thread could not allocate its workspace.
    """
    cdef intp_t n_chunks = (P.n_queries + chunk - 1) // chunk, c, q0, q1
    # the float64 tile and/or the float32 screen's buffers (kept pairs: kcap per row)
    cdef intp_t cap = 2 * P.k + 64, kcap = 4 * P.k + 128 if P.screen else 0
    cdef intp_t screen_rows = chunk if P.screen else 0
    cdef bint tiles = not P.screen or P.n_queries % ROW_ALIGN != 0
    cdef size_t n_tile = chunk * TILE * sizeof(float64_t) if tiles else 0
    cdef size_t n_tops = chunk * sizeof(TopK), n_cands = chunk * cap * sizeof(Candidate)
    cdef size_t n_screen = _screen_bytes(screen_rows, kcap, P.k)
    cdef char* work
    cdef char* at
    cdef float64_t* tile
    cdef TopK* tops
    cdef Candidate* cands
    cdef Screen S
    cdef int64_t* counts
    cdef int failed = 0
    with parallel(num_threads=num_threads):
        work = workspace_new(span(n_tile) + span(n_tops) + span(n_cands) + n_screen, &failed)
        at = work
        tile = <float64_t*>carve(&at, n_tile)
        tops = <TopK*>carve(&at, n_tops)
        cands = <Candidate*>carve(&at, n_cands)
        S = _screen_carve(&at, screen_rows, kcap, P.k)
        # dynamic: predecessor chunks grow with their index, so static slices would be uneven.
        for c in prange(n_chunks, schedule='dynamic'):
            if work != NULL and not interrupted(P.stop):
                q0 = c * chunk
                q1 = min(q0 + chunk, P.n_queries)
                counts = P.counts + c * N_COUNTS
                if P.screen and (q1 - q0) % ROW_ALIGN == 0:
                    _chunk_screened(P, q0, q1, &S, tops, cands, cap, counts)
                else:
                    _chunk(P, q0, q1, tile, tops, cands, cap, counts)
        # end: prange
        free(work)
    return failed


cdef _solve(Problem* P, intp_t chunk, int num_threads):
    cdef int status
    cdef Interrupt stop
    interrupt_init(&stop)
    P.stop = &stop
    with nogil:
        status = _run(P, chunk, num_threads)
    reraise(&stop)
    if status != 0:
        raise MemoryError("could not allocate the per-thread workspaces")


def knn(Metric queries, Metric cands, bint in_sample, bint predecessors, rows, tuple out,
        tuple parallel_plan, tuple screen):
    """kNN of the query rows among the candidate rows; arguments already validated by
    residual.bruteforce.

    queries are prepared like the candidates (same metric and kernel). In-sample queries are
    candidate rows: ``rows`` is an int, query r being row rows + r (a block of rows), or an
    ascending int64 array, query r being row rows[r]. out = (dist, idx, counts, deferred):
    dist and idx (n_queries, k), filled; counts (n_chunks, 3) int64 zeros, filled with each
    chunk's pairs ruled out by the float32 screen, kept by it and recomputed in float64, and
    computed by float64 tiles; deferred (n_queries,) uint8 zeros, set to 1 for the rows the
    screen leaves unanswered (its bound separates nothing there; the caller answers them
    with the float64 tiles). parallel_plan = (chunk, num_threads). screen = () for the float64
    tiles only, or (vq32, nq, vc32, nc, (q, u)) for the float32 screen: the float32 V rows
    and float64 norms of queries and candidates, and _blas.dgemm_chain(m).
    """
    cdef Problem P
    cdef const float64_t[:, ::1] xct = cands.xt
    cdef float64_t[:, ::1] out_dist = out[0]
    cdef int64_t[:, ::1] out_idx = out[1]
    cdef int64_t[:, ::1] counts = out[2]
    cdef unsigned char[::1] deferred = out[3]
    cdef const int64_t[::1] qpoint
    cdef const float32_t[:, ::1] vq32, vc32
    cdef const float64_t[::1] nq, nc
    P.metric = METRIC_RESIDUAL if cands.P.residual else METRIC_EUCLIDEAN
    P.spec = cands.P.spec
    P.dim = cands.P.dim
    P.m = cands.P.m
    P.k = out_dist.shape[1]
    P.in_sample = in_sample
    P.predecessors = predecessors
    P.row_offset = 0
    P.qpoint = NULL
    if isinstance(rows, int):
        P.row_offset = rows
    else:
        qpoint = rows
        P.qpoint = &qpoint[0]
    P.n_queries = queries.P.n
    P.xq = queries.P.x
    P.vq = queries.P.v
    P.sq = queries.P.s
    P.n_cand = cands.P.n
    P.xct = &xct[0, 0]
    P.vc = cands.P.v
    P.sc = cands.P.s
    P.out_dist = &out_dist[0, 0]
    P.out_idx = &out_idx[0, 0]
    P.counts = &counts[0, 0]
    P.deferred = &deferred[0]
    P.screen = len(screen) > 0
    if P.screen:
        vq32, nq, vc32, nc = screen[0], screen[1], screen[2], screen[3]
        P.vq32, P.nq, P.vc32, P.nc = &vq32[0, 0], &nq[0], &vc32[0, 0], &nc[0]
        P.slack = slack32_kernel32(slack32(P.m, max(np.max(screen[1], initial=0.0),
                                                    np.max(screen[3], initial=0.0))), P.spec)
        P.chain.q, P.chain.u = screen[4]
    _solve(&P, parallel_plan[0], parallel_plan[1])
