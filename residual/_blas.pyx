# Row-major GEMM on top of SciPy's Fortran BLAS. This is the only module that cimports
# scipy.linalg.cython_blas; everything else calls dgemm_rm / sgemm_rm. The few LAPACK calls
# (scipy.linalg.cython_lapack, the same library) are wrapped here too, for the same reasons:
# one place for the row-major algebra and for the blas_int type.
#
# Algebra: a row-major (r x c) array with leading dimension ld is, to column-major BLAS, the
# (c x r) matrix transposed. So C = alpha op(A) op(B) + beta C in row-major is
# C^T = alpha op(B)^T op(A)^T + beta C^T in column-major: swap the operands, swap m and n, and
# keep each operand's own transpose flag (BLAS sees B first, then A). No data moves.
# One explicit function per dtype rather than a fused one: fused cdef functions do not cross module
# boundaries reliably.

from libc.stdlib cimport free, malloc

from scipy.linalg.cython_blas cimport ddot, dgemm, dsyrk, dtrsv, sgemm
from scipy.linalg.cython_lapack cimport dpotrf


cdef struct ColMajor:
    # A row-major GEMM's arguments as column-major BLAS takes them (see the algebra above).
    char ta, tb
    blas_int m, n, k, lda, ldb, ldc


cdef inline ColMajor _col_major(bint trans_a, bint trans_b, intp_t m, intp_t n, intp_t k,
                                intp_t lda, intp_t ldb, intp_t ldc) noexcept nogil:
    """The swap: BLAS computes C^T = op(B)^T op(A)^T, so m and n trade places and each
    operand keeps its own transpose flag (ta is B's, tb is A's)."""
    cdef ColMajor g
    g.ta = b'T' if trans_b else b'N'
    g.tb = b'T' if trans_a else b'N'
    g.m, g.n, g.k = <blas_int>n, <blas_int>m, <blas_int>k
    g.lda, g.ldb, g.ldc = <blas_int>lda, <blas_int>ldb, <blas_int>ldc
    return g


cdef void dgemm_rm(bint trans_a, bint trans_b, intp_t m, intp_t n, intp_t k,
                   float64_t alpha, const float64_t* a, intp_t lda,
                   const float64_t* b, intp_t ldb,
                   float64_t beta, float64_t* c, intp_t ldc) noexcept nogil:
    """Row-major C (m x n) = alpha * op(A) (m x k) @ op(B) (k x n) + beta * C.

    NumPy equivalent: ``C[:] = alpha * (A.T if trans_a else A) @ (B.T if trans_b else B) + beta * C``.
    lda/ldb/ldc are the row strides (in elements) of the stored arrays.
    """
    cdef ColMajor g = _col_major(trans_a, trans_b, m, n, k, lda, ldb, ldc)
    dgemm(&g.ta, &g.tb, &g.m, &g.n, &g.k, &alpha, <float64_t*>b, &g.ldb,
          <float64_t*>a, &g.lda, &beta, c, &g.ldc)


cdef void sgemm_rm(bint trans_a, bint trans_b, intp_t m, intp_t n, intp_t k,
                   float32_t alpha, const float32_t* a, intp_t lda,
                   const float32_t* b, intp_t ldb,
                   float32_t beta, float32_t* c, intp_t ldc) noexcept nogil:
    """Single-precision twin of :func:`dgemm_rm` (same algebra)."""
    cdef ColMajor g = _col_major(trans_a, trans_b, m, n, k, lda, ldb, ldc)
    sgemm(&g.ta, &g.tb, &g.m, &g.n, &g.k, &alpha, <float32_t*>b, &g.ldb,
          <float32_t*>a, &g.lda, &beta, c, &g.ldc)


cdef float64_t ddot_(intp_t n, const float64_t* x, const float64_t* y) noexcept nogil:
    """x . y for contiguous vectors (one pair's residual product in the tree)."""
    cdef blas_int bn = <blas_int>n, one = 1
    return ddot(&bn, <float64_t*>x, &one, <float64_t*>y, &one)


