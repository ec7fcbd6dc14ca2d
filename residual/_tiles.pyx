# The metric and its tiles: the ground floor of the compiled seam.
#
# Metric (declared in _tiles.pxd) owns one metric's rows: the coordinates (residual: centred and
# lengthscale-scaled), V, 1/sqrt(p) and the kernel, and the Points view of them that every
# compiled entry reads (build, search, maximin, brute force). The model builds its Metric once;
# a Euclidean tree builds its own; Metric.take(order) permutes the rows. The per-pair formulas
# (one inline per kernel, residual_key, closer) live in _tiles.pxd, so that every stage computes
# a pair with the same operations and equal pairs give equal bits.
#
# Tiles: BLAS for the long inner products, flat epilogue loops for the rest. r^2 is the direct
# sum sum_d (x_d - y_d)^2 (error ~ u r^2; true ties such as duplicates and integer grids stay
# ties), not the Gram identity |x|^2 + |y|^2 - 2 x.y, whose error ~ u (|x|^2 + |y|^2) would show
# in the answer: in the tiny-p regime (p ~ 1e-6) a 1e-15 error in k moves rho by 1e-9, and the
# Matern 1/2 kernel has an infinite slope in r^2 at 0. The residual covariance
# C = k(q, c) - V_q V_c^T is then one dgemm with beta = 1 onto the kernel tile: the subtraction
# is fused into BLAS and no temporary is made.
#
# Everything here runs on caller-owned buffers: no allocation per tile.
#
# float32 screen. A residual covariance C = k - v_i . v_j is only as precise as its
# cancellation allows, so float32 cannot replace float64; but a float32 product with a proven
# error bound can decide that a pair is not a neighbour, and only the rest is computed in
# float64 (the brute force, _bruteforce.pyx; the tree's bounded search, _search.pyx, which
# also bounds the difference of two float64 evaluations). The bound (slack32; Higham,
# Accuracy and Stability, Lemma 3.1 and section 2.1 on underflow), with u = 2^-24, w = 2^-53,
# gamma_n = n u / (1 - n u) and gamma'_n the same in w:
#   fl32(v) = v (1 + d) + e, |d| <= u, |e| <= 2^-150 (an underflow to a subnormal);
#   S = sgemm's fl32(v_i) . fl32(v_j): within gamma_m sum |fl32 v_ik fl32 v_jk| of the exact
#   dot product of the rounded rows, in any summation order, fused or not;
#   so |S - v_i . v_j| <= (2u + u^2 + gamma_m (1 + u)^2) |v_i| |v_j| (Cauchy-Schwarz)
#   + 3 * 2^-150 (2 sqrt(m) max|v| + m);
#   C64, dgemm's k - v_i . v_j, is within gamma'_{2m+2} (|k| + |v_i| |v_j|) of the exact value
#   (+ m 2^-1070 for float64 underflow), and c = fl64(k - S) within w |k - S| of k - S.
# Summed: a = (2u + u^2 + gamma_m (1 + u)^2 + gamma'_{2m+2}), b = gamma'_{2m+2} + 4w, t = the
# underflow terms; a and t carry a factor 1 + 2^-20 and b its 4w for the float64 roundings of
# the bound itself (the norms, the products, c +- the bound). Then |C64| lies in
# [max(0, |c| - E), |c| + E], and since residual_key is a chain of rounded monotone operations,
# the float64 key of the pair lies in [residual_key(|c| + E), residual_key(max(0, |c| - E))]
# exactly. The bound needs |v| <= NORM_MAX (no float32 overflow) and is tested against float64
# on large norms, tiny p and cancellation (tests/test_precision.py).
#
# When float32 pays (Metric.float32_pays): the pair's error in rho = |C| s_i s_j is about
# e_i e_j with e_i = sqrt(a) |v_i| s_i. Measured median e_i^2 (n = 16k): standard harness
# (median p ~ 2e-6) 15, RBF l = 0.2 on the unit square 76, Matern 5/2 l = 0.2 0.16: there a
# float32 rho is noise, the screen decides few pairs and most rows end on the float64 tiles
# anyway (forced, it is ~2x slower). Matern 3/2 l = 0.1 on the unit square 2e-4, l = 0.3 on
# the 5-cube 7e-5, the harness at D = 8 1e-5: the screen decides all but about k pairs per
# row (99.8 % at n = 32k). The rule: float32 when the median e_i^2 is at most
# FLOAT32_MAX_SLACK and the metric has at least FLOAT32_MIN_ROWS rows (below that the copy
# and the one-time dgemm probe, _blas.dgemm_chain, cost more than they save).
#
# float32 kernel (the brute force's screen). The screen needs each pair's kernel value only to
# within a proven error: kernel32_row evaluates it in float32 (sixteen lanes, a degree-6 exp),
# at about a third of the float64 row's cost, and the bound takes the difference in
# (slack32_kernel32). Per unit variance g(r^2) = P(r) e^-r, with the float32 r^2 capped at
# 1e30, r = sqrt(c r^2) (RBF: e^(-r^2/2)) and g = 0 past the cut r > 80 (e^-r then still a
# normal float32):
#   exp32(x), x in [-80, 0]: x = k ln2 + r, k * ln2_hi exact (15 bits, |k| <= 116) and
#   x - k ln2_hi exact (Sterbenz), so the reduced r is within 0.35u of x - k ln2 and
#   |r| <= 0.3466; Taylor to degree 6: remainder <= |r|^7 e^|r| / 7! < 4.0u of e^r; Horner's
#   roundings, first order summed over the steps with |p_i| <= their absolute series, and
#   the float32 coefficients < 3.4u of e^r; so exp32 is within EXP32_ERR = 8u of e^x;
#   P(r) in float32: 1 + r within u, 1 + r + r r (1/3) within 4u, and P e^-r one more u;
#   r^2 -> float32 (u), c r^2 (u), sqrt (u): r within delta = 2u (Matern 1/2: 1.5u, RBF: the
#   argument within u), which moves g by at most delta max_s |g'(s)| s, an absolute error
#   (max_s |g'(s)| s: 1/e for RBF and Matern 1/2, 4/e^2 Matern 3/2, 0.6045 Matern 5/2);
#   past the cut g < 1e-31; a float32 subnormal r^2 moves g by < 2^-60.
# The float64 kernel (the tiles' bits) is within 2^-40 of k, relative (its exp within 5w of
# e^x, its argument within 2w relative, |x| <= 708), and 1e-300 var below e^-708. So
# |k32 - k64| <= eps k32 + tau var + 2^-1068 (EXP32_ERR and the rest in kernel32_error), and
# with c = fl64(k32 - S) in place of fl64(k64 - S), |C64 - c| <= a |v_i| |v_j| + b' (|c| +
# |k32|) + t', b' = b + 3w + eps (1 + 3b), t' = t + (1 + 3b) (tau var + 2^-1068)
# (slack32_kernel32); key_lower and key_upper then hold as before. The pairs kept are
# recomputed from their float64 r^2 by kernel_of_sqdist: the tiles' own loop, so their bits.

