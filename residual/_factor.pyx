# The Vecchia factor: one small dense Cholesky per row, rows in parallel.
#
# Row i of the ordered sequence conditions on the set c(i) (positions < i). With S the chosen
# covariance over the points [c(i)..., i] (kernel, or kernel - V V^T; plus the nugget on the
# diagonal), one Cholesky S = L L^T gives everything: its last row is
#   L[i, c] = l = L_cc^-1 S_ci   and   L[i, i] = sqrt(d_i),  d_i = S_ii - S_ic S_cc^-1 S_ci,
# so b_i = S_cc^-1 S_ci = L_cc^-T l is one more triangular solve, and the factor's row is
#   A_ii = 1 / sqrt(d_i),  A_i,c = -b_i / sqrt(d_i).
# S comes from the kernel tile of _tiles.pyx (the kernel formula lives there only), then one
# rank-m update for the residual; the update, the Cholesky and the solve go through the
# BLAS/LAPACK wrappers of _blas.pyx.
#
# Each row is computed by one thread from its own inputs only, so its bits do not depend on the
# thread count or the schedule. Per-thread workspaces are allocated once, inside the parallel
# block. The caller holds BLAS to one thread while this runs.

from cython.parallel cimport prange, parallel
from libc.stdlib cimport free
from libc.string cimport memcpy

import numpy as np

from residual._typedefs cimport float64_t, intp_t, int64_t
from residual._blas cimport potrf_lower_rm, syrk_lower_rm, trsv_lower_trans_rm
from residual._tiles cimport Block, KernelSpec, kernel_tile
from residual._interrupt cimport Interrupt, interrupt_init, interrupted, reraise
from residual._workspace cimport workspace_new

# Row status codes returned to Python.
cdef enum:
    ROW_OK = 0
    ROW_SINGULAR = 1

# Rows handed to a thread at a time: rows cost about the same (k neighbours each), but the
# machine may be shared, and dynamic hand-out keeps every thread busy when one is slowed.
cdef intp_t ROWS_PER_TASK = 64


cdef struct Problem:
    KernelSpec spec
    intp_t dim, m               # m = 0: kernel covariance (no V)
    const float64_t* xs         # (n, dim) ordered, centred, lengthscale-scaled coordinates
    const float64_t* v          # (n, m) ordered V rows, or NULL
    const int64_t* indptr       # CSR pattern of the factor: row i's columns are its
    const int64_t* indices      # conditioning set, ascending, then i itself (the last entry)
    float64_t nugget
    float64_t min_pivot         # a squared Cholesky pivot at or below this: singular block
    float64_t* data             # (nnz,) output, in the pattern's order
    unsigned char* status       # (n,) output, ROW_OK or ROW_SINGULAR


cdef unsigned char _row(const Problem* P, intp_t i, float64_t* work) noexcept nogil:
    """Fill row i of the factor; work holds (nr x dim) + (dim x nr) + (nr x m) + (nr x nr).

    NumPy: ``S = cov(pts, pts) + nugget * I`` with ``pts = indices[indptr[i]:indptr[i+1]]``;
    ``L = cholesky(S)``; ``b = solve(L[:-1, :-1].T, L[-1, :-1])``;
    ``row = append(-b, 1) / L[-1, -1]``.
    """
    cdef intp_t p0 = P.indptr[i], nr = P.indptr[i + 1] - p0, kc = nr - 1
    cdef intp_t dim = P.dim, m = P.m, a, t, src
    cdef float64_t* g = work                    # the points' coordinates, row by row
    cdef float64_t* gt = g + nr * dim           # the same, transposed (the tiles' column side)
    cdef float64_t* vg = gt + nr * dim          # their V rows
    cdef float64_t* s = vg + nr * m             # S, then L in its lower triangle
    cdef float64_t piv, sd
    for a in range(nr):
        src = P.indices[p0 + a]
        for t in range(dim):
            g[a * dim + t] = P.xs[src * dim + t]
            gt[t * nr + a] = P.xs[src * dim + t]
        if m:
            memcpy(vg + a * m, P.v + src * m, m * sizeof(float64_t))
    # s (nr x nr, row stride nr), its lower triangle only (all that potrf reads; 1.2x faster
    # per row than the full tile at k = 30); gt is (dim x nr) with row stride nr
    cdef Block row, cols
    for a in range(nr):
        row = Block(n=1, ld=dim, x=g + a * dim, v=NULL, s=NULL)
        cols = Block(n=a + 1, ld=nr, x=gt, v=NULL, s=NULL)
        kernel_tile(P.spec, &row, &cols, dim, s + a * nr, nr)
    if m:
        # S -= V_g V_g^T on the lower triangle only (all that potrf reads): half the
        # products of _tiles.residual_cov_tile's dgemm, 1.2x faster per row at k = 30, m = 200
        syrk_lower_rm(nr, m, -1.0, vg, m, 1.0, s, nr)
    for a in range(nr):
        s[a * nr + a] += P.nugget
    if potrf_lower_rm(nr, s, nr) != 0:
        return ROW_SINGULAR
    for a in range(nr):
        piv = s[a * nr + a]
        if not (piv * piv > P.min_pivot):        # written so that NaN fails too
            return ROW_SINGULAR
    sd = s[kc * nr + kc]
    if kc:
        # the last row of L holds l = L_cc^-1 S_ci; L_cc^T b = l gives b in place
        trsv_lower_trans_rm(kc, s, nr, s + kc * nr)
    for a in range(kc):
        P.data[p0 + a] = -s[kc * nr + a] / sd
    P.data[p0 + kc] = 1.0 / sd
    return ROW_OK


