"""The residual-correlation model: inducing points, V and p.

With inducing points U (m of them: rows of X or free coordinates) and
``L = chol(k(U, U) + jitter * variance * I)``::

    V   = (L^-1 k(U, X))^T                      (n, m)
    p_i = k(x_i, x_i) - ||V_i||^2               residual variance
    C_ij = k(x_i, x_j) - V_i . V_j              residual covariance
    rho_ij = C_ij / sqrt((p_i + s2)(p_j + s2))  for i != j, clamped to [-1, 1]
    d_ij = sqrt(1 - |rho_ij|)                   the distance, in [0, 1]; d_ii = 0

s2 is the nugget (0 by default): with it, rho is the correlation of the noisy residuals
``e_i + eps_i`` (independent noise of variance s2 at every point, new points included), which
is what a VIF model of noisy data approximates. d is a metric either way (the sign-quotient
distance between unit feature vectors; the nugget gives every point its own noise coordinate),
so cover-tree pruning with it is exact.
"""

import numbers

import numpy as np
import scipy.linalg

from residual import _persist, _tiles
from residual.kernels import Kernel, kernel_from_state
from residual._parallel import in_blocks, resolve_num_threads, single_threaded_blas
from residual._tiles import Metric, aligned_rows
from residual._validate import (as_float_matrix, as_float_vector, as_numeric_array, check_int,
                                check_positive, resolve_seed)

#: A point whose residual variance plus nugget is at most ``DEGENERATE_P_RTOL * variance`` has,
#: numerically, no residual left: its correlations would be rounding noise divided by ~0. Such a
#: point gets distance 1 to every other point (0 to itself), which keeps the triangle inequality.
#: The value sits far below what a jitter of 1e-6 leaves on an inducing point (~1e-6 * variance)
#: and far above the float64 noise of ``variance - ||V_i||^2`` (~1e-14 * variance for m = 512).
DEGENERATE_P_RTOL = 1e-10

#: The ways :meth:`ResidualCorrelation.from_kernel` can choose inducing points by name.
INDUCING_CHOICES = ("random", "kmeans++")

#: Lloyd steps after the k-means++ seeding (fewer when the assignment stops changing). The
#: seeding already lands within O(log m) of the optimum in expectation; a few steps move the
#: centres into their clusters, which is what the residual variance notices.
KMEANS_LLOYD_STEPS = 5