cdef void trsv_lower_rm(intp_t m, const float64_t* l, float64_t* x) noexcept nogil:
    """Solve L y = x in place for one vector; L is lower triangular, row-major (m x m).

    Row-major L is column-major L^T (upper), so BLAS solves (L^T)^T y = x. One right-hand side
    per call: its rounding cannot depend on which other vectors are solved with it.
    """
    cdef char uplo = b'U', trans = b'T', diag = b'N'
    cdef blas_int bm = <blas_int>m, one = 1
    dtrsv(&uplo, &trans, &diag, &bm, <float64_t*>l, &bm, x, &one)


cdef void syrk_lower_rm(intp_t n, intp_t k, float64_t alpha, const float64_t* a, intp_t lda,
                        float64_t beta, float64_t* c, intp_t ldc) noexcept nogil:
    """Row-major lower triangle of C (n x n) = alpha * A A^T + beta * C, A row-major (n x k);
    the strict upper triangle of C is not touched.

    NumPy: ``C[tril] = (alpha * A @ A.T + beta * C)[tril]``. Row-major A is column-major
    A^T (k x n), and row-major lower C is column-major upper: BLAS computes
    C_U = alpha (A^T)^T (A^T) + beta C_U with uplo 'U', trans 'T'.
    """
    cdef char uplo = b'U', trans = b'T'
    cdef blas_int bn = <blas_int>n, bk = <blas_int>k
    cdef blas_int l_a = <blas_int>lda, l_c = <blas_int>ldc
    dsyrk(&uplo, &trans, &bn, &bk, &alpha, <float64_t*>a, &l_a, &beta, c, &l_c)


cdef blas_int potrf_lower_rm(intp_t m, float64_t* a, intp_t lda) noexcept nogil:
    """Cholesky factor in place: the lower triangle of row-major A (m x m, row stride lda)
    becomes L with A = L L^T; the strict upper triangle is left as it was.

    Row-major lower L is column-major upper U = L^T, so LAPACK factors A = U^T U with
    uplo 'U'; it reads only that triangle (row-major: the lower one). Returns LAPACK's info:
    0, or j > 0 when the leading j x j block is not positive definite.
    """
    cdef char uplo = b'U'
    cdef blas_int bm = <blas_int>m, l_a = <blas_int>lda, info = 0
    dpotrf(&uplo, &bm, a, &l_a, &info)
    return info


cdef void trsv_lower_trans_rm(intp_t m, const float64_t* l, intp_t ldl,
                              float64_t* x) noexcept nogil:
    """Solve L^T y = x in place for one vector; L is lower triangular, row-major (m x m,
    row stride ldl). Row-major L is column-major U = L^T (upper), so BLAS solves U y = x."""
    cdef char uplo = b'U', trans = b'N', diag = b'N'
    cdef blas_int bm = <blas_int>m, l_l = <blas_int>ldl, one = 1
    dtrsv(&uplo, &trans, &diag, &bm, <float64_t*>l, &l_l, x, &one)


def gemm(const float64_t[:, ::1] a, const float64_t[:, ::1] b, bint trans_b=True):
    """Test hook: ``a @ b.T`` (or ``a @ b``) through :func:`dgemm_rm`."""
    import numpy as np
    cdef intp_t m = a.shape[0], k = a.shape[1]
    cdef intp_t n = b.shape[0] if trans_b else b.shape[1]
    if (b.shape[1] if trans_b else b.shape[0]) != k:
        raise ValueError("inner dimensions differ")
    out = np.zeros((m, n))
    cdef float64_t[:, ::1] c = out
    if m and n and k:
        dgemm_rm(False, trans_b, m, n, k, 1.0, &a[0, 0], k, &b[0, 0], b.shape[1], 0.0, &c[0, 0], n)
    return out


def sgemm_test(const float32_t[:, ::1] a, const float32_t[:, ::1] b):
    """Test hook: ``a @ b.T`` in float32 through :func:`sgemm_rm`."""
    import numpy as np
    cdef intp_t m = a.shape[0], k = a.shape[1], n = b.shape[0]
    out = np.zeros((m, n), dtype=np.float32)
    cdef float32_t[:, ::1] c = out
    if m and n and k:
        sgemm_rm(False, True, m, n, k, 1.0, &a[0, 0], k, &b[0, 0], k, 0.0, &c[0, 0], n)
    return out


