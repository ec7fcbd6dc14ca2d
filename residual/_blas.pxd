from residual._typedefs cimport float32_t, float64_t, intp_t

# The BLAS integer type of scipy.linalg.cython_blas (LP64 today). If SciPy ships ILP64 cython_blas,
# change this one typedef.
ctypedef int blas_int

# dgemm_rm / sgemm_rm take BLAS's own 13 arguments, in its order, so that a call reads like the
# GEMM it is (the one exception to the eight-parameter limit of the compiled code).
cdef void dgemm_rm(bint trans_a, bint trans_b, intp_t m, intp_t n, intp_t k,
                   float64_t alpha, const float64_t* a, intp_t lda,
                   const float64_t* b, intp_t ldb,
                   float64_t beta, float64_t* c, intp_t ldc) noexcept nogil

cdef void sgemm_rm(bint trans_a, bint trans_b, intp_t m, intp_t n, intp_t k,
                   float32_t alpha, const float32_t* a, intp_t lda,
                   const float32_t* b, intp_t ldb,
                   float32_t beta, float32_t* c, intp_t ldc) noexcept nogil

cdef float64_t ddot_(intp_t n, const float64_t* x, const float64_t* y) noexcept nogil

cdef void trsv_lower_rm(intp_t m, const float64_t* l, float64_t* x) noexcept nogil

cdef blas_int potrf_lower_rm(intp_t m, float64_t* a, intp_t lda) noexcept nogil

cdef void trsv_lower_trans_rm(intp_t m, const float64_t* l, intp_t ldl,
                              float64_t* x) noexcept nogil

cdef void syrk_lower_rm(intp_t n, intp_t k, float64_t alpha, const float64_t* a, intp_t lda,
                        float64_t beta, float64_t* c, intp_t ldc) noexcept nogil


# One element of dgemm_rm's C -= A B^T, with dgemm's own arithmetic (see dgemm_chain in
# _blas.pyx, which finds and checks the blocking): the inner product is cut into k-blocks; each
# block is one chain of fused multiply-adds from 0 in ascending k, subtracted from C in turn.
# The k-blocks follow OpenBLAS's level-3 rule with block length q and unroll u. Lane l works
# on b[l]: up to 8 independent chains at once, so the FMA latency is hidden.
cdef extern from *:
    """
    #include <math.h>
    /* the next k-block end after k0 < m (OpenBLAS level3.c: a block of q, or a remainder
       between q and 2q halved and rounded up to the unroll u) */
    static inline long residual_gemm_block_end(long k0, long m, long q, long u) {
        long len = m - k0;
        if (len >= 2 * q) len = q;
        else if (len > q) len = ((len / 2 + u - 1) / u) * u;
        return k0 + len;
    }
    /* 8 chains in flight (FMA latency x throughput), written out so that the compiler keeps
       them in scalar registers rather than gathering across b */
    #define RESIDUAL_LANES(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)
    static inline void residual_gemm_elements(double* c, const double* a, const double* const* b,
                                       long count, long m, long q, long u) {
        for (long l0 = 0; l0 < count; l0 += 8) {
            long nl = count - l0 < 8 ? count - l0 : 8;
            #define RESIDUAL_INIT(l) const double* b##l = b[l0 + (l < nl ? l : 0)]; \
                double c##l = c[l0 + (l < nl ? l : 0)];
            RESIDUAL_LANES(RESIDUAL_INIT)
            for (long k0 = 0; k0 < m;) {
                long k1 = residual_gemm_block_end(k0, m, q, u);
                #define RESIDUAL_ZERO(l) double s##l = 0.0;
                RESIDUAL_LANES(RESIDUAL_ZERO)
                for (long k = k0; k < k1; k++) {
                    double ak = a[k];
                    #define RESIDUAL_FMA(l) s##l = fma(ak, b##l[k], s##l);
                    RESIDUAL_LANES(RESIDUAL_FMA)
                }
                #define RESIDUAL_SUB(l) c##l = c##l - s##l;
                RESIDUAL_LANES(RESIDUAL_SUB)
                k0 = k1;
            }
            #define RESIDUAL_STORE(l) if (l < nl) c[l0 + l] = c##l;
            RESIDUAL_LANES(RESIDUAL_STORE)
        }
    }
    """
    void gemm_elements "residual_gemm_elements"(
        float64_t* c, const float64_t* a, const float64_t* const* b, long count, long m,
        long q, long u) noexcept nogil

# dgemm's k-blocking, as found by dgemm_chain (q = 0: no chain matched, do not use).
cdef struct GemmChain:
    long q, u