cdef int _run(Problem* P, intp_t n, intp_t max_row, Interrupt* stop,
              int num_threads) noexcept nogil:
    """prange over row blocks, one workspace per thread (_workspace.pxd); returns 0, or 1 if a
    thread could not allocate its workspace. Checks for Ctrl-C before each block (a million
    rows are seconds of work)."""
    cdef intp_t n_tasks = (n + ROWS_PER_TASK - 1) // ROWS_PER_TASK, c, i
    cdef intp_t size = max_row * (2 * P.dim + P.m + max_row)
    cdef float64_t* work
    cdef int failed = 0
    with parallel(num_threads=num_threads):
        work = <float64_t*>workspace_new(size * sizeof(float64_t), &failed)
        for c in prange(n_tasks, schedule='dynamic'):
            if work != NULL and not interrupted(stop):
                for i in range(c * ROWS_PER_TASK, min((c + 1) * ROWS_PER_TASK, n)):
                    P.status[i] = _row(P, i, work)
        # end: prange
        free(work)
    return failed


def vecchia_factor(kernel, const float64_t[:, ::1] xs, v,
                   const int64_t[::1] indptr, const int64_t[::1] indices,
                   float64_t nugget, float64_t min_pivot, int num_threads):
    """Values of the Vecchia factor on a CSR pattern; arguments already validated.

    kernel: the Kernel (its code and variance are read); xs: ordered, centred, lengthscale-scaled
    coordinates; v: ordered V rows (residual covariance) or None (kernel covariance);
    indptr/indices: the pattern of ``VecchiaNeighbors.to_csr()``. Returns ``(data, status)``: data
    in the pattern's order, status per row (0 ok, 1 singular block: data of that row undefined).
    """
    cdef Problem P
    cdef intp_t n = xs.shape[0], i, max_row = 1
    cdef const float64_t[:, ::1] vv
    cdef int rc
    cdef Interrupt stop
    if indptr.shape[0] != n + 1 or indices.shape[0] != indptr[n]:
        raise ValueError("the pattern does not match the points")
    P.spec.kind = kernel._code
    P.spec.variance = kernel.variance
    P.dim = xs.shape[1]
    P.xs = &xs[0, 0]
    P.m = 0
    P.v = NULL
    if v is not None:
        vv = v
        if vv.shape[0] != n:
            raise ValueError("V does not match the points")
        P.m = vv.shape[1]
        P.v = &vv[0, 0]
    for i in range(n):
        max_row = max(max_row, indptr[i + 1] - indptr[i])
    data = np.empty(indices.shape[0])
    status = np.zeros(n, dtype=np.uint8)
    cdef float64_t[::1] d = data
    cdef unsigned char[::1] st = status
    P.indptr = &indptr[0]
    P.indices = &indices[0]
    P.nugget = nugget
    P.min_pivot = min_pivot
    P.data = &d[0]
    P.status = &st[0]
    interrupt_init(&stop)
    with nogil:
        rc = _run(&P, n, max_row, &stop, num_threads)
    reraise(&stop)
    if rc != 0:
        raise MemoryError("could not allocate the per-thread workspaces")
    return data, status


def csr_times_dense(const float64_t[::1] data, const int64_t[::1] indptr,
                    const int64_t[::1] indices, const float64_t[:, ::1] b,
                    intp_t start, intp_t stop, int num_threads):
    """Rows ``start..stop-1`` of ``A @ B`` for a CSR matrix A (arrays already validated).

    For the log density: ``A y`` and ``W = A V`` by blocks of rows. Each row is summed in the
    pattern's order by one thread (the same bits whatever the thread count); the inner loop
    runs over B's contiguous columns and vectorises. NumPy: ``(A @ B)[start:stop]``.
    """
    cdef intp_t r = b.shape[1], i, p, t
    cdef float64_t a
    cdef float64_t* row
    cdef const float64_t* src
    out = np.zeros((stop - start, r))
    cdef float64_t[:, ::1] o = out
    if stop <= start or r == 0:
        return out
    for i in prange(start, stop, nogil=True, num_threads=num_threads, schedule='static'):
        row = &o[i - start, 0]
        for p in range(indptr[i], indptr[i + 1]):
            a = data[p]
            src = &b[indices[p], 0]
            for t in range(r):
                row[t] += a * src[t]
    return out