class ResidualCorrelation(_persist.Persistent):
    """Residual-correlation distance over the rows of X.

    Build it from a kernel with :meth:`from_kernel` (inducing points, Cholesky factor, V and p
    computed here), or hand over ``V`` and ``p_diag`` from your own GP code.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
        Coordinates. Converted once to C-contiguous float64.
    kernel : residual.RBF or residual.Matern
        The kernel that made V and p_diag.
    V : array-like of shape (n_samples, n_inducing)
        Rows ``V_i`` with ``k(x_i, x_j) ~ V_i . V_j`` (the low-rank part).
    p_diag : array-like of shape (n_samples,)
        Residual variances ``k(x_i, x_i) - ||V_i||^2``; must be >= 0.
    nugget : float, default=0.0
        Noise variance ``s2 >= 0`` added to every residual variance in the correlation:
        ``rho_ij = C_ij / sqrt((p_i + s2)(p_j + s2))`` for ``i != j`` (the correlation of the
        noisy residuals, for a VIF model of noisy data). ``p_diag`` itself excludes it.

    Attributes
    ----------
    X : ndarray of shape (n_samples, n_features)
    kernel : Kernel
    V : ndarray of shape (n_samples, n_inducing)
    p_diag : ndarray of shape (n_samples,)
        Residual variances, without the nugget.
    nugget : float
    inducing : ndarray of int64 or None
        Row indices of X used as inducing points; None when the inducing points are free
        coordinates (an array or ``"kmeans++"``) or for user-supplied factors.
    inducing_points : ndarray of shape (n_inducing, n_features) or None
        The inducing points in the units of X (``X[inducing]`` for rows); None for
        user-supplied factors.
    jitter : float or None
    L : ndarray of shape (n_inducing, n_inducing) or None
        Lower Cholesky factor of ``k(U, U) + jitter * variance * I``; needed for new points.
    degenerate : ndarray of bool, shape (n_samples,)
        Rows with ``p_diag + nugget <= DEGENERATE_P_RTOL * variance`` (distance 1 to all
        others).

    Raises
    ------
    TypeError, ValueError
        On non-numeric, non-finite or mis-shaped arrays, negative ``p_diag`` or a negative or
        non-finite ``nugget``.

    Notes
    -----
    :meth:`save` writes X, the kernel (name, nu, lengthscale, variance), V, p_diag, the
    nugget and, for a model from :meth:`from_kernel`, the inducing points (coordinates, and
    the row indices when they are rows), jitter and L, plus the centre of X; pickles carry
    the same entries. The scaled coordinates and 1/sqrt(p + nugget) are recomputed on
    :meth:`load` by the same elementwise float64 operations, so distances are bitwise
    identical. Files of format version 1 (no nugget, inducing rows only) load with nugget 0.
    """

    def __init__(self, X, kernel, *, V, p_diag, nugget=0.0):
        X = as_float_matrix(X, "X")
        _check_kernel(kernel)
        V = as_float_matrix(V, "V")
        if V.shape[0] != X.shape[0]:
            raise ValueError(f"V has {V.shape[0]} rows but X has {X.shape[0]}")
        p_diag = as_float_vector(p_diag, "p_diag", size=X.shape[0])
        if (p_diag < 0).any():
            raise ValueError(f"p_diag must be >= 0; {int((p_diag < 0).sum())} entries are "
                             f"negative (min {p_diag.min():.3g})")
        nugget = check_nugget(nugget)
        self._setup(X, kernel, V, p_diag, nugget=nugget, inducing=None, inducing_points=None,
                    jitter=None, L=None)

    @classmethod
    def from_kernel(cls, X, kernel, n_inducing=512, seed=0, inducing="random", jitter=1e-6,
                    *, nugget=0.0, num_threads=None):
        """Build V and p from a kernel and inducing points.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        kernel : residual.RBF or residual.Matern
        n_inducing : int, default=512
            Number of inducing points for ``inducing="random"`` or ``"kmeans++"``, in
            [1, n_samples]. Ignored when ``inducing`` is an array.
        seed : int, numpy.random.Generator or None, default=0
            Seeds ``"random"`` and ``"kmeans++"``. An int draws the same points every time; a
            Generator (advanced by one draw) or None (fresh entropy) first draws an int seed.
        inducing : {"random", "kmeans++"} or array-like, default="random"
            ``"random"``: the rows
            ``numpy.random.default_rng(seed).choice(n_samples, n_inducing, replace=False)``.
            ``"kmeans++"``: k-means++ seeding on the rows, in lengthscale-scaled coordinates,
            then up to ``KMEANS_LLOYD_STEPS`` Lloyd steps; the centres (coordinates, not rows)
            are the inducing points. A 1-D integer array: row indices of X (distinct). A 2-D
            array of shape (m, n_features): the inducing points' coordinates.
        jitter : float, default=1e-6
            Added to the diagonal of ``k(U, U)`` as ``jitter * variance``.
        nugget : float, default=0.0
            Noise variance ``s2 >= 0`` used in the correlation (see :class:`ResidualCorrelation`).
            It does not change V or p.
        num_threads : int, default=None
            Threads for the kernel tiles (None = ``OMP_NUM_THREADS`` if set, else all
            usable cores).

        Returns
        -------
        model : ResidualCorrelation

        Raises
        ------
        TypeError, ValueError
            If ``n_inducing`` is not in [1, n_samples], ``inducing`` is an unknown name, holds
            bad indices or coordinates of the wrong width, ``nugget`` is negative, or
            ``k(U, U) + jitter`` is not positive definite.

        Notes
        -----
        Points whose residual variance plus nugget falls to ``DEGENERATE_P_RTOL * variance``
        or below are marked degenerate: distance 1 to every other point (see
        :data:`DEGENERATE_P_RTOL`).
        """
        X = as_float_matrix(X, "X")
        _check_kernel(kernel)
        n = X.shape[0]
        inducing = check_inducing(inducing, n, X.shape[1])
        if isinstance(inducing, str):
            n_inducing = check_int(n_inducing, "n_inducing", minimum=1, maximum=n)
        jitter = check_positive(jitter, "jitter")
        nugget = check_nugget(nugget)
        kernel.lengthscales(X.shape[1])               # an ARD kernel must match X's columns
        nt = resolve_num_threads(num_threads)
        if isinstance(inducing, str):
            seed = resolve_seed(seed)      # last: a Generator is drawn from only for valid calls

        self = cls.__new__(cls)
        centre = _column_mean(X)
        xs = self._scale(X, kernel, centre)
        rows = points = None
        if not isinstance(inducing, str):
            rows, points = (inducing, None) if inducing.ndim == 1 else (None, inducing)
        elif inducing == "random":
            rows = np.random.default_rng(seed).choice(n, n_inducing, replace=False)
        else:
            points = _kmeans_pp(X, xs, kernel, centre, n_inducing, np.random.default_rng(seed))
        if rows is not None:
            rows = rows.astype(np.int64)
            points = X[rows]
        # the same elementwise operations as xs: for rows, us is xs[rows] bit for bit
        us = self._scale(points, kernel, centre, "inducing")
        kuu = kernel._matrix(us, us, nt)
        kuu[np.diag_indices_from(kuu)] += jitter * kernel.variance
        try:
            L = scipy.linalg.cholesky(kuu, lower=True, check_finite=False)
        except np.linalg.LinAlgError:
            raise ValueError("k(U, U) + jitter * variance * I is not positive definite: "
                             "increase jitter or use fewer / more distinct inducing points"
                             ) from None
        kxu = kernel._matrix(xs, us, nt)                       # (n, m), C-contiguous
        # V^T = L^-1 k(U, X): kxu.T is F-contiguous (m, n), so LAPACK solves in place and V
        # comes back C-contiguous (n, m) without a copy.
        vt = scipy.linalg.solve_triangular(L, kxu.T, lower=True, overwrite_b=True,
                                           check_finite=False)
        V = np.ascontiguousarray(vt.T)
        p = kernel.variance - np.einsum("ij,ij->i", V, V)
        if not (np.isfinite(L).all() and np.isfinite(V).all() and np.isfinite(p).all()):
            raise ValueError("the inducing-point factorisation is not finite: check the "
                             "kernel parameters and the scale of X")
        self._setup(X, kernel, V, p, nugget=nugget, inducing=rows, inducing_points=points,
                    jitter=jitter, L=L, xs=xs, centre=centre, us=us)
        return self

    # -- internals ------------------------------------------------------------------------------

    @staticmethod
    def _scale(X, kernel, centre=None, name="X"):
        """Centred, lengthscale-scaled coordinates (float64, C-contiguous)."""
        scale = 1.0 / kernel.lengthscales(X.shape[1])
        centre = _column_mean(X) if centre is None else centre
        with np.errstate(over="ignore", invalid="ignore"):
            xs = np.ascontiguousarray((X - centre) * scale)
        if not np.isfinite(xs).all():
            raise ValueError(f"{name} divided by the lengthscale overflows float64: rescale "
                             f"{name} or the lengthscale")
        return xs

    def _setup(self, X, kernel, V, p, *, nugget, inducing, inducing_points, jitter, L, xs=None,
               centre=None, us=None):
        self.X = X
        self.kernel = kernel
        self.V = V
        self.p_diag = p
        self.nugget = nugget
        self.inducing = inducing
        self.inducing_points = inducing_points
        self.jitter = jitter
        self.L = L
        if xs is None:
            xs = self._scale(X, kernel, centre)         # refuses overflowing X first
        self._centre = _column_mean(X) if centre is None else centre
        self._scale_inv = 1.0 / kernel.lengthscales(X.shape[1])
        if us is None and inducing_points is not None:
            us = self._scale(inducing_points, kernel, self._centre, "inducing")
        self._us = us           # scaled inducing points, for new points' k(Y, U)
        self.degenerate, inv_sqrt_p = _inv_sqrt_p(p, nugget, kernel.variance)
        #: the compiled code's view of the rows (scaled x, V, 1/sqrt(p), kernel), made once
        self.metric = Metric.residual_correlation(kernel._code, kernel.variance, xs, V,
                                                  inv_sqrt_p)
        self.V = self.metric.v          # one array, aligned (the metric copies a V that is not)

    @property
    def _xs(self):
        """Centred, lengthscale-scaled coordinates (n, D)."""
        return self.metric.x

    @property
    def _inv_sqrt_p(self):
        """1/sqrt(p + nugget) per row, 0 where degenerate."""
        return self.metric.s

    def take(self, order):
        """A copy of this model whose row ``pos`` is the original row ``order[pos]``.

        Every per-row array is gathered (bitwise the same values, so distances are unchanged);
        the inducing row indices (if any) are mapped to their new positions, so they keep
        naming the same rows; new points use the model's fixed inducing coordinates, centre
        and scale. ``order`` is a permutation of the rows (not checked here).
        """
        out = ResidualCorrelation.__new__(ResidualCorrelation)
        vars(out).update(vars(self))
        for name in ("X", "p_diag", "degenerate"):
            setattr(out, name, np.ascontiguousarray(getattr(self, name)[order]))
        out.V = aligned_rows(self.V, order)
        # the metric reads the model's own V, as in _setup (one copy of V, not two)
        out.metric = Metric.residual_correlation(self.kernel._code, self.kernel.variance,
                                                 self.metric.x[order], out.V,
                                                 self.metric.s[order])
        if self.inducing is not None:
            where = np.empty_like(order)
            where[order] = np.arange(order.size)
            out.inducing = where[self.inducing]
        return out

    @property
    def n_samples(self):
        return self.X.shape[0]

    @property
    def n_features(self):
        return self.X.shape[1]

    @property
    def n_inducing(self):
        return self.V.shape[1]

    def _query_metric(self, Y, num_threads=1):
        """The metric of new coordinates Y (already validated) beside this model's rows, made
        in row blocks so that Ctrl-C is handled between two (a point's V and p do not depend
        on the other points)."""
        parts = []
        if Y.shape[0] == 0:
            parts.append(self._new_points(Y, num_threads))
        in_blocks(Y.shape[0], 256 * num_threads,
                  lambda a, b: parts.append(self._new_points(Y[a:b], num_threads)))
        return Metric.residual_correlation(self.kernel._code, self.kernel.variance,
                                           *(np.concatenate(arrays) for arrays in zip(*parts)))

    def _new_points(self, Y, num_threads=1):
        """(ys, V_new, inv_sqrt_p_new) for new coordinates Y, already validated."""
        if self.L is None:
            raise ValueError("queries with new points need a model built by "
                             "ResidualCorrelation.from_kernel (V for new points comes from "
                             "L and k(U, Y))")
        with np.errstate(over="ignore"):    # far points overflow to inf: k = 0, d = 1
            ys = np.ascontiguousarray((Y - self._centre) * self._scale_inv)
        v_new = self.kernel._matrix(ys, self._us, num_threads)  # k(Y, U), then L^-1 per row
        with single_threaded_blas():
            _tiles.solve_lower_rows(np.ascontiguousarray(self.L), v_new, num_threads)
        p_new = self.kernel.variance - np.einsum("ij,ij->i", v_new, v_new)
        # a new point carries its own noise: the nugget enters as for the rows
        return ys, v_new, _inv_sqrt_p(p_new, self.nugget, self.kernel.variance)[1]

    # -- persistence (save, load and pickling: residual/_persist.py) -------------------------------

    _FORMAT = _persist.MODEL_FORMAT

    def _state(self):
        """The entries describing this model (residual/_persist.py adds the header)."""
        state = {"X": self.X, "V": self.V, "p_diag": self.p_diag, "centre": self._centre,
                 "nugget": self.nugget, "from_kernel": self.L is not None}
        state.update(("kernel_" + key, value) for key, value in self.kernel._state().items())
        if self.L is not None:
            state.update(inducing_points=self.inducing_points, jitter=self.jitter, L=self.L)
            if self.inducing is not None:
                state.update(inducing=self.inducing)
        return state

    def _restore(self, reader):
        """Fill this (new) object from a :class:`residual._persist.Reader`, checking it."""
        X = reader.array("X", np.float64, (None, None))
        n, dim = X.shape
        if n == 0 or dim == 0:
            raise ValueError(f"entry {reader.name('X')} is empty (shape {X.shape})")
        kernel = kernel_from_state(reader.prefixed("kernel_"))
        kernel.lengthscales(dim)                  # an ARD kernel must match the columns of X
        V = reader.array("V", np.float64, (n, None))
        p = reader.array("p_diag", np.float64, (n,))
        if (p < 0).any():
            raise ValueError(f"entry {reader.name('p_diag')} has negative values")
        centre = reader.array("centre", np.float64, (dim,))
        # version 1 had no nugget (and only inducing rows, below)
        nugget = check_nugget(reader.number("nugget"), f"entry {reader.name('nugget')}"
                              ) if reader.version >= 2 else 0.0
        inducing = points = jitter = L = None
        if reader.flag("from_kernel"):
            m = V.shape[1]
            if reader.version < 2 or reader.has("inducing"):
                inducing = reader.in_range(
                    "inducing", reader.array("inducing", np.int64, (m,)), 0, n)
                if np.unique(inducing).size != m:
                    raise ValueError(f"entry {reader.name('inducing')} has repeated indices")
            if reader.version >= 2:
                points = reader.array("inducing_points", np.float64, (m, dim))
                if inducing is not None and not np.array_equal(points, X[inducing]):
                    raise ValueError(f"entry {reader.name('inducing_points')} does not match "
                                     f"the rows {reader.name('inducing')} of X")
            else:
                points = X[inducing]
            jitter = check_positive(reader.number("jitter"), f"entry {reader.name('jitter')}")
            L = reader.array("L", np.float64, (m, m))
            if not (np.diag(L) > 0).all():
                raise ValueError(f"entry {reader.name('L')} is not a Cholesky factor (its "
                                 "diagonal must be > 0)")
        self._setup(X, kernel, V, p, nugget=nugget, inducing=inducing, inducing_points=points,
                    jitter=jitter, L=L, centre=centre)

    def __repr__(self):
        nugget = f", nugget={self.nugget!r}" if self.nugget else ""
        return (f"ResidualCorrelation(n_samples={self.n_samples}, n_features={self.n_features}, "
                f"n_inducing={self.n_inducing}, kernel={self.kernel!r}{nugget})")