from cython.parallel cimport prange

import numpy as np

from residual._blas cimport dgemm_rm, trsv_lower_rm

cdef extern from *:
    """
    #include <math.h>
    #include <stdint.h>
    #include <string.h>
    /* The float32 kernel of the brute force's screen (_tiles.pyx, "float32 kernel"): every
       function vectorises sixteen lanes wide. */
    #define RESIDUAL_CUT32 80.0f
    static inline float residual_exp32(float x) {   /* e^x for x in [-80, 0] (clamped) */
        const float shift = 0x1.8p23f;
        x = x > -RESIDUAL_CUT32 ? x : -RESIDUAL_CUT32;
        float kd = x * 0x1.715476p0f + shift;           /* round(x / ln2) in the low bits */
        float k = kd - shift;
        float r = x - k * 0x1.62e4p-1f;                  /* ln2 high part: exact */
        r = r - k * (float)(0x1.62e42fefa39efp-1 - 0x1.62e4p-1);
        float p = 1.0f / 720.0f;
        p = p * r + 1.0f / 120.0f;
        p = p * r + 1.0f / 24.0f;
        p = p * r + 1.0f / 6.0f;
        p = p * r + 0.5f;
        p = p * r + 1.0f;
        p = p * r + 1.0f;
        uint32_t bits;
        memcpy(&bits, &kd, sizeof bits);
        bits = (bits + 127u) << 23;                     /* low bits of kd hold k: 2^k */
        float scale;
        memcpy(&scale, &bits, sizeof scale);
        return p * scale;
    }
    static inline float residual_r2_32(double r2) {     /* NaN and huge: far */
        return (float)(r2 < 1e30 ? r2 : 1e30);
    }
    static inline float residual_rbf32(float r2) {
        float x = -0.5f * r2;
        return x >= -RESIDUAL_CUT32 ? residual_exp32(x) : 0.0f;
    }
    static inline float residual_matern12_32(float r2) {
        float r = sqrtf(r2);
        return r <= RESIDUAL_CUT32 ? residual_exp32(-r) : 0.0f;
    }
    static inline float residual_matern32_32(float r2) {
        float r = sqrtf(3.0f * r2);
        return r <= RESIDUAL_CUT32 ? (1.0f + r) * residual_exp32(-r) : 0.0f;
    }
    static inline float residual_matern52_32(float r2) {
        float r = sqrtf(5.0f * r2);
        return r <= RESIDUAL_CUT32 ? (1.0f + r + r * r * (1.0f / 3.0f)) * residual_exp32(-r)
                                   : 0.0f;
    }
    """
    float32_t r2_32 "residual_r2_32"(float64_t r2) noexcept nogil
    float32_t rbf32 "residual_rbf32"(float32_t r2) noexcept nogil
    float32_t matern12_32 "residual_matern12_32"(float32_t r2) noexcept nogil
    float32_t matern32_32 "residual_matern32_32"(float32_t r2) noexcept nogil
    float32_t matern52_32 "residual_matern52_32"(float32_t r2) noexcept nogil

