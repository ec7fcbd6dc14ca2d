from libc.math cimport sqrt, fabs

from residual._typedefs cimport float32_t, float64_t, intp_t
from residual._blas cimport ddot_

# Kernel codes; residual/kernels.py reads them from here (Kernel._code).
cpdef enum KernelKind:
    KERNEL_RBF = 0
    KERNEL_MATERN12 = 1
    KERNEL_MATERN32 = 2
    KERNEL_MATERN52 = 3

cdef struct KernelSpec:
    int kind
    float64_t variance

# Tiles: query rows against candidate columns, written to out with row stride ldo. Coordinates
# are the model's centred, lengthscale-scaled rows.
#
# One side of a tile: n rows of a metric. Query side: x row-major (n x dim). Column side: x
# transposed (dim x n, row stride ld), so the inner loop runs over contiguous columns. v: the
# V rows (n x m, row stride m) and s: 1/sqrt(p), residual only (NULL where not read).
cdef struct Block:
    intp_t n, ld
    const float64_t* x
    const float64_t* v
    const float64_t* s

cdef void kernel_tile(KernelSpec spec, const Block* q, const Block* c, intp_t dim,
                      float64_t* out, intp_t ldo) noexcept nogil

cdef void residual_cov_tile(KernelSpec spec, const Block* q, const Block* c, intp_t dim,
                            intp_t m, float64_t* out, intp_t ldo) noexcept nogil

cdef void kernel_of_sqdist(KernelSpec spec, float64_t* r2, intp_t n) noexcept nogil

cdef void sqdist_direct_tile(const float64_t* xq, intp_t nrows,
                             const float64_t* xct, intp_t ldxct, intp_t ncols,
                             intp_t dim, float64_t* out, intp_t ldo) noexcept nogil


cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    /* exp(x) for x <= 0, written so that GCC vectorises loops that call it (libm's exp is a
       scalar call unless -ffast-math, which would also break NaN/inf handling elsewhere).
       x = k ln2 + r with |r| <= ln2/2 (Cody-Waite, two-part ln2), exp(r) by its Taylor
       series to degree 13 (truncation < 1e-17), 2^k built in the exponent bits. Error about
       1-2 ulp; tests compare the kernels with NumPy's exp at rtol 1e-12. Inputs in
       [-745, -708] are clamped to -708 (exp(-708) ~ 3e-308, far below anything that can decide
       a comparison); below -745 (and -inf) the result is 0, as for libm. */
    /* r^2 is capped here before a kernel sees it: the kernel is exactly 0 long before, and a
       finite r keeps the Matern polynomial finite (inf times exp's 0 would be NaN). */
    #define RESIDUAL_R2_MAX 1e300
    static inline double residual_exp_nonpos(double x) {
        const double shift = 0x1.8p52;
        const double x0 = x;
        x = x < -708.0 ? -708.0 : x;
        double kd = x * 0x1.71547652b82fep0 + shift;    /* round(x / ln2) in the low bits */
        double k = kd - shift;
        double r = x - k * 0x1.62e42fee00000p-1;      /* ln2 high part: k * it is exact */
        r = r - k * 0x1.a39ef35793c76p-33;              /* ln2 low part */
        double p = 1.0 / 6227020800.0;                  /* 1/13! */
        p = p * r + 1.0 / 479001600.0;
        p = p * r + 1.0 / 39916800.0;
        p = p * r + 1.0 / 3628800.0;
        p = p * r + 1.0 / 362880.0;
        p = p * r + 1.0 / 40320.0;
        p = p * r + 1.0 / 5040.0;
        p = p * r + 1.0 / 720.0;
        p = p * r + 1.0 / 120.0;
        p = p * r + 1.0 / 24.0;
        p = p * r + 1.0 / 6.0;
        p = p * r + 0.5;
        p = p * r + 1.0;
        p = p * r + 1.0;
        uint64_t bits;
        memcpy(&bits, &kd, sizeof bits);
        bits = (bits + 1023u) << 52;                    /* low bits of kd hold k: 2^k */
        double scale;
        memcpy(&scale, &bits, sizeof scale);
        return x0 < -745.0 ? 0.0 : p * scale;          /* below -745 exp underflows to 0 */
    }
    """
    float64_t residual_exp_nonpos(float64_t x) noexcept nogil
    float64_t R2_MAX "RESIDUAL_R2_MAX"


cdef inline float64_t exp(float64_t x) noexcept nogil:
    """exp for x <= 0 (every kernel argument here); vectorisable, ~1 ulp."""
    return residual_exp_nonpos(x)



# One inline per kernel, k(r^2) for r^2 in [0, R2_MAX]: the pair-at-a-time evaluation
# (kernel_value) and the tiles' flat loops both call these, so equal pairs give equal bits.
cdef inline float64_t kernel_rbf(float64_t variance, float64_t r2) noexcept nogil:
    return variance * exp(-0.5 * r2)


cdef inline float64_t kernel_matern12(float64_t variance, float64_t r2) noexcept nogil:
    return variance * exp(-sqrt(r2))


# The Matern polynomials meet exp(-r) before the variance: far away (r^2 up to R2_MAX) the
# polynomial reaches ~1e300, and a large variance times it first would overflow to inf, and
# inf * 0 is NaN.
cdef inline float64_t kernel_matern32(float64_t variance, float64_t r2) noexcept nogil:
    cdef float64_t r = sqrt(3.0 * r2)
    return variance * ((1.0 + r) * exp(-r))


cdef inline float64_t kernel_matern52(float64_t variance, float64_t r2) noexcept nogil:
    cdef float64_t r = sqrt(5.0 * r2)
    return variance * ((1.0 + r + r * r / 3.0) * exp(-r))


cdef inline float64_t kernel_value(KernelSpec spec, float64_t r2) noexcept nogil:
    """k as a function of r^2 >= 0, one pair at a time (the tiles use the row loops)."""
    r2 = r2 if r2 < R2_MAX else R2_MAX
    if spec.kind == KERNEL_RBF:
        return kernel_rbf(spec.variance, r2)
    if spec.kind == KERNEL_MATERN12:
        return kernel_matern12(spec.variance, r2)
    if spec.kind == KERNEL_MATERN32:
        return kernel_matern32(spec.variance, r2)
    return kernel_matern52(spec.variance, r2)


cdef inline float64_t residual_key(float64_t c, float64_t s_i, float64_t s_j) noexcept nogil:
    """The residual squared distance d^2 = 1 - min(1, |C| s_i s_j), from the covariance C of a
    pair and the two 1/sqrt(p) (0 for a degenerate point, so d = 1). Every residual distance
    goes through here, in this order of multiplication."""
    cdef float64_t a = fabs(c) * s_i * s_j
    return 1.0 - a if a < 1.0 else 0.0


cdef inline bint closer(float64_t da, intp_t ia, float64_t db, intp_t ib) noexcept nogil:
    """(da, ia) < (db, ib): nearer first, ties by the smaller index. The one order of every
    answer (with -d: farther first, as the maximin queue wants)."""
    return da < db or (da == db and ia < ib)


# The indexed points of a metric, as the tree sees them.
cdef struct Points:
    bint residual
    KernelSpec spec
    intp_t n, dim, m
    const float64_t* x      # (n, dim): residual: centred, lengthscale-scaled; euclidean: raw
    const float64_t* v      # (n, m) residual V rows, else NULL
    const float64_t* s      # (n,) residual 1/sqrt(p) (0 if degenerate), else NULL


cdef class Metric:
    """One metric's rows, owned: the arrays and the Points view of them that every compiled
    entry reads (see _tiles.pyx)."""
    cdef Points P
    cdef readonly object x, v, s
    cdef object _xt
    cdef object _v32, _norms    # the float32 screen's rows (float32_rows), made on first use
    cdef object _pays           # float32_pays(), decided on first use
    cdef readonly dict screen_counts    # the float32 screen (brute force and tree), summed
                                        # over calls


# An error bound on a pair's covariance, |C64 - c| <= a |v_i| |v_j| + b (|c| + |k|) + t: the
# float32 screen's (see _tiles.pyx, "float32 screen"), where c = fl64(k - S) from the float64
# kernel value k and the float32 product S = sgemm(fl32(v_i), fl32(v_j)) and C64 is what the
# dgemm tiles compute; or the tree's between two float64 evaluations (_search._slack64).
cdef struct Slack32:
    float64_t a, b, t

cdef Slack32 slack32(intp_t m, float64_t norm_max) noexcept nogil

# The brute force's screen: the kernel row in float32 and the slack that covers its error
# (_tiles.pyx, "float32 kernel").
cdef void kernel32_row(KernelSpec spec, const float64_t* r2, float64_t* out,
                       intp_t n) noexcept nogil

cdef Slack32 slack32_kernel32(Slack32 sl, KernelSpec spec) noexcept nogil


cdef inline float64_t slack_bound(float64_t ani, float64_t nj, float64_t a, float64_t kval,
                                  float64_t b, float64_t t) noexcept nogil:
    """The bound E on |C64 - c|: ani = a |v_i|, nj = |v_j|, a = |c|, kval the kernel value,
    b and t the slack's other terms."""
    return ani * nj + b * (a + fabs(kval)) + t


