"""Vecchia conditioning sets: order the points, then find each point's k nearest predecessors.

The pipeline is model -> ordering -> build -> query. The residual model is built once on the
rows as given (so its inducing points are the ones ``from_kernel`` would draw for that data),
then its per-row arrays are permuted into the chosen order; the neighbour search runs on the
ordered sequence, so every index it returns is a position in that sequence. The result keeps
what the Vecchia factor needs (the ordered model, or the coordinates and kernel) and computes
the factor and the VIF log density on request (residual/_factor.pyx).
"""

import functools
import inspect
import time

import numpy as np
import scipy.linalg
import scipy.sparse

from residual import _auto, _factor
from residual.bruteforce import in_sample_rows
from residual.kernels import Kernel
from residual.model import (DEGENERATE_P_RTOL, ResidualCorrelation, check_inducing,
                            check_nugget)
from residual.ordering import maximin_order
from residual.kdtree import KDTree
from residual.tree import CoverTree
from residual._parallel import resolve_num_threads, single_threaded_blas
from residual._tiles import Metric
from residual._validate import (as_float_vector, as_numeric_array, as_points,
                                check_euclidean_range, check_int, resolve_seed)

ORDERINGS = ("random", "natural", "maximin")
METRICS = ("residual", "euclidean")
METHODS = ("auto", "tree", "brute", "kdtree")
STAGES = ("model", "ordering", "build", "query")
COVARIANCES = ("residual", "kernel")

#: Rows of W = A V formed at a time by VecchiaNeighbors.logpdf (bounds its extra memory).
LOGPDF_BLOCK_ROWS = 1 << 16

#: Inducing points of the residual model when ``n_inducing`` is None (and n allows).
DEFAULT_N_INDUCING = 200


def default_n_inducing(n):
    """``min(DEFAULT_N_INDUCING, n - 1)``, at least 1: the inducing points used for n rows."""
    return max(1, min(DEFAULT_N_INDUCING, n - 1))