# Rows per parallel work item in kernel_matrix.
cdef intp_t KERNEL_CHUNK = 256

#: Metric.float32_pays: the largest median e_i^2 (the rho error of a pair of median rows, see
#: "float32 screen" above) and the fewest rows for which the float32 screen is used.
FLOAT32_MAX_SLACK = 0.05
FLOAT32_MIN_ROWS = 1024
#: |v| above this could overflow float32 products: such a metric never uses the screen.
NORM_MAX = 1e18


cdef Slack32 slack32(intp_t m, float64_t norm_max) noexcept nogil:
    """The float32 screen's error bound for inner products of length m (see above)."""
    cdef float64_t u = 2.0 ** -24, w = 2.0 ** -53, margin = 1.0 + 2.0 ** -20
    cdef float64_t gamma = m * u / (1.0 - m * u)
    cdef float64_t gamma64 = (2 * m + 2) * w / (1.0 - (2 * m + 2) * w)
    cdef Slack32 out
    out.a = margin * (2 * u + u * u + gamma * (1 + u) * (1 + u) + gamma64)
    out.b = gamma64 + 4 * w
    out.t = margin * (3 * 2.0 ** -150 * (2 * sqrt(<float64_t>m) * norm_max + m)
                      + m * 2.0 ** -1070)
    return out


def float32_slack(intp_t m, float64_t norm_max):
    """Test hook: slack32's (a, b, t)."""
    cdef Slack32 sl = slack32(m, norm_max)
    return sl.a, sl.b, sl.t


def exp_nonpos(const float64_t[::1] x):
    """Test hook: the vectorisable exp on an array of non-positive numbers."""
    out = np.empty(x.shape[0])
    cdef float64_t[::1] o = out
    cdef intp_t i
    for i in range(x.shape[0]):
        o[i] = exp(x[i])
    return out


cdef void kernel32_row(KernelSpec spec, const float64_t* r2, float64_t* out,
                       intp_t n) noexcept nogil:
    """out[j] = the float32 kernel of r2[j] (see "float32 kernel"), in float64."""
    cdef intp_t j
    cdef float64_t var = spec.variance
    if spec.kind == KERNEL_RBF:
        for j in range(n):
            out[j] = var * <float64_t>rbf32(r2_32(r2[j]))
    elif spec.kind == KERNEL_MATERN12:
        for j in range(n):
            out[j] = var * <float64_t>matern12_32(r2_32(r2[j]))
    elif spec.kind == KERNEL_MATERN32:
        for j in range(n):
            out[j] = var * <float64_t>matern32_32(r2_32(r2[j]))
    else:  # KERNEL_MATERN52
        for j in range(n):
            out[j] = var * <float64_t>matern52_32(r2_32(r2[j]))


