"""The residual-correlation model: inducing points, V and p (DESIGN.md section 1).

With inducing rows U (m of them) and ``L = chol(k(U, U) + jitter * variance * I)``::

    V   = (L^-1 k(U, X))^T            (n, m)
    p_i = k(x_i, x_i) - ||V_i||^2     residual variance
    C_ij = k(x_i, x_j) - V_i . V_j    residual covariance
    rho_ij = C_ij / sqrt(p_i p_j)     clamped to [-1, 1]
    d_ij = sqrt(1 - |rho_ij|)         the distance, in [0, 1]

d is a metric (the sign-quotient distance between unit residual feature vectors), so cover-tree
pruning with it is exact.
"""

import numpy as np
import scipy.linalg

from residual import _persist, _tiles
from residual.kernels import Kernel, kernel_from_state
from residual._parallel import resolve_num_threads, single_threaded_blas
from residual._validate import (as_float_matrix, as_float_vector, as_numeric_array, check_int,
                                check_positive, resolve_seed)

#: A point whose residual variance is at most ``DEGENERATE_P_RTOL * variance`` has, numerically,
#: no residual left: its correlations would be rounding noise divided by ~0. Such a point gets
#: distance 1 to every other point (0 to itself), which keeps the triangle inequality. The value
#: sits far below what a jitter of 1e-6 leaves on an inducing point (~1e-6 * variance) and far
#: above the float64 noise of ``variance - ||V_i||^2`` (~1e-14 * variance for m = 512).
DEGENERATE_P_RTOL = 1e-10


