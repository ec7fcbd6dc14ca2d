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

from cython.parallel cimport prange, parallel
from libc.math cimport sqrt, INFINITY
from libc.stdlib cimport free

from residual._typedefs cimport float64_t, intp_t, int64_t
from residual._select cimport (Candidate, TopK, topk_init, topk_push, topk_finish,
                               sort_candidates)
from residual._tiles cimport (Block, KernelSpec, Metric, residual_cov_tile, residual_key,
                              sqdist_direct_tile)
from residual._interrupt cimport Interrupt, interrupt_init, interrupted, reraise
from residual._workspace cimport carve, span, workspace_new

cdef enum:
    # Candidate columns per tile. Tiles start at multiples of TILE and are cut short only at
    # the end of the candidates or, in predecessor mode, at a multiple of COL_ALIGN: so each
    # column sits at the same place in BLAS's register blocking whatever the chunk size (BLAS
    # edge kernels may sum in another order, and the answer must not depend on the chunking).
    TILE = 1024
    COL_ALIGN = 64
    # Keys screened per block before any is offered to the top-k (see _offer_row).
    SCREEN = 64

cdef enum:
    METRIC_EUCLIDEAN = 0
    METRIC_RESIDUAL = 1

cdef struct Problem:
    int metric
    KernelSpec spec
    intp_t dim, m, k
    bint in_sample          # queries are the candidates themselves: skip j == i
    bint predecessors       # only j < i (in-sample only)
    intp_t row_offset       # in-sample: query row r is point row_offset + r (a block of rows)
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
    # outputs
    float64_t* out_dist
    int64_t* out_idx
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


cdef void _chunk(const Problem* P, intp_t q0, intp_t q1, float64_t* tile,
                 TopK* tops, Candidate* cands, intp_t cap) noexcept nogil:
    """Answer queries q0..q1-1 into the output arrays."""
    cdef intp_t nrows = q1 - q0, r, i, j, jmax, t0, ncols, col_end, count
    cdef float64_t* row
    for r in range(nrows):
        topk_init(&tops[r], cands + r * cap, cap, P.k)
    col_end = P.n_cand
    if P.predecessors:
        col_end = P.row_offset + q1 - 1     # the chunk's last point needs columns before it
    t0 = 0
    while t0 < col_end:
        ncols = min(<intp_t>TILE, P.n_cand - t0)
        ncols = min(ncols, (col_end - t0 + COL_ALIGN - 1) // COL_ALIGN * COL_ALIGN)
        if interrupted(P.stop):
            return
        _fill_tile(P, q0, nrows, t0, ncols, tile)
        for r in range(nrows):
            i = P.row_offset + q0 + r           # the query's point index
            jmax = ncols
            if P.predecessors:
                jmax = min(ncols, i - t0)
            if jmax <= 0:
                continue
            row = tile + r * TILE
            if P.metric == METRIC_RESIDUAL:
                _residual_keys(row, P.sq[q0 + r], P.sc + t0, jmax)
            if P.in_sample and t0 <= i < t0 + jmax:
                row[i - t0] = INFINITY          # a point is not its own neighbour
            _offer_row(&tops[r], row, jmax, t0)
        t0 += TILE
    for r in range(nrows):
        i = q0 + r                          # output row
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


cdef int _run(Problem* P, intp_t chunk, int num_threads) noexcept nogil:
    """prange over query chunks, one workspace per thread (_workspace.pxd).

    Returns 0, or 1 if a thread could not allocate its workspace.
    """
    cdef intp_t n_chunks = (P.n_queries + chunk - 1) // chunk, c, q0, q1
    cdef intp_t cap = 2 * P.k + 64
    cdef size_t n_tile = chunk * TILE * sizeof(float64_t), n_tops = chunk * sizeof(TopK)
    cdef size_t n_cands = chunk * cap * sizeof(Candidate)
    cdef char* work
    cdef char* at
    cdef float64_t* tile
    cdef TopK* tops
    cdef Candidate* cands
    cdef int failed = 0
    with parallel(num_threads=num_threads):
        work = workspace_new(span(n_tile) + span(n_tops) + span(n_cands), &failed)
        at = work
        tile = <float64_t*>carve(&at, n_tile)
        tops = <TopK*>carve(&at, n_tops)
        cands = <Candidate*>carve(&at, n_cands)
        # dynamic: predecessor chunks grow with their index, so static slices would be uneven.
        for c in prange(n_chunks, schedule='dynamic'):
            if work != NULL and not interrupted(P.stop):
                q0 = c * chunk
                q1 = min(q0 + chunk, P.n_queries)
                _chunk(P, q0, q1, tile, tops, cands, cap)
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


def knn(Metric queries, Metric cands, bint in_sample, bint predecessors, intp_t row_offset,
        tuple out, tuple parallel_plan):
    """kNN of the query rows among the candidate rows; arguments already validated by
    residual.bruteforce.

    queries are prepared like the candidates (same metric and kernel). In-sample queries may
    be a block of rows: query r is candidate row_offset + r. out = (dist, idx), each
    (n_queries, k), filled; parallel_plan = (chunk, num_threads).
    """
    cdef Problem P
    cdef const float64_t[:, ::1] xct = cands.xt
    cdef float64_t[:, ::1] out_dist = out[0]
    cdef int64_t[:, ::1] out_idx = out[1]
    P.metric = METRIC_RESIDUAL if cands.P.residual else METRIC_EUCLIDEAN
    P.spec = cands.P.spec
    P.dim = cands.P.dim
    P.m = cands.P.m
    P.k = out_dist.shape[1]
    P.in_sample = in_sample
    P.predecessors = predecessors
    P.row_offset = row_offset
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
    _solve(&P, parallel_plan[0], parallel_plan[1])