# "float32 kernel": exp32's error, in units of u = 2^-24
cdef float64_t EXP32_ERR = 8.0


cdef void _kernel32_error(int kind, float64_t* eps, float64_t* tau) noexcept nogil:
    """|k32 - k64| <= eps k32 + tau variance + 2^-1068 (see "float32 kernel")."""
    cdef float64_t u = 2.0 ** -24, margin = 1.0 + 2.0 ** -16, s = 1.0 + sqrt(3.0)
    cdef float64_t err = EXP32_ERR, delta = 2.0, slope     # err: of g32 relative to g
    if kind == KERNEL_RBF:
        delta, slope = 1.0, exp(-1.0)
    elif kind == KERNEL_MATERN12:
        delta, slope = 1.5, exp(-1.0)
    elif kind == KERNEL_MATERN32:
        err, slope = err + 2.0, 4.0 * exp(-2.0)
    else:
        err, slope = err + 5.0, s * s * (1.0 + s) * exp(-s) / 3.0
    eps[0] = (err * u + 2.0 ** -39) * margin        # 2^-39: the float64 kernel and roundings
    tau[0] = (delta * u * slope + 1e-31 + 2.0 ** -60 + 2.0 ** -40) * margin


cdef Slack32 slack32_kernel32(Slack32 sl, KernelSpec spec) noexcept nogil:
    """The float32 screen's slack (slack32) for a kernel row from kernel32_row."""
    cdef float64_t eps, tau, w = 2.0 ** -53, margin = 1.0 + 2.0 ** -20
    _kernel32_error(spec.kind, &eps, &tau)
    cdef Slack32 out = sl
    out.b = sl.b + 3 * w + eps * (1.0 + 3 * sl.b) * margin
    out.t = (sl.t + (1.0 + 3 * sl.b) * (tau * spec.variance + 2.0 ** -1068)) * margin
    return out


def float32_slack_kernel32(intp_t m, float64_t norm_max, int kind, float64_t variance):
    """Test hook: slack32_kernel32's (a, b, t)."""
    cdef Slack32 sl = slack32_kernel32(slack32(m, norm_max),
                                       KernelSpec(kind=kind, variance=variance))
    return sl.a, sl.b, sl.t


def kernel32_values(int kind, float64_t variance, const float64_t[::1] r2):
    """Test hook: kernel32_row on an array of r^2."""
    out = np.empty(r2.shape[0])
    cdef float64_t[::1] o = out
    if r2.shape[0]:
        kernel32_row(KernelSpec(kind=kind, variance=variance), &r2[0], &o[0], r2.shape[0])
    return out


def kernel32_error(int kind):
    """Test hook: (eps, tau) of the float32 kernel's error bound."""
    cdef float64_t eps, tau
    _kernel32_error(kind, &eps, &tau)
    return eps, tau


def kernel_values(int kind, float64_t variance, const float64_t[::1] r2):
    """Test hook: the float64 tiles' kernel (kernel_of_sqdist) on an array of r^2."""
    out = np.array(r2, dtype=np.float64)
    cdef float64_t[::1] o = out
    if r2.shape[0]:
        kernel_of_sqdist(KernelSpec(kind=kind, variance=variance), &o[0], r2.shape[0])
    return out


cdef inline void _kernel_of_sqdist(KernelSpec spec, float64_t* row, intp_t ncols) noexcept nogil:
    """row[j] = k(r^2) in place, r^2 = row[j] >= 0; one flat loop per kernel so it vectorises."""
    cdef intp_t j
    cdef float64_t var = spec.variance
    for j in range(ncols):                      # see R2_MAX
        row[j] = row[j] if row[j] < R2_MAX else R2_MAX
    if spec.kind == KERNEL_RBF:
        for j in range(ncols):
            row[j] = kernel_rbf(var, row[j])
    elif spec.kind == KERNEL_MATERN12:
        for j in range(ncols):
            row[j] = kernel_matern12(var, row[j])
    elif spec.kind == KERNEL_MATERN32:
        for j in range(ncols):
            row[j] = kernel_matern32(var, row[j])
    else:  # KERNEL_MATERN52
        for j in range(ncols):
            row[j] = kernel_matern52(var, row[j])