def _column_mean(X):
    """The centre of X's rows; a column whose mean overflows gives inf or nan, which _scale
    then refuses with its own message."""
    with np.errstate(over="ignore", invalid="ignore"):
        return X.mean(axis=0)


def _inv_sqrt_p(p, nugget, variance):
    """Degenerate mask and 1/sqrt(p + nugget), 0 where degenerate (so |rho| = 0, d = 1)."""
    q = p + nugget                               # bitwise p when the nugget is 0
    degenerate = q <= DEGENERATE_P_RTOL * variance
    inv = np.zeros_like(q)
    np.divide(1.0, np.sqrt(q, where=~degenerate, out=np.ones_like(q)), out=inv,
              where=~degenerate)
    return degenerate, inv


def _check_kernel(kernel):
    if not isinstance(kernel, Kernel):
        raise TypeError("kernel must be a residual kernel (residual.RBF or residual.Matern), "
                        f"got {type(kernel).__name__}")


def check_nugget(nugget, name="nugget"):
    """Return ``nugget`` as a finite float >= 0."""
    if isinstance(nugget, (bool, np.bool_)) or not isinstance(nugget, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(nugget).__name__}")
    nugget = float(nugget)
    if not np.isfinite(nugget) or nugget < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {nugget}")
    return nugget