class VecchiaNeighbors:
    """The result of :func:`vecchia_neighbors`: an ordering and each point's conditioning set.

    Positions ``0..n-1`` index the ordered sequence; ``order[pos]`` is the original row of X
    at that position.

    Parameters
    ----------
    order : ndarray of int64, shape (n_samples,)
    neighbors : ndarray of int64, shape (n_samples, k)
    distances : ndarray of float64, shape (n_samples, k)
    stats : dict
        ``seconds`` per stage, ``distance_evaluations``, ``n_neighbors``,
        ``neighbors_per_second``; ``auto`` (residual ``method="auto"``: the choice and its
        estimates); ``float32_screen`` (residual: the float32 screen's counters of
        ``brute_force_knn(..., return_stats=True)`` or of the tree's ``stats["query"]``,
        summed over the row blocks this process answered).
    metric, method : str
        The metric, and the search method actually used (``"tree"``, ``"kdtree"`` or
        ``"brute"``).
    model : ResidualCorrelation, default=None
        The residual model with its rows in the ordered sequence (row ``pos`` is row
        ``order[pos]`` of X), or None.
    X : ndarray of shape (n_samples, n_features), default=None
        The coordinates, in the original row order (for the kernel covariance without a
        model).
    kernel : residual.RBF or residual.Matern, default=None
    make_model : callable, default=None
        ``make_model(num_threads)`` returns the ordered residual model when ``model`` is None;
        called once, by the first :meth:`factor` or :meth:`logpdf` that needs it.

    Attributes
    ----------
    order : ndarray of int64, shape (n_samples,)
        A permutation: position -> original row of X.
    neighbors : ndarray of int64, shape (n_samples, k)
        Row i holds the ``min(k, i)`` nearest earlier positions (all < i), ascending by
        (distance, position), then ``-1``.
    distances : ndarray of float64, shape (n_samples, k)
        The matching distances, then ``inf``.
    stats : dict
        ``seconds`` (a dict: ``model``, ``ordering``, ``build``, ``query``, ``total``),
        ``distance_evaluations`` of the search (brute force: every predecessor pair,
        ``n (n - 1) / 2``; a tree: those of its build plus the query), ``n_neighbors``
        (non-padded entries) and ``neighbors_per_second`` (``n_neighbors`` over build +
        query seconds).
    metric, method : str
    kernel : residual.RBF or residual.Matern or None
        The kernel of :meth:`factor` and :meth:`logpdf`: the residual model's, or the one
        given to :func:`vecchia_neighbors` (None when neither exists).
    """

    def __init__(self, order, neighbors, distances, stats, *, metric, method, model=None,
                 X=None, kernel=None, make_model=None):
        self.order = order
        self.neighbors = neighbors
        self.distances = distances
        self.stats = stats
        self.metric = metric
        self.method = method
        self.kernel = model.kernel if model is not None else kernel
        self._model = model
        self._X = X
        self._make_model = make_model

    @property
    def n_samples(self):
        return self.neighbors.shape[0]

    @property
    def k(self):
        return self.neighbors.shape[1]

    def to_csr(self, dtype=np.float64):
        """Sparsity pattern of the Vecchia (sparse inverse-Cholesky) factor, in ordered positions.

        Row i has nonzeros at column i and at its conditioning set ``neighbors[i, :min(k, i)]``:
        the pattern of the lower-triangular B with ``B Sigma B^T`` diagonal, where
        ``p(y) = prod_i p(y_i | y_{c(i)})``. Column indices are sorted within each row.

        Parameters
        ----------
        dtype : data-type, default=numpy.float64
            Type of the stored values, all ones (``bool`` gives a boolean pattern).

        Returns
        -------
        pattern : scipy.sparse.csr_matrix of shape (n_samples, n_samples)
            Lower triangular, ``n_samples + sum_i min(k, i)`` stored entries.
        """
        n = self.n_samples
        valid = self.neighbors >= 0
        # padding becomes n so that one sort per row puts it last, after the diagonal i
        cols = np.where(valid, self.neighbors, n)
        cols = np.sort(np.concatenate([cols, np.arange(n)[:, None]], axis=1), axis=1)
        counts = valid.sum(axis=1) + 1
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        indices = cols[cols < n].astype(np.int64)
        data = np.ones(indices.size, dtype=dtype)
        return scipy.sparse.csr_matrix((data, indices, indptr), shape=(n, n))

    @property
    def model(self):
        """The residual model in the ordered sequence (row ``pos`` is row ``order[pos]`` of X).

        For ``metric="euclidean"`` with a kernel it is built on first use, exactly as the
        residual path builds it (same ``n_inducing`` and ``seed``, on the rows as given, then
        permuted). None when there is no kernel.
        """
        return self._residual_model(None)

    def factor(self, covariance="residual", *, nugget=0.0, num_threads=None):
        """The sparse inverse-Cholesky (Vecchia) factor of the ordered vector ``y[order]``.

        Row i of ``A`` conditions position i on its neighbours ``c = neighbors[i, :min(k, i)]``
        under the covariance S: ``b = S_cc^-1 S_ci``, ``d = S_ii - S_ic b``,
        ``A_ii = 1 / sqrt(d)``, ``A_ic = -b / sqrt(d)``. Then ``A.T @ A`` approximates the
        inverse of the covariance of ``y[order]`` (exactly, when every row conditions on all
        its predecessors).

        Parameters
        ----------
        covariance : {"residual", "kernel"}, default="residual"
            ``"kernel"``: ``S = k(x, x') + nugget * I`` (plain Vecchia). ``"residual"``:
            ``S = k(x, x') - V V^T + nugget * I``, the residual of the low-rank part (a VIF
            model, see :meth:`logpdf`); after ``metric="euclidean"`` the residual model is
            built on first use (see :attr:`model`).
        nugget : float, default=0.0
            Noise variance added to the diagonal, >= 0. The model's own ``nugget`` (the one in
            the distance that chose the neighbours) is not used here: pass it again.
        num_threads : int, default=None
            Threads (None = ``OMP_NUM_THREADS`` if set, else all usable cores; negative
            counts back from them).

        Returns
        -------
        A : scipy.sparse.csr_matrix of shape (n_samples, n_samples)
            Lower triangular, with the pattern of :meth:`to_csr`; rows and columns are
            positions in the ordered sequence (position ``pos`` is row ``order[pos]`` of X).

        Raises
        ------
        TypeError, ValueError
            On a bad argument, or when the covariance needs a kernel that this result lacks
            (``metric="euclidean"`` without one), before any work starts.
        ValueError
            If a conditioning block is numerically singular: a Cholesky pivot (a conditional
            variance) at or below ``DEGENERATE_P_RTOL * (variance + nugget)``, e.g. from
            duplicate points or degenerate residual rows. A nugget resolves it.

        Notes
        -----
        Each row costs one Cholesky of its ``(k + 1) x (k + 1)`` block (LAPACK) and, for the
        residual covariance, one ``(k + 1) x (k + 1) x m`` product; rows run in parallel and
        their values do not depend on the thread count. For the original row order use
        ``A[:, numpy.argsort(order)]``: it maps ``y`` itself to ``A @ y[order]``.

        Examples
        --------
        >>> import numpy as np, residual
        >>> X = np.random.default_rng(0).uniform(size=(300, 2))
        >>> res = residual.vecchia_neighbors(X, residual.Matern(1.5, lengthscale=0.2), k=10,
        ...                                  n_inducing=30)
        >>> A = res.factor("residual", nugget=1e-4)
        >>> A.shape, A.nnz == res.to_csr().nnz
        ((300, 300), True)
        """
        covariance, nugget, nt = self._check_factor_args(covariance, nugget, num_threads)
        data, indices, indptr = self._factor(covariance, nugget, nt)
        return scipy.sparse.csr_matrix((data, indices, indptr), shape=(self.n_samples,) * 2)

    def logpdf(self, y, covariance="residual", *, nugget=0.0, num_threads=None):
        """Log density of y under the Vecchia-approximated Gaussian process (mean zero).

        Parameters
        ----------
        y : array-like of shape (n_samples,)
            Observations, in the original row order of X (not the ordered sequence).
        covariance : {"residual", "kernel"}, default="residual"
            ``"residual"``: the VIF model ``V V^T + R~`` with ``R~^-1 = A^T A``, A the
            :meth:`factor` of the residual covariance ``k - V V^T + nugget * I``.
            ``"kernel"``: plain Vecchia, ``(A^T A)^-1`` with A the factor of
            ``k + nugget * I``.
        nugget : float, default=0.0
            Noise variance, >= 0 (the model's own nugget is not used: pass it again).
        num_threads : int, default=None
            Threads for the factor (None = ``OMP_NUM_THREADS`` if set, else all usable cores).

        Returns
        -------
        logpdf : float

        Raises
        ------
        TypeError, ValueError
            As :meth:`factor`, and on a y of the wrong shape or with NaN or inf.

        Notes
        -----
        With ``W = A V`` (ordered rows), Woodbury and the determinant lemma give
        ``log det = -2 sum log A_ii + log det(I + W^T W)`` and
        ``y^T Sigma^-1 y = |A y|^2 - z^T (I + W^T W)^-1 z``, ``z = W^T A y``: O(n k m + n m^2).
        With every row conditioning on all its predecessors this is the exact Gaussian log
        density with covariance ``k + nugget * I`` (both choices, up to the inducing jitter in
        ``V``).

        Examples
        --------
        >>> import numpy as np, residual
        >>> X = np.random.default_rng(0).uniform(size=(300, 2))
        >>> kern = residual.Matern(1.5, lengthscale=0.2)
        >>> res = residual.vecchia_neighbors(X, kern, k=10, n_inducing=30)
        >>> y = np.sin(6 * X[:, 0])
        >>> bool(np.isfinite(res.logpdf(y, nugget=1e-2)))
        True
        """
        y = as_float_vector(y, "y", size=self.n_samples)
        covariance, nugget, nt = self._check_factor_args(covariance, nugget, num_threads)
        n = self.n_samples
        data, indices, indptr = self._factor(covariance, nugget, nt)
        ay = _factor.csr_times_dense(data, indptr, indices, y[self.order].reshape(n, 1), 0,
                                     n, nt)[:, 0]
        logdet = -2.0 * np.log(data[indptr[1:] - 1]).sum()      # the diagonal ends each row
        quad = ay @ ay
        if covariance == "residual":
            V = self._residual_model(nt).V
            M, z = np.eye(V.shape[1]), np.zeros(V.shape[1])
            # one BLAS thread for W^T W too: next to the OpenMP loops a threaded BLAS ran
            # up to 20x slower on a busy machine, and its sums may depend on its thread count
            with single_threaded_blas():
                for start in range(0, n, LOGPDF_BLOCK_ROWS):
                    # rows of W = A V, a block at a time: W itself would be another n x m array
                    stop = min(start + LOGPDF_BLOCK_ROWS, n)
                    W = _factor.csr_times_dense(data, indptr, indices, V, start, stop, nt)
                    M += W.T @ W
                    z += W.T @ ay[start:stop]
            chol = scipy.linalg.cho_factor(M, lower=True, check_finite=False)
            logdet += 2.0 * np.log(np.diag(chol[0])).sum()
            quad -= z @ scipy.linalg.cho_solve(chol, z, check_finite=False)
        return float(-0.5 * (self.n_samples * np.log(2.0 * np.pi) + logdet + quad))

    def _check_factor_args(self, covariance, nugget, num_threads):
        if covariance not in COVARIANCES:
            raise ValueError(f"covariance must be one of {COVARIANCES}, got {covariance!r}")
        nugget = check_nugget(nugget)
        if self.kernel is None:
            raise ValueError(f"covariance={covariance!r} needs a kernel: pass one to "
                             "vecchia_neighbors (with metric='euclidean' it is optional)")
        return covariance, nugget, resolve_num_threads(num_threads)

    def _residual_model(self, num_threads):
        if self._model is None and self._make_model is not None:
            self._model = self._make_model(num_threads)
        return self._model

    def _factor(self, covariance, nugget, num_threads):
        """:meth:`factor` on checked arguments, as CSR arrays ``(data, indices, indptr)``
        (int64 indices, which scipy.sparse may narrow when it wraps them)."""
        kernel = self.kernel
        if covariance == "residual":
            model = self._residual_model(num_threads)
            xs, v = model._xs, model.V
        elif self._model is not None:
            xs, v = self._model._xs, None
        else:
            # the same elementwise operations as the model's scaled rows, so the same bits
            xs, v = ResidualCorrelation._scale(self._X, kernel)[self.order], None
        pattern = self.to_csr()
        indptr = pattern.indptr.astype(np.int64, copy=False)
        indices = pattern.indices.astype(np.int64, copy=False)
        min_pivot = DEGENERATE_P_RTOL * (kernel.variance + nugget)
        with single_threaded_blas():
            data, status = _factor.vecchia_factor(kernel, xs, v, indptr, indices, nugget,
                                                  min_pivot, num_threads)
        bad = np.flatnonzero(status)
        if bad.size:
            pos = int(bad[0])
            raise ValueError(
                f"the conditioning block of position {pos} (row {int(self.order[pos])} of X) "
                f"is numerically singular under the {covariance} covariance ({bad.size} "
                f"rows in all): a conditional variance is at or below {min_pivot:.3g}. "
                "Add a nugget (e.g. nugget=1e-6 * variance) or remove duplicate points")
        return data, indices, indptr

    def __repr__(self):
        s = self.stats.get("seconds", {})
        return (f"VecchiaNeighbors(n_samples={self.n_samples}, k={self.k}, "
                f"metric={self.metric!r}, method={self.method!r}, "
                f"n_neighbors={self.stats.get('n_neighbors')}, "
                f"seconds={s.get('total', float('nan')):.3g})")