cdef inline float64_t key_lower(float64_t kval, float64_t prod, float64_t ani, float64_t nj,
                                float64_t si, float64_t sj, float64_t b,
                                float64_t t) noexcept nogil:
    """The smallest float64 key a pair can have: residual_key(|c| + E), c = kval - prod (its
    kernel value and a product with the error bound (a, b, t): the float32 screen's, or
    another float64 evaluation's), ani = a |v_i|, nj = |v_j|, si and sj its 1/sqrt(p). (A
    NaN gives key 0, the smallest: such a pair is never ruled out.)"""
    cdef float64_t a = fabs(kval - prod)
    return residual_key(a + slack_bound(ani, nj, a, kval, b, t), si, sj)


cdef inline float64_t key_upper(float64_t kval, float64_t prod, float64_t ani, float64_t nj,
                                float64_t si, float64_t sj, float64_t b,
                                float64_t t) noexcept nogil:
    """The largest float64 key a pair can have: residual_key(max(0, |c| - E)) (see key_lower;
    a NaN gives key 1, the largest)."""
    cdef float64_t a = fabs(kval - prod)
    a = a - slack_bound(ani, nj, a, kval, b, t)
    return residual_key(a if a > 0.0 else 0.0, si, sj)


cdef inline float64_t sqdist(const float64_t* a, const float64_t* b,
                             intp_t dim) noexcept nogil:
    """Squared Euclidean distance by the direct sum, in one fixed order (every pair-at-a-time
    evaluation goes through here, so equal pairs give equal bits)."""
    cdef intp_t t
    cdef float64_t r2 = 0.0, diff
    if dim == 3:                # the common case, unrolled: the same sums in the same order
        diff = a[0] - b[0]
        r2 = diff * diff
        diff = a[1] - b[1]
        r2 += diff * diff
        diff = a[2] - b[2]
        return r2 + diff * diff
    for t in range(dim):
        diff = a[t] - b[t]
        r2 += diff * diff
    return r2


cdef inline float64_t query_key(const Points* P, const float64_t* xq, const float64_t* vq,
                                float64_t sq, intp_t j) noexcept nogil:
    """Squared distance between a query (coordinates xq, residual row vq and 1/sqrt(p) sq,
    prepared like the indexed points) and indexed point j, in float64.

    Euclidean: the direct sum of squared differences. Residual: 1 - min(1, |C| s_q s_j) with
    C = k(x_q, x_j) - v_q . V_j (the same quantity the tiles compute).
    """
    cdef float64_t r2 = sqdist(xq, P.x + j * P.dim, P.dim)
    if not P.residual:
        return r2
    # BLAS ddot: vectorised, and a fixed summation order for a given m
    return residual_key(kernel_value(P.spec, r2) - ddot_(P.m, vq, P.v + j * P.m), sq, P.s[j])


cdef inline float64_t pair_key(const Points* P, intp_t i, intp_t j) noexcept nogil:
    """Squared distance d(i, j)^2 between two indexed points (see query_key)."""
    if not P.residual:
        return query_key(P, P.x + i * P.dim, NULL, 0.0, j)
    return query_key(P, P.x + i * P.dim, P.v + i * P.m, P.s[i], j)
