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