def vecchia_neighbors(X, kernel=None, k=30, *, n_inducing=None, inducing="random", nugget=0.0,
                      ordering="random", seed=0, metric="residual", method="auto",
                      num_threads=None, progress=None):
    """Order the points and find each one's k nearest predecessors (Vecchia conditioning sets).

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features) or ResidualCorrelation
        Coordinates, or a prebuilt residual model (its rows in their given order; ``kernel``
        must then be None and ``n_inducing`` is ignored; with ``metric="euclidean"`` the
        model's ``X`` is used).
    kernel : residual.RBF or residual.Matern, default=None
        Required for ``metric="residual"`` with coordinates. Optional for
        ``metric="euclidean"``: the search ignores it, but the result keeps it for
        :meth:`VecchiaNeighbors.factor` and :meth:`VecchiaNeighbors.logpdf` (whose residual
        covariance builds the model with ``n_inducing`` and ``seed`` when first needed).
    k : int, default=30
        Conditioning-set size, ``1 <= k <= n_samples``. Row i gets ``min(k, i)`` neighbours,
        then padding.
    n_inducing : int, default=None
        Number of inducing points of the residual model, chosen on the rows as given by
        ``ResidualCorrelation.from_kernel(X, kernel, n_inducing, seed=seed,
        inducing=inducing)``; at most n_samples. None: ``default_n_inducing(n_samples)``,
        i.e. ``min(200, n_samples - 1)`` (at least 1), so small data works without setting it.
    inducing : {"random", "kmeans++"} or array-like, default="random"
        How the residual model chooses its inducing points: passed to
        ``ResidualCorrelation.from_kernel`` (ignored for a prebuilt model; with
        ``metric="euclidean"`` used only by the model the factor builds).
    nugget : float, default=0.0
        Noise variance in the residual correlation, ``rho_ij = C_ij / sqrt((p_i + nugget)
        (p_j + nugget))``: passed to ``ResidualCorrelation.from_kernel``. Ignored for
        ``metric="euclidean"``; a prebuilt model carries its own, so it must stay 0 then.
    ordering : {"random", "natural", "maximin"} or array-like of int, default="random"
        ``"random"``: ``numpy.random.default_rng(seed).permutation(n_samples)``;
        ``"natural"``: the input order; ``"maximin"``:
        ``residual.ordering.maximin_order(X_or_model)`` under the chosen metric; an array:
        an explicit permutation of ``0..n_samples-1`` (position -> original row).
    seed : int, numpy.random.Generator or None, default=0
        Seeds the inducing points and the random ordering. A Generator (advanced by one
        draw) or None (fresh entropy) first draws one int seed, used for both.
    metric : {"residual", "euclidean"}, default="residual"
    method : {"auto", "tree", "brute", "kdtree"}, default="auto"
        ``"brute"``: :func:`residual.brute_force_knn`; ``"tree"``: :class:`residual.CoverTree`
        then ``query(predecessors=True)``; ``"kdtree"`` (Euclidean only):
        :class:`residual.kdtree.KDTree` then ``query(predecessors=True)``. ``"auto"`` picks
        the faster exact path: the k-d tree for Euclidean; for the residual metric, the brute
        force up to 32768 rows, else whichever a pilot measured at run time projects to be
        faster (the brute force timed on its last rows; the tree, built within a budget of
        0.1x the brute force's projection, timed on runs of its depth-first order; see
        residual/_auto.py). ``method`` and ``stats["auto"]`` of the result say what was
        chosen and why. Every method returns the same neighbours.
    num_threads : int, default=None
        Threads (None = ``OMP_NUM_THREADS`` if set, else all usable cores; negative counts
        back from them).
    progress : callable, default=None
        ``progress(stage, done, total)``, called at the start (``done=0``) and end
        (``done=total``) of each stage ``"model"``, ``"ordering"``, ``"build"``, ``"query"``.
        For ``"ordering"`` (maximin) and ``"build"``, ``total`` is ``n_samples`` and ``done``
        counts the points placed or inserted, reported about every 0.1 s.
        For ``"query"``, ``total`` is ``n_samples`` and ``done`` counts the rows answered,
        reported after each of up to 50 row blocks of about equal work. Results do not
        depend on it (a block equals those rows of the whole query, bit for bit).

    Returns
    -------
    result : VecchiaNeighbors
        ``order``, ``neighbors`` and ``distances`` (positions in the ordered sequence),
        ``stats``, ``to_csr()``, and the factor and log density of the approximated GP,
        ``factor()`` and ``logpdf()``.

    Raises
    ------
    TypeError, ValueError
        On a bad argument, before any work starts; the message names it.

    Notes
    -----
    The answer is exact: ``neighbors`` equals ``brute_force_knn(model_ordered, k,
    predecessors=True)`` on the ordered model, padded to k columns.

    Examples
    --------
    >>> import numpy as np, residual
    >>> X = np.random.default_rng(0).standard_normal((500, 2))
    >>> res = residual.vecchia_neighbors(X, residual.RBF(), k=5, n_inducing=50)
    >>> res.neighbors.shape, int(res.neighbors[3, 3])
    ((500, 5), -1)
    """
    call = _Call(_validate(X, kernel, k, n_inducing, ordering, seed, metric, method,
                           num_threads, progress, inducing=inducing, nugget=nugget))
    call.prepare()
    n = call.n
    blocks = call.blocks() if progress is not None else [(0, n)]

    def run():
        parts = []
        for start, stop in blocks:
            parts.append(call.query_rows(call.searcher, call.k, start, stop, call.num_threads))
            if stop < n:
                call.report("query", stop, n)
        return parts

    return call.finish(call.query(run))