# dgemm_chain's probe: one tile of random rows, as wide as a brute-force tile short of an unroll
# (so BLAS's edge kernels are in it too), and the k-block lengths and unrolls it tries
# (OpenBLAS's GEMM_Q and GEMM_UNROLL_M over its x86 and ARM kernels, and more).
cdef intp_t PROBE_ROWS = 32, PROBE_COLS = 1021
_CHAIN_Q = (256, 384, 512, 320, 192, 128, 640, 768, 1024, 224, 240, 288, 352, 448, 480, 2048)
_CHAIN_U = (4, 8, 16, 2, 1, 32)
_chains = {}


def dgemm_chain(intp_t m):
    """dgemm's k-blocking for inner products of length m, as a GemmChain's ``(q, u)``, or
    ``(0, 0)`` when no blocking reproduces dgemm_rm.

    The float32 screen recomputes single pairs and must get dgemm_rm's bits (_blas.pxd,
    gemm_elements). BLAS's kernels do not promise any order, so it is checked here, once per m
    and process, on a probe tile: every element of dgemm_rm's ``C - A B^T`` must equal
    gemm_elements' for one candidate blocking, else the screen is not used. BLAS kernels do
    not branch on the data, so the order seen on the probe is the order on any data. The caller
    holds BLAS to one thread, as the brute force's tiles do.
    """
    import numpy as np
    if m in _chains:
        return _chains[m]
    rng = np.random.default_rng(20261130)
    a = rng.standard_normal((PROBE_ROWS, m))
    b = rng.standard_normal((PROBE_COLS, m))
    c0 = 1.0 + rng.random((PROBE_ROWS, PROBE_COLS))
    out = c0.copy()
    cdef const float64_t[:, ::1] av = a, bv = b, cv = c0
    cdef float64_t[:, ::1] ov = out
    if m:
        dgemm_rm(False, True, PROBE_ROWS, PROBE_COLS, m, -1.0, &av[0, 0], m, &bv[0, 0], m, 1.0,
                 &ov[0, 0], PROBE_COLS)
    found = (0, 0)
    seen = set()
    for q in _CHAIN_Q:
        for u in _CHAIN_U:
            blocks = _blocks(m, q, u)
            if blocks in seen:
                continue
            seen.add(blocks)
            if _chain_matches(av, bv, cv, ov, q, u, 4) and _chain_matches(av, bv, cv, ov, q, u,
                                                                         PROBE_COLS):
                found = (q, u)
                break
        if found[0]:
            break
    _chains[m] = found
    return found


def _blocks(intp_t m, long q, long u):
    """The k-block ends of gemm_elements' rule (the candidates that differ are tried)."""
    ends, k0 = [], 0
    while k0 < m:
        length = m - k0
        if length >= 2 * q:
            length = q
        elif length > q:
            length = (length // 2 + u - 1) // u * u
        k0 += length
        ends.append(k0)
    return tuple(ends)


cdef bint _chain_matches(const float64_t[:, ::1] a, const float64_t[:, ::1] b,
                         const float64_t[:, ::1] c0, const float64_t[:, ::1] out, long q, long u,
                         intp_t ncols):
    """Does gemm_elements with (q, u) give out's bits on the first ncols columns of each row?"""
    cdef intp_t r, j, m = a.shape[1]
    cdef bint same = True
    cdef const float64_t** ptrs = <const float64_t**>malloc(ncols * sizeof(float64_t*))
    cdef float64_t* c = <float64_t*>malloc(ncols * sizeof(float64_t))
    if ptrs == NULL or c == NULL:
        free(ptrs)
        free(c)
        raise MemoryError()
    for j in range(ncols):
        ptrs[j] = &b[j, 0]
    for r in range(a.shape[0]):
        for j in range(ncols):
            c[j] = c0[r, j]
        gemm_elements(c, &a[r, 0], ptrs, ncols, m, q, u)
        for j in range(ncols):
            same = same and c[j] == out[r, j]
    free(ptrs)
    free(c)
    return same


