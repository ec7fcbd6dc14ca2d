"""Stationary covariance kernels, evaluated natively in tiles.

``k(x, y) = variance * f(r)`` with ``r = ||(x - y) / lengthscale||``:

- RBF: ``f(r) = exp(-r^2 / 2)``
- Matern 1/2: ``exp(-r)``; 3/2: ``(1 + sqrt(3) r) exp(-sqrt(3) r)``;
  5/2: ``(1 + sqrt(5) r + 5 r^2 / 3) exp(-sqrt(5) r)``
"""

import numpy as np

from residual import _tiles
from residual._parallel import resolve_num_threads, single_threaded_blas
from residual._validate import as_float_matrix, as_numeric_array, check_positive

_KIND = _tiles.KernelKind
_MATERN_CODES = {0.5: _KIND.KERNEL_MATERN12, 1.5: _KIND.KERNEL_MATERN32,
                 2.5: _KIND.KERNEL_MATERN52}


class Kernel:
    """Base class: a stationary kernel with a lengthscale (scalar or per dimension) and variance.

    Parameters
    ----------
    lengthscale : float or array-like of shape (n_features,), default=1.0
        A scalar, or one lengthscale per input dimension (ARD). Every entry must be > 0.
    variance : float, default=1.0
        The kernel's value at zero distance, sigma^2 > 0.
    """

    _code = None  # a residual._tiles.KernelKind

    def __init__(self, lengthscale=1.0, variance=1.0):
        ls = as_numeric_array(lengthscale, "lengthscale",
                              what="be a real number or array").astype(np.float64)
        if ls.ndim > 1 or ls.size == 0:
            raise ValueError("lengthscale must be a scalar or a 1-D array with one entry per "
                             f"dimension, got shape {ls.shape}")
        if not (np.isfinite(ls).all() and (ls > 0).all()):
            raise ValueError(f"lengthscale must be finite and > 0, got {lengthscale!r}")
        with np.errstate(divide="ignore", over="ignore"):
            if not np.isfinite(1.0 / ls).all():
                raise ValueError(f"lengthscale is too small (1 / lengthscale overflows): "
                                 f"{lengthscale!r}")
        self.lengthscale = float(ls) if ls.ndim == 0 else ls
        self.variance = check_positive(variance, "variance")

    def lengthscales(self, n_features):
        """The lengthscale as an array of shape (n_features,), checked against the data."""
        ls = np.asarray(self.lengthscale, dtype=np.float64)
        if ls.ndim == 0:
            return np.full(n_features, float(ls))
        if ls.shape[0] != n_features:
            raise ValueError(f"kernel has {ls.shape[0]} lengthscales (ARD) but the data has "
                             f"{n_features} features")
        return ls

    def __call__(self, X, Y=None, *, num_threads=None):
        """Kernel matrix ``k(X, Y)`` (``Y = X`` when omitted).

        Parameters
        ----------
        X : array-like of shape (n_samples_X, n_features)
        Y : array-like of shape (n_samples_Y, n_features), default=None
        num_threads : int, default=None
            Threads to use (None = ``OMP_NUM_THREADS`` if set, else all usable cores).

        Returns
        -------
        K : ndarray of shape (n_samples_X, n_samples_Y), float64
        """
        X = as_float_matrix(X, "X")
        Y = X if Y is None else as_float_matrix(Y, "Y", ncols=X.shape[1])
        nt = resolve_num_threads(num_threads)
        scale = 1.0 / self.lengthscales(X.shape[1])
        with np.errstate(over="ignore"):    # far points overflow to inf: k = 0, as it should
            centre = X.mean(axis=0)
            xs = (X - centre) * scale
            ys = xs if Y is X else (Y - centre) * scale
        return self._matrix(xs, ys, nt)

    def _matrix(self, xs, ys, num_threads=1):
        """k between rows already centred and scaled (the model's master arrays)."""
        with single_threaded_blas():
            return _tiles.kernel_matrix(self._code, self.variance, xs,
                                        np.ascontiguousarray(ys.T), num_threads)

    def diag(self, X):
        """``k(x, x)`` for each row of X: the variance, since the kernel is stationary."""
        X = as_float_matrix(X, "X", allow_empty=True)
        return np.full(X.shape[0], self.variance)

    def __eq__(self, other):
        return (type(self) is type(other)
                and np.array_equal(self.lengthscale, other.lengthscale)
                and self.variance == other.variance
                and getattr(self, "nu", None) == getattr(other, "nu", None))

    def __hash__(self):
        return hash((type(self).__name__, np.asarray(self.lengthscale).tobytes(), self.variance))

    def __repr__(self):
        # plain floats: list(ndarray) would print np.float64(...) for each ARD entry
        ls = (self.lengthscale if np.ndim(self.lengthscale) == 0
              else [float(v) for v in self.lengthscale])
        nu = f"nu={self.nu!r}, " if isinstance(self, Matern) else ""
        return f"{type(self).__name__}({nu}lengthscale={ls!r}, variance={self.variance!r})"

    def _state(self):
        """The kernel's entries in a saved model; read back by :func:`kernel_from_state`."""
        state = {"name": type(self).__name__, "lengthscale": self.lengthscale,
                 "variance": self.variance}
        if isinstance(self, Matern):
            state["nu"] = self.nu
        return state


class RBF(Kernel):
    """Squared-exponential kernel ``variance * exp(-r^2 / 2)``.

    Parameters
    ----------
    lengthscale : float or array-like of shape (n_features,), default=1.0
        A scalar, or one lengthscale per input dimension (ARD); every entry > 0.
    variance : float, default=1.0
        sigma^2 > 0.

    Examples
    --------
    >>> import numpy as np, residual
    >>> residual.RBF(lengthscale=2.0)(np.zeros((1, 3)), np.ones((1, 3)))
    array([[0.68728928]])
    """

    _code = _KIND.KERNEL_RBF


class Matern(Kernel):
    """Matern kernel with smoothness ``nu`` in {0.5, 1.5, 2.5}.

    Parameters
    ----------
    nu : {0.5, 1.5, 2.5}
        Smoothness. 0.5 is the exponential kernel.
    lengthscale : float or array-like of shape (n_features,), default=1.0
        A scalar, or one lengthscale per input dimension (ARD); every entry > 0.
    variance : float, default=1.0
        sigma^2 > 0.

    Raises
    ------
    ValueError
        If ``nu`` is not one of the supported values.
    """

    def __init__(self, nu=2.5, lengthscale=1.0, variance=1.0):
        if isinstance(nu, bool) or not isinstance(nu, (int, float, np.integer, np.floating)):
            raise TypeError(f"nu must be a number, got {type(nu).__name__}")
        if float(nu) not in _MATERN_CODES:
            raise ValueError(f"nu must be one of 0.5, 1.5, 2.5, got {nu!r}")
        self.nu = float(nu)
        self._code = _MATERN_CODES[self.nu]
        super().__init__(lengthscale, variance)


def kernel_from_state(reader):
    """Rebuild a kernel from its saved entries, through its constructor's checks."""
    name = reader.text("name", ("RBF", "Matern"))
    # a scalar lengthscale is saved 0-d, an ARD one 1-d: keep the distinction on the way back
    ls = reader.array("lengthscale", np.float64, () if reader.ndim("lengthscale") == 0
                      else (None,))
    ls = float(ls) if ls.ndim == 0 else ls
    variance = reader.number("variance")
    if name == "RBF":
        return RBF(lengthscale=ls, variance=variance)
    return Matern(nu=reader.number("nu"), lengthscale=ls, variance=variance)