class ResidualCorrelation:
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

    Attributes
    ----------
    X : ndarray of shape (n_samples, n_features)
    kernel : Kernel
    V : ndarray of shape (n_samples, n_inducing)
    p_diag : ndarray of shape (n_samples,)
    inducing : ndarray of int64 or None
        Row indices of X used as inducing points (None for user-supplied factors).
    jitter : float or None
    L : ndarray of shape (n_inducing, n_inducing) or None
        Lower Cholesky factor of ``k(U, U) + jitter * variance * I``; needed for new points.
    degenerate : ndarray of bool, shape (n_samples,)
        Rows with ``p_diag <= DEGENERATE_P_RTOL * variance`` (distance 1 to all others).

    Raises
    ------
    TypeError, ValueError
        On non-numeric, non-finite or mis-shaped arrays, or negative ``p_diag``.
    """

    def __init__(self, X, kernel, *, V, p_diag):
        X = as_float_matrix(X, "X")
        _check_kernel(kernel)
        V = as_float_matrix(V, "V")
        if V.shape[0] != X.shape[0]:
            raise ValueError(f"V has {V.shape[0]} rows but X has {X.shape[0]}")
        p_diag = as_float_vector(p_diag, "p_diag", size=X.shape[0])
        if (p_diag < 0).any():
            raise ValueError(f"p_diag must be >= 0; {int((p_diag < 0).sum())} entries are "
                             f"negative (min {p_diag.min():.3g})")
        self._setup(X, kernel, V, p_diag, inducing=None, jitter=None, L=None)

    @classmethod
    def from_kernel(cls, X, kernel, n_inducing=512, seed=0, inducing=None, jitter=1e-6,
                    *, num_threads=None):
        """Build V and p from a kernel and inducing rows of X.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        kernel : residual.RBF or residual.Matern
        n_inducing : int, default=512
            Number of inducing rows, drawn without replacement by
            ``numpy.random.default_rng(seed).choice(n_samples, n_inducing, replace=False)``.
            Ignored when ``inducing`` is given.
        seed : int, numpy.random.Generator or None, default=0
            An int draws the same rows every time; a Generator (advanced by one draw) or
            None (fresh entropy) first draws an int seed.
        inducing : array-like of int, default=None
            Explicit row indices of X to use as inducing points (distinct).
        jitter : float, default=1e-6
            Added to the diagonal of ``k(U, U)`` as ``jitter * variance``.
        num_threads : int, default=None
            Threads for the kernel tiles (None = ``OMP_NUM_THREADS`` if set, else all
            usable cores).

        Returns
        -------
        model : ResidualCorrelation

        Raises
        ------
        ValueError
            If ``n_inducing`` is not in [1, n_samples], ``inducing`` holds bad indices, or
            ``k(U, U) + jitter`` is not positive definite.

        Notes
        -----
        Points whose residual variance falls to ``DEGENERATE_P_RTOL * variance`` or below are
        marked degenerate: distance 1 to every other point (see :data:`DEGENERATE_P_RTOL`).
        """
        X = as_float_matrix(X, "X")
        _check_kernel(kernel)
        n = X.shape[0]
        if inducing is None:
            n_inducing = check_int(n_inducing, "n_inducing", minimum=1, maximum=n)
            seed = resolve_seed(seed)
            inducing = np.random.default_rng(seed).choice(n, n_inducing, replace=False)
        else:
            inducing = _check_inducing(inducing, n)
        jitter = check_positive(jitter, "jitter")
        nt = resolve_num_threads(num_threads)

        self = cls.__new__(cls)
        xs = self._scale(X, kernel)
        us = np.ascontiguousarray(xs[inducing])
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
        self._setup(X, kernel, V, p, inducing=inducing, jitter=jitter, L=L, xs=xs)
        return self

    # -- internals ------------------------------------------------------------------------------

    @staticmethod
    def _scale(X, kernel, centre=None):
        """Centred, lengthscale-scaled coordinates (float64, C-contiguous)."""
        scale = 1.0 / kernel.lengthscales(X.shape[1])
        with np.errstate(over="ignore", invalid="ignore"):
            centre = X.mean(axis=0) if centre is None else centre
            xs = np.ascontiguousarray((X - centre) * scale)
        if not np.isfinite(xs).all():
            raise ValueError("X divided by the lengthscale overflows float64: rescale X or "
                             "the lengthscale")
        return xs

    def _setup(self, X, kernel, V, p, *, inducing, jitter, L, xs=None, centre=None):
        self.X = X
        self.kernel = kernel
        self.V = V
        self.p_diag = p
        self.inducing = None if inducing is None else np.asarray(inducing, dtype=np.int64)
        self.jitter = jitter
        self.L = L
        if xs is None:
            xs = self._scale(X, kernel, centre)         # refuses overflowing X first
        self._centre = X.mean(axis=0) if centre is None else centre
        self._scale_inv = 1.0 / kernel.lengthscales(X.shape[1])
        self._xs = xs
        self._xs_t = np.ascontiguousarray(xs.T)     # (D, n): candidate side of the tiles
        self.degenerate, self._inv_sqrt_p = _inv_sqrt_p(p, kernel.variance)

    @property
    def n_samples(self):
        return self.X.shape[0]

    @property
    def n_features(self):
        return self.X.shape[1]

    @property
    def n_inducing(self):
        return self.V.shape[1]

    def _new_points(self, Y, num_threads=1):
        """(ys, V_new, inv_sqrt_p_new) for new coordinates Y, already validated."""
        if self.L is None:
            raise ValueError("queries with new points need a model built by "
                             "ResidualCorrelation.from_kernel (V for new points comes from "
                             "L and k(U, Y))")
        with np.errstate(over="ignore"):    # far points overflow to inf: k = 0, d = 1
            ys = np.ascontiguousarray((Y - self._centre) * self._scale_inv)
        us = np.ascontiguousarray(self._xs[self.inducing])
        v_new = self.kernel._matrix(ys, us, num_threads)        # k(Y, U), then L^-1 per row
        with single_threaded_blas():
            _tiles.solve_lower_rows(np.ascontiguousarray(self.L), v_new, num_threads)
        p_new = self.kernel.variance - np.einsum("ij,ij->i", v_new, v_new)
        return ys, v_new, _inv_sqrt_p(p_new, self.kernel.variance)[1]

    # -- persistence ----------------------------------------------------------------------------

    def save(self, path):
        """Write the model to a ``.npz`` file (NumPy arrays only, no pickle).

        Parameters
        ----------
        path : str or os.PathLike
            Destination. As with ``numpy.savez``, ``.npz`` is appended when the name lacks it.

        Returns
        -------
        path : str
            The file written.

        Notes
        -----
        The file holds X, the kernel (name, nu, lengthscale, variance), V, p_diag and, for a
        model from :meth:`from_kernel`, the inducing indices, jitter and L, plus the centre of
        X; the scaled coordinates and 1/sqrt(p) are recomputed on load by the same elementwise
        float64 operations, so distances are bitwise identical. The format is versioned (see
        ``residual/_persist.py``).
        """
        return _persist.save(path, self._state(), _persist.MODEL_FORMAT)

    @classmethod
    def load(cls, path):
        """Read a model written by :meth:`save`.

        Parameters
        ----------
        path : str or os.PathLike
            The file; when it does not exist, ``path + ".npz"`` is tried (as saved).

        Returns
        -------
        model : ResidualCorrelation

        Raises
        ------
        ValueError
            Naming the path and the problem: the file is missing, unreadable, truncated or
            corrupted, not a residual model file, from a newer format version, or has missing
            or inconsistent entries.
        """
        self = cls.__new__(cls)
        _persist.load(path, _persist.MODEL_FORMAT, self._restore)
        return self

    def __getstate__(self):
        # the pickle is the saved file's dict: one description of a model, checked on the way in
        return _persist.pack(self._state(), _persist.MODEL_FORMAT)

    def __setstate__(self, state):
        _persist.unpickle(state, _persist.MODEL_FORMAT, self._restore)

    def _state(self):
        """The entries describing this model (residual/_persist.py adds the header)."""
        state = {"X": self.X, "V": self.V, "p_diag": self.p_diag, "centre": self._centre,
                 "from_kernel": self.L is not None}
        state.update(("kernel_" + key, value) for key, value in self.kernel._state().items())
        if self.L is not None:
            state.update(inducing=self.inducing, jitter=self.jitter, L=self.L)
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
        inducing = jitter = L = None
        if reader.flag("from_kernel"):
            m = V.shape[1]
            inducing = reader.in_range("inducing", reader.array("inducing", np.int64, (m,)),
                                       0, n)
            if np.unique(inducing).size != m:
                raise ValueError(f"entry {reader.name('inducing')} has repeated indices")
            jitter = check_positive(reader.number("jitter"), f"entry {reader.name('jitter')}")
            L = reader.array("L", np.float64, (m, m))
            if not (np.diag(L) > 0).all():
                raise ValueError(f"entry {reader.name('L')} is not a Cholesky factor (its "
                                 "diagonal must be > 0)")
        self._setup(X, kernel, V, p, inducing=inducing, jitter=jitter, L=L, centre=centre)

    def __repr__(self):
        return (f"ResidualCorrelation(n_samples={self.n_samples}, n_features={self.n_features}, "
                f"n_inducing={self.n_inducing}, kernel={self.kernel!r})")


def _inv_sqrt_p(p, variance):
    """Degenerate mask and 1/sqrt(p), with 0 where p is degenerate (so |rho| = 0, d = 1)."""
    degenerate = p <= DEGENERATE_P_RTOL * variance
    inv = np.zeros_like(p)
    np.divide(1.0, np.sqrt(p, where=~degenerate, out=np.ones_like(p)), out=inv,
              where=~degenerate)
    return degenerate, inv


def _check_kernel(kernel):
    if not isinstance(kernel, Kernel):
        raise TypeError("kernel must be a residual kernel (residual.RBF or residual.Matern), "
                        f"got {type(kernel).__name__}")


def _check_inducing(inducing, n):
    if (isinstance(inducing, (list, tuple)) and len(inducing) == 0
            or isinstance(inducing, np.ndarray) and inducing.size == 0):
        raise ValueError("inducing must be a non-empty 1-D array of row indices")
    idx = as_numeric_array(inducing, "inducing", integer=True,
                           what="be integer row indices")
    if idx.ndim != 1 or idx.size == 0:
        raise ValueError(f"inducing must be a non-empty 1-D array of row indices, got shape "
                         f"{idx.shape}")
    if idx.min() < 0 or idx.max() >= n:
        raise ValueError(f"inducing indices must lie in [0, {n - 1}]")
    if np.unique(idx).size != idx.size:
        raise ValueError("inducing indices must be distinct")
    return idx.astype(np.int64)
