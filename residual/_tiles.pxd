from residual._typedefs cimport float64_t, intp_t

# Kernel codes shared with residual/kernels.py (Kernel._code).
cdef enum:
    KERNEL_RBF = 0
    KERNEL_MATERN12 = 1
    KERNEL_MATERN32 = 2
    KERNEL_MATERN52 = 3

cdef struct KernelSpec:
    int kind
    float64_t variance

# Tiles: query rows against candidate columns, written to out with row stride ldo. Coordinates
# are the model's centred, lengthscale-scaled rows; candidates for the direct r^2 are stored
# transposed (dim x n, row stride ldxct) so the inner loop runs over contiguous columns.
cdef void sqdist_gram_tile(const float64_t* xq, const float64_t* nq, intp_t nrows,
                           const float64_t* xc, const float64_t* nc, intp_t ncols,
                           intp_t dim, float64_t* out, intp_t ldo) noexcept nogil

cdef void kernel_tile(KernelSpec spec, const float64_t* xq, intp_t nrows,
                      const float64_t* xct, intp_t ldxct, intp_t ncols,
                      intp_t dim, float64_t* out, intp_t ldo) noexcept nogil

cdef void residual_cov_tile(KernelSpec spec,
                            const float64_t* xq, const float64_t* vq, intp_t nrows,
                            const float64_t* xct, intp_t ldxct, const float64_t* vc,
                            intp_t ncols,
                            intp_t dim, intp_t m, float64_t* out, intp_t ldo) noexcept nogil

cdef void sqdist_direct_tile(const float64_t* xq, intp_t nrows,
                             const float64_t* xct, intp_t ldxct, intp_t ncols,
                             intp_t dim, float64_t* out, intp_t ldo) noexcept nogil