cdef void kernel_of_sqdist(KernelSpec spec, float64_t* r2, intp_t n) noexcept nogil:
    """r2[j] = k(r2[j]) in place, for callers outside this module (the grouped search)."""
    _kernel_of_sqdist(spec, r2, n)


cdef void kernel_tile(KernelSpec spec, const Block* q, const Block* c, intp_t dim,
                      float64_t* out, intp_t ldo) noexcept nogil:
    """out[r, j] = k(q.x[r], column j of c.x) for the stationary kernel `spec` (kernels.py).

    NumPy: ``K(q.x, c.x.T)``.
    """
    cdef intp_t r
    for r in range(q.n):        # row by row, so r^2 is still in L1 when the kernel reads it
        sqdist_direct_tile(q.x + r * dim, 1, c.x, c.ld, c.n, dim, out + r * ldo, ldo)
        _kernel_of_sqdist(spec, out + r * ldo, c.n)


cdef void residual_cov_tile(KernelSpec spec, const Block* q, const Block* c, intp_t dim,
                            intp_t m, float64_t* out, intp_t ldo) noexcept nogil:
    """out[r, j] = k(q.x[r], x_j) - q.v[r] . c.v[j]  (the residual covariance C).

    NumPy: ``K(q.x, c.x.T) - q.v @ c.v.T``.
    """
    kernel_tile(spec, q, c, dim, out, ldo)
    # out (q.n x c.n) += -1 * q.v (q.n x m, ld m) @ c.v^T (c.v: c.n x m, ld m)
    dgemm_rm(False, True, q.n, c.n, m, -1.0, q.v, m, c.v, m, 1.0, out, ldo)


cdef void sqdist_direct_tile(const float64_t* xq, intp_t nrows,
                             const float64_t* xct, intp_t ldxct, intp_t ncols,
                             intp_t dim, float64_t* out, intp_t ldo) noexcept nogil:
    """out[r, j] = sum_d (xq[r, d] - xct[d, j])^2, xct the columns stored transposed (D x n).

    NumPy: ``((xq[:, None, :] - xct.T[None, :, :]) ** 2).sum(-1)`` (summed in order d = 0..D-1).
    """
    cdef intp_t r, j, d
    cdef float64_t diff, q
    cdef float64_t* row
    cdef const float64_t* col
    for r in range(nrows):
        row = out + r * ldo
        q = xq[r * dim]
        for j in range(ncols):
            diff = q - xct[j]
            row[j] = diff * diff
        for d in range(1, dim):
            q = xq[r * dim + d]
            col = xct + d * ldxct
            for j in range(ncols):
                diff = q - col[j]
                row[j] += diff * diff


# ---------------------------------------------------------------------------------------------
# Python entry points (used by the model and as test hooks). Callers hold BLAS to one thread.

def kernel_matrix(int kind, float64_t variance, const float64_t[:, ::1] xq,
                  const float64_t[:, ::1] xct, int num_threads=1):
    """Kernel matrix k(xq, xct.T) of shape (len(xq), xct.shape[1]), row chunks in parallel."""
    cdef intp_t n = xq.shape[0], ncols = xct.shape[1], dim = xq.shape[1]
    cdef intp_t chunk = KERNEL_CHUNK, n_chunks = (n + chunk - 1) // chunk, c, r0, nr
    cdef KernelSpec spec = KernelSpec(kind=kind, variance=variance)
    cdef Block q, cols
    if xct.shape[0] != dim:
        raise ValueError("xq and xct disagree on the dimension")
    out = aligned_empty((n, ncols))     # k(X, U) becomes V in place (model.from_kernel)
    cdef float64_t[:, ::1] o = out
    if n == 0 or ncols == 0:
        return out
    with nogil:
        for c in prange(n_chunks, num_threads=num_threads, schedule='static'):
            r0 = c * chunk
            nr = min(chunk, n - r0)
            q = Block(n=nr, ld=dim, x=&xq[r0, 0], v=NULL, s=NULL)
            cols = Block(n=ncols, ld=ncols, x=&xct[0, 0], v=NULL, s=NULL)
            kernel_tile(spec, &q, &cols, dim, &o[r0, 0], ncols)
    return out