class _Call:
    """One :func:`vecchia_neighbors` call, stage by stage. Documented-internal: this is the
    surface residual.dask drives to spread the query stage; nothing else outside this module
    reaches into it.

    ``_Call(args)`` takes arguments checked by :func:`_validate` (:meth:`bind` checks them
    for another caller). :meth:`prepare` runs the model, ordering and build stages; then
    ``searcher`` answers row blocks through :meth:`query_rows` (the tree for
    ``method="tree"`` or ``"kdtree"``, else the ordered model or coordinates: what a
    scale-out ships to workers). :meth:`blocks` cuts the rows, :meth:`query` times the query
    stage around the caller's ``run()`` and :meth:`finish` assembles the result from the
    blocks' parts.
    """

    def __init__(self, args):
        self.t_start = time.perf_counter()
        self.args = args
        self.n, self.k, self.num_threads = args["n"], args["k"], args["num_threads"]
        progress = args["progress"]
        self.report = progress if progress is not None else _no_progress
        self.seconds = {}

    @classmethod
    def bind(cls, caller, X, kernel, k, kwargs):
        """The call of ``vecchia_neighbors(X, kernel, k, **kwargs)`` (its defaults), checked;
        a binding error names ``caller``."""
        try:
            bound = inspect.signature(vecchia_neighbors).bind(X, kernel, k, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{caller}: {exc}") from None
        bound.apply_defaults()
        a = bound.arguments
        return cls(_validate(a["X"], a["kernel"], a["k"], a["n_inducing"], a["ordering"],
                             a["seed"], a["metric"], a["method"], a["num_threads"],
                             a["progress"], inducing=a["inducing"], nugget=a["nugget"]))

    def prepare(self):
        """The stages before the query: model, ordering, build (timed and reported)."""
        args, report, seconds = self.args, self.report, self.seconds
        t = _stage_start(report, "model", 1)
        base = _base_model(args)
        seconds["model"] = _stage_end(report, "model", 1, t)

        # maximin reports the points it has placed; the other orderings are one step
        ordering = args["ordering"]
        total = self.n if isinstance(ordering, str) and ordering == "maximin" else 1
        t = _stage_start(report, "ordering", total)
        self.order = _resolve_order(ordering, base, self.n, args["seed"], self.num_threads,
                                    report)
        self.ordered = _permute(base, self.order)
        del base                        # unless the caller holds it: at 1M rows V is 4 GiB
        seconds["ordering"] = _stage_end(report, "ordering", total, t)

        # the build reports the points inserted; auto's pilot and build count as the build
        t = _stage_start(report, "build", self.n)
        self.method, self.auto = args["method"], None
        if self.method == "auto":
            self.tree, self.auto = _auto.choose(self.ordered, self.k, self.num_threads,
                                                progress=self._report_build)
            self.method = self.auto["method"]
        elif self.method == "tree":
            self.tree = CoverTree(self.ordered, num_threads=self.num_threads,
                                  progress=self._report_build)
        elif self.method == "kdtree":
            self.tree = KDTree(self.ordered, num_threads=self.num_threads)
        else:
            self.tree = None
        seconds["build"] = _stage_end(report, "build", self.n, t)

    def _report_build(self, done, total):
        if done < total:                # the stage's end is reported once, by prepare
            self.report("build", done, total)

    @property
    def searcher(self):
        return self.ordered if self.tree is None else self.tree

    @staticmethod
    def query_rows(searcher, k, start, stop, num_threads):
        """Predecessor kNN of rows ``start..stop-1``: ``(dist, idx, distance_evaluations)``.

        ``searcher`` is :attr:`searcher`. The block equals those rows of the whole query,
        bit for bit, so blocks may be answered in any order, by any process.
        """
        if isinstance(searcher, KDTree):
            dist, idx, evals = searcher._query(None, k, True, (start, stop), num_threads)
        elif isinstance(searcher, CoverTree):
            dist, idx = searcher._query(None, k, True, (start, stop), num_threads)
            evals = int(round(searcher.stats["query"]["distance_evaluations_per_query"]
                              * (stop - start)))
        else:
            metric = (searcher.metric if isinstance(searcher, ResidualCorrelation)
                      else Metric.euclidean(searcher))
            dist, idx = in_sample_rows(metric, k, True, start, stop, num_threads)
            evals = (stop * (stop - 1) - start * (start - 1)) // 2     # pairs j < i, once
        return dist, idx, evals

    def blocks(self, n_blocks=50, min_rows=None):
        """Row blocks of about equal work (see :func:`_query_blocks`)."""
        return _query_blocks(self.n, n_blocks, min_rows=min_rows)

    def query(self, run):
        """The query stage: ``run()`` answers every block (reporting rows done through
        ``report``) and returns their parts in row order."""
        t = _stage_start(self.report, "query", self.n)
        parts = run()
        self.seconds["query"] = _stage_end(self.report, "query", self.n, t)
        return parts

    def finish(self, parts):
        """The VecchiaNeighbors from the blocks' ``(dist, idx, evaluations)`` parts, in row
        order, and the stage times."""
        args, seconds = self.args, self.seconds
        dist = np.concatenate([d for d, _, _ in parts])
        idx = np.concatenate([i for _, i, _ in parts])
        evals = sum(e for _, _, e in parts)
        if self.tree is not None:
            evals += self.tree.stats["distance_evaluations"]
        seconds["total"] = time.perf_counter() - self.t_start
        n_neighbors = int((idx >= 0).sum())
        # the search: build + query, and shipping the searcher to workers when scaled out
        search = seconds["build"] + seconds["query"] + seconds.get("scatter", 0.0)
        stats = {"seconds": seconds, "distance_evaluations": int(evals),
                 "n_neighbors": n_neighbors,
                 "neighbors_per_second": n_neighbors / search if search > 0 else float("inf")}
        if self.auto is not None:
            stats["auto"] = self.auto
        if isinstance(self.ordered, ResidualCorrelation):
            # the float32 screen of the brute force or the tree, as far as this process ran
            # it (not dask's workers): pairs decided in float32 and recomputed in float64
            stats["float32_screen"] = dict(self.ordered.metric.screen_counts)
        # what the factor needs: the ordered model, or the coordinates, kernel and a lazy model
        model = self.ordered if isinstance(self.ordered, ResidualCorrelation) else None
        kernel = args["X"].kernel if args["is_model"] else args["kernel"]
        make_model = None
        if model is None and kernel is not None:
            make_model = functools.partial(_ordered_residual_model, args, self.order)
        return VecchiaNeighbors(self.order, idx, dist, stats, metric=args["metric"],
                                method=self.method, model=model, X=args["coords"],
                                kernel=kernel, make_model=make_model)


# -- validation -----------------------------------------------------------------------------------

def _validate(X, kernel, k, n_inducing, ordering, seed, metric, method, num_threads, progress,
              *, inducing="random", nugget=0.0):
    """Check every argument before any work; return them normalised in a dict."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "kdtree" and metric != "euclidean":
        raise ValueError("method='kdtree' needs metric='euclidean' (a k-d tree splits "
                         "coordinates); use method='brute' or 'tree' for the residual metric")
    model, coords = as_points(X, "X", euclidean=False)
    is_model = model is not None
    if is_model and kernel is not None:
        raise ValueError("kernel must be None when X is a prebuilt ResidualCorrelation "
                         "(the model already holds its kernel)")
    n = coords.shape[0]
    if metric == "euclidean":
        check_euclidean_range(coords, "X")
    if not is_model and (metric == "residual" or kernel is not None):
        if kernel is None:
            raise ValueError("kernel is required for metric='residual' with coordinates "
                             "(e.g. residual.RBF(lengthscale=1.0)); or pass a "
                             "ResidualCorrelation, or use metric='euclidean'")
        if not isinstance(kernel, Kernel):
            raise TypeError("kernel must be a residual kernel (residual.RBF or "
                            f"residual.Matern), got {type(kernel).__name__}")
        kernel.lengthscales(coords.shape[1])             # ARD length vs D, before any work
        n_inducing = (default_n_inducing(n) if n_inducing is None
                      else check_int(n_inducing, "n_inducing", minimum=1, maximum=n))
        inducing = check_inducing(inducing, n, coords.shape[1])
    nugget = check_nugget(nugget)
    if is_model and nugget != 0:
        raise ValueError("nugget must be 0 when X is a prebuilt ResidualCorrelation (build "
                         "the model with from_kernel(..., nugget=...))")
    # as brute_force_knn(predecessors=True): rows are padded, but never past n columns
    k = check_int(k, "k", minimum=1)
    if k > n:
        raise ValueError(f"k = {k} is larger than n_samples = {n}")
    if isinstance(ordering, str):
        if ordering not in ORDERINGS:
            raise ValueError(f"ordering must be one of {ORDERINGS} or a permutation array, "
                             f"got {ordering!r}")
    else:
        ordering = _check_permutation(ordering, n)
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be None or a callable, got {type(progress).__name__}")
    nt = resolve_num_threads(num_threads)
    seed = resolve_seed(seed)          # last: a Generator is drawn from only for valid calls
    if method == "auto" and metric == "euclidean":
        method = "kdtree"               # residual: decided by a pilot (residual/_auto.py)
    return {"X": X, "coords": coords, "is_model": is_model, "kernel": kernel, "n": n, "k": k,
            "n_inducing": n_inducing, "ordering": ordering, "seed": seed, "metric": metric,
            "method": method, "num_threads": nt, "inducing": inducing, "nugget": nugget,
            "progress": progress}


def _check_permutation(ordering, n):
    perm = as_numeric_array(ordering, "ordering", integer=True,
                            what="be a string or an integer permutation array")
    if perm.shape != (n,):
        raise ValueError(f"ordering must be a permutation of 0..{n - 1} with shape ({n},), "
                         f"got shape {perm.shape}")
    perm = perm.astype(np.int64)
    if perm.min() < 0 or perm.max() >= n or np.bincount(perm, minlength=n).max() != 1:
        raise ValueError(f"ordering must be a permutation of 0..{n - 1} (each row exactly once)")
    return perm


# -- stages ---------------------------------------------------------------------------------------

def _base_model(args):
    """The unpermuted model: a ResidualCorrelation, or float64 coordinates for Euclidean."""
    if args["metric"] == "euclidean":
        return args["coords"]
    return _residual_base_model(args)


def _ordered_residual_model(args, order, num_threads):
    """A Euclidean result's residual model, as the residual path would have made it."""
    return _residual_base_model(dict(args, num_threads=num_threads)).take(order)


def _residual_base_model(args):
    """The unpermuted residual model (the one given, or built on the rows as given)."""
    if args["is_model"]:
        return args["X"]
    return ResidualCorrelation.from_kernel(args["coords"], args["kernel"],
                                           n_inducing=args["n_inducing"], seed=args["seed"],
                                           inducing=args["inducing"], nugget=args["nugget"],
                                           num_threads=args["num_threads"])


def _resolve_order(ordering, base, n, seed, num_threads=None, report=None):
    """The permutation for ``ordering``; maximin reports ``("ordering", done, n)`` while it
    runs (the stage's end, ``done == n``, is reported by the caller)."""
    if not isinstance(ordering, str):
        return ordering
    if ordering == "random":
        return np.random.default_rng(seed).permutation(n).astype(np.int64)
    if ordering == "natural":
        return np.arange(n, dtype=np.int64)

    def placed(done, total):
        if report is not None and done < total:
            report("ordering", done, total)

    return maximin_order(base, start=None, num_threads=num_threads, progress=placed)


def _permute(base, order):
    """The model (or coordinates) with its rows in ``order``."""
    if isinstance(base, ResidualCorrelation):
        return base.take(order)
    return np.ascontiguousarray(base[order])


#: Fewest rows in a progress block (smaller blocks would leave threads idle at block ends).
QUERY_BLOCK_MIN_ROWS = 1024


def _query_blocks(n, blocks=50, align=32, min_rows=None):
    """Row blocks of about equal predecessor work (row i scores i pairs).

    For progress reports, and for spreading the query over workers (residual.dask).
    Boundaries sit at n sqrt(j / blocks), on multiples of ``align`` (the brute force's row
    alignment, so no block is widened); blocks under ``min_rows`` rows (None =
    ``QUERY_BLOCK_MIN_ROWS``) are merged.
    """
    if min_rows is None:
        min_rows = QUERY_BLOCK_MIN_ROWS
    cuts = np.sqrt(np.arange(1, blocks) / blocks) * n
    cuts = np.unique(np.round(cuts / align).astype(np.int64) * align)
    out, start = [], 0
    for cut in [int(c) for c in cuts] + [n]:
        if cut - start >= min_rows or cut == n:
            if cut > start:
                out.append((start, cut))
            start = cut
    return out


def _no_progress(stage, done, total):
    pass


def _stage_start(report, stage, total):
    report(stage, 0, total)
    return time.perf_counter()


def _stage_end(report, stage, total, t0):
    seconds = time.perf_counter() - t0
    report(stage, total, total)
    return seconds