def check_inducing(inducing, n, dim):
    """``inducing`` checked: a name from INDUCING_CHOICES, int64 row indices (1-D) or float64
    coordinates (2-D, ``dim`` columns)."""
    if isinstance(inducing, str):
        if inducing not in INDUCING_CHOICES:
            raise ValueError(f"inducing must be one of {INDUCING_CHOICES}, an array of row "
                             f"indices or an (m, {dim}) array of coordinates, got {inducing!r}")
        return inducing
    arr = as_numeric_array(inducing, "inducing",
                           what="be integer row indices or a 2-D array of coordinates")
    if arr.ndim == 2:
        return as_float_matrix(arr, "inducing", ncols=dim)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"inducing must be a non-empty 1-D array of row indices or a 2-D "
                         f"array of coordinates, got shape {arr.shape}")
    arr = as_numeric_array(inducing, "inducing", integer=True,
                           what=f"be integer row indices when 1-D (coordinates are a 2-D array "
                                f"of shape (m, {dim}))")
    if arr.min() < 0 or arr.max() >= n:
        raise ValueError(f"inducing indices must lie in [0, {n - 1}]")
    if np.unique(arr).size != arr.size:
        raise ValueError("inducing indices must be distinct")
    return arr.astype(np.int64)


def _kmeans_pp(X, xs, kernel, centre, m, rng):
    """m k-means++ centres of the rows, in the units of X, refined by Lloyd steps.

    Distances are those of the kernel, on the lengthscale-scaled rows ``xs``; the centres are
    means of rows of X, so they are plain coordinates (scaled again, like any inducing array).
    Deterministic for a given generator: NumPy elementwise sums, first index on ties.
    """
    n = xs.shape[0]
    first = int(rng.integers(n))
    chosen = [first]
    d2 = ((xs - xs[first]) ** 2).sum(axis=1)
    for _ in range(1, m):
        total = d2.sum()
        # D^2 sampling; once every row sits on a centre, any row will do
        pick = (int(rng.integers(n)) if total <= 0 else
                min(int(np.searchsorted(np.cumsum(d2), rng.random() * total, side="right")),
                    n - 1))
        chosen.append(pick)
        np.minimum(d2, ((xs - xs[pick]) ** 2).sum(axis=1), out=d2)
    points = X[np.asarray(chosen)]
    labels = None
    for _ in range(KMEANS_LLOYD_STEPS):
        new = _nearest_centre(xs, ResidualCorrelation._scale(points, kernel, centre))
        if labels is not None and np.array_equal(new, labels):
            break
        labels = new
        counts = np.bincount(labels, minlength=m)
        sums = np.stack([np.bincount(labels, weights=col, minlength=m) for col in X.T], axis=1)
        # an emptied centre stays where it was
        points = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], points)
    return np.ascontiguousarray(points)


def _nearest_centre(xs, cs, max_elements=1 << 21):
    """Index of the nearest row of ``cs`` for each row of ``xs`` (direct sums, in blocks)."""
    out = np.empty(xs.shape[0], dtype=np.int64)
    step = max(1, max_elements // cs.shape[0])
    for lo in range(0, xs.shape[0], step):
        block = xs[lo:lo + step]
        d2 = np.zeros((block.shape[0], cs.shape[0]))
        for j in range(xs.shape[1]):
            d2 += (block[:, j, None] - cs[None, :, j]) ** 2
        out[lo:lo + step] = d2.argmin(axis=1)
    return out