def solve_lower_rows(const float64_t[:, ::1] l, float64_t[:, ::1] rows, int num_threads):
    """rows[i] <- L^-1 rows[i] for every row, in place (V of new points: L^-1 k(U, y)).

    One triangular solve per row, in parallel: a row's result is the same bits whatever the
    other rows, their number and the thread count (a multi-right-hand-side solve rounds each
    column according to its place in the block). The caller holds BLAS to one thread.
    """
    cdef intp_t i, m = l.shape[0]
    if l.shape[1] != m or rows.shape[1] != m:
        raise ValueError("L must be square and match the rows' length")
    if m == 0:
        return
    for i in prange(rows.shape[0], nogil=True, num_threads=num_threads, schedule='static'):
        trsv_lower_rm(m, &l[0, 0], &rows[i, 0])


def residual_cov_matrix(int kind, float64_t variance,
                        const float64_t[:, ::1] xq, const float64_t[:, ::1] vq,
                        const float64_t[:, ::1] xc, const float64_t[:, ::1] vc):
    """Test hook: residual covariance k(xq, xc) - vq @ vc.T through residual_cov_tile."""
    cdef intp_t n = xq.shape[0], ncols = xc.shape[0]
    cdef KernelSpec spec = KernelSpec(kind=kind, variance=variance)
    cdef const float64_t[:, ::1] xct = np.ascontiguousarray(np.asarray(xc).T)
    out = np.empty((n, ncols))
    cdef float64_t[:, ::1] o = out
    cdef Block q, c
    if n and ncols:
        q = Block(n=n, ld=xq.shape[1], x=&xq[0, 0], v=&vq[0, 0], s=NULL)
        c = Block(n=ncols, ld=ncols, x=&xct[0, 0], v=&vc[0, 0], s=NULL)
        residual_cov_tile(spec, &q, &c, xq.shape[1], vq.shape[1], &o[0, 0], ncols)
    return out


def sqdist_matrix(const float64_t[:, ::1] xq, const float64_t[:, ::1] xc):
    """Test hook: squared Euclidean distances through sqdist_direct_tile."""
    cdef intp_t n = xq.shape[0], ncols = xc.shape[0], dim = xq.shape[1]
    out = np.empty((n, ncols))
    cdef float64_t[:, ::1] o = out
    cdef const float64_t[:, ::1] xct
    if n == 0 or ncols == 0:
        return out
    xct = np.ascontiguousarray(np.asarray(xc).T)
    sqdist_direct_tile(&xq[0, 0], n, &xct[0, 0], ncols, ncols, dim, &o[0, 0], ncols)
    return out


cdef class Metric:
    """The rows of one metric as the compiled code reads them, built once and then trusted.

    Euclidean: the raw coordinates x. Residual: x centred and lengthscale-scaled, the V rows v,
    1/sqrt(p) s (0 where degenerate) and the kernel. The arrays are C-contiguous float64 and
    read-only by convention; ``P`` points into them for as long as the object lives. Make one
    with :meth:`euclidean` or :meth:`residual_correlation`; arguments are not checked here
    (the public functions did that).
    """

    def __init__(self):
        raise TypeError("use Metric.euclidean or Metric.residual_correlation")

    @staticmethod
    def euclidean(x):
        """The Euclidean metric over the rows of x."""
        return _new_metric(False, KERNEL_RBF, 1.0, x, None, None)

    @staticmethod
    def residual_correlation(int kind, float64_t variance, x, v, s):
        """The residual-correlation metric: kernel ``kind`` (a KernelKind) and its variance,
        scaled coordinates x, V rows v and 1/sqrt(p) s."""
        return _new_metric(True, kind, variance, x, v, s)

    def take(self, order):
        """The same metric over the rows ``order`` (an index array or a slice), in that
        order: bitwise the same rows, so every distance is unchanged."""
        return _new_metric(self.P.residual, self.P.spec.kind, self.P.spec.variance,
                           _rows(self.x, order), _rows(self.v, order), _rows(self.s, order))

    @property
    def n(self):
        return self.P.n

    @property
    def dim(self):
        return self.P.dim

    @property
    def m(self):
        return self.P.m

    @property
    def xt(self):
        """x transposed, (dim, n) C-contiguous: the candidate side of the tiles (made once)."""
        if self._xt is None:
            self._xt = np.ascontiguousarray(self.x.T)
        return self._xt

    def row_norms(self):
        """The float64 norms |v_i| of the V rows (residual metrics; made once)."""
        if self._norms is None:
            self._norms = np.sqrt(np.einsum("ij,ij->i", self.v, self.v))
        return self._norms

    def float32_rows(self):
        """``(v32, norms)``: V rounded to float32 (n, m) and :meth:`row_norms`, for the
        float32 screen (made on first use, then kept; on a 64-byte boundary, see
        aligned_empty)."""
        if self._v32 is None:
            self._v32 = aligned_empty(self.v.shape, np.float32)
            np.copyto(self._v32, self.v, casting="same_kind")
        return self._v32, self.row_norms()

    def float32_safe(self):
        """Can the float32 screen run on these rows at all: residual, 1 <= m < 2^23 (gamma_m
        defined) and every |v_i| <= NORM_MAX."""
        if not self.P.residual or self.P.m == 0 or self.P.m * 2.0 ** -24 > 0.5:
            return False
        norms = self.row_norms()
        return bool(norms.size == 0 or norms.max() <= NORM_MAX)

    def float32_pays(self):
        """The rule of "float32 screen" (module comment), decided once: the median e_i^2
        is at most FLOAT32_MAX_SLACK, n >= FLOAT32_MIN_ROWS, and the rows are safe."""
        if self._pays is None:
            self._pays = False
            if self.P.n >= FLOAT32_MIN_ROWS and self.float32_safe():
                a = slack32(self.P.m, 0.0).a
                e2 = a * self.row_norms() ** 2 * self.s ** 2
                self._pays = bool(np.median(e2) <= FLOAT32_MAX_SLACK)
        return self._pays


cdef Metric _new_metric(bint residual, int kind, float64_t variance, x, v, s):
    cdef Metric M = Metric.__new__(Metric)
    M.x = np.ascontiguousarray(x, dtype=np.float64)
    cdef const float64_t[:, ::1] xx = M.x
    cdef const float64_t[:, ::1] vv
    cdef const float64_t[::1] ss
    M.P.residual = residual
    M.P.spec.kind = kind
    M.P.spec.variance = variance
    M.P.n = xx.shape[0]
    M.P.dim = xx.shape[1]
    M.P.x = &xx[0, 0] if xx.shape[0] else NULL
    M.P.m = 0
    M.P.v = NULL
    M.P.s = NULL
    M.screen_counts = {}
    if residual:
        M.v = np.ascontiguousarray(v, dtype=np.float64)
        if M.v.ctypes.data % 64:        # see aligned_empty
            M.v = aligned_rows(M.v)
        M.s = np.ascontiguousarray(s, dtype=np.float64)
        vv, ss = M.v, M.s
        M.P.m = vv.shape[1]
        M.P.v = &vv[0, 0] if vv.shape[0] and vv.shape[1] else NULL
        M.P.s = &ss[0] if ss.shape[0] else NULL
    return M


def _rows(a, order):
    """a's rows `order`: a view for a slice, else an aligned gather (None stays None)."""
    if a is None:
        return None
    if isinstance(order, slice):
        return np.ascontiguousarray(a[order])
    return aligned_rows(a, order)


def aligned_empty(shape, dtype=np.float64):
    """An uninitialised C-contiguous array whose data starts on a 64-byte boundary.

    The search's dot-product kernels load eight doubles at a time from rows of V; from a row
    that starts mid-cache-line (NumPy aligns to 16 bytes) every such load spans two lines,
    which cost the residual tree search 15 % (32k harness, one thread).
    """
    dtype = np.dtype(dtype)
    count = int(np.prod(shape))
    buf = np.empty(count * dtype.itemsize + 64, dtype=np.uint8)
    start = -buf.ctypes.data % 64
    return buf[start:start + count * dtype.itemsize].view(dtype).reshape(shape)


def aligned_rows(a, order=None):
    """A new C-contiguous copy of a (or of its rows ``order``, an index array) on a 64-byte
    boundary (see aligned_empty)."""
    a = np.asarray(a)
    if order is None:
        out = aligned_empty(a.shape, a.dtype)
        np.copyto(out, a)
    else:
        order = np.asarray(order)
        out = aligned_empty((order.size,) + a.shape[1:], a.dtype)
        # mode="clip": with the default "raise", take() fills a temporary copy of the whole
        # result first (the indices are valid here, so clipping never changes one)
        np.take(a, order, axis=0, out=out, mode="clip")
    return out
