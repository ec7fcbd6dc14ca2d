"""CoverTree: a compressed cover tree built by parallel batch insertion.

The public layer: validation, the batch schedule, timing and the finalise step (covering
radii, subtree minimum index, CSR children). The build itself is in ``_build.pyx``; see its
opening comment for the insertion rule and why batches are exact. The invariant checker is in
``_invariants.py``.
"""

import json
import math
import numbers
import time

import numpy as np

from residual import _blas, _build, _invariants, _persist, _search
from residual.bruteforce import COUNTERS
from residual.model import ResidualCorrelation
from residual._tiles import FLOAT32_MAX_SLACK, Metric, float32_slack_kernel32
from residual._parallel import resolve_num_threads, single_threaded_blas
from residual._validate import (as_points, check_euclidean_range, check_int, check_query,
                                check_precision, check_rows, resolve_chunk_size,
                                resolve_seed)

#: Largest batch inserted at once when ``batch_size`` is None.
DEFAULT_BATCH_SIZE = 512

#: Batch points per traversal work item when ``chunk_size`` is None.
DEFAULT_TRAVERSAL_CHUNK = 8

# Seconds between two progress reports of the build.
_REPORT_EVERY = 0.1

# Extra room in the pruning tests of the build and the search, in distance units. It absorbs
# rounding in the triangle inequality; it can only make a search wider, never wrong. For the
# residual metric it grows with 1/sqrt(min(p + nugget)) (see CoverTree.__init__), from a floor
# of 1e-4 up to 1.
_SLACK_RESIDUAL = 1e-4
_SLACK_EUCLIDEAN_REL = 1e-10


def euclidean_slack(far):
    """The Euclidean slack of a tree whose root is at most `far` from every point: relative
    to the data's scale (the build and maximin's k-d tree both use it)."""
    return _SLACK_EUCLIDEAN_REL * max(far, 1e-300)


class CoverTree(_persist.Persistent):
    """Compressed cover tree (Elkin & Kurlin) over the rows of X or of a residual model.

    Parameters
    ----------
    X_or_model : array-like of shape (n_samples, n_features) or ResidualCorrelation
        Coordinates (Euclidean distance) or a residual-correlation model.
    num_threads : int, default=None
        OpenMP threads (None = ``OMP_NUM_THREADS`` if set, else all usable cores; negative
        counts back from the usable cores). The tree does not depend on it.
    chunk_size : int, default=None
        Batch points per traversal work item (None = ``DEFAULT_TRAVERSAL_CHUNK``).
    batch_size : int, default=None
        Largest batch (None = ``DEFAULT_BATCH_SIZE``).
    seed : int, numpy.random.Generator or None, default=0
        Seeds the insertion order; the first point of the order is the root. A Generator
        (advanced by one draw) or None (fresh entropy) first draws an int seed, kept as
        ``seed``, which rebuilds the same tree.
    schedule : {"doubling", "fixed"}, default="doubling"
        Batch sizes 1, 2, 4, ... up to ``batch_size`` (prefix doubling, Gu et al.) or
        ``batch_size`` throughout.
    progress : callable, default=None
        ``progress(done, total)``: points inserted so far, out of n_samples; called about
        every 0.1 s during the build and once at its end. An exception it raises stops the
        build and propagates (Ctrl-C stops it too).

    Attributes
    ----------
    root : int
    levels : ndarray of int64, shape (n_samples,)
        Level of each node (radius 2^level); for an alias, the level of its node.
    parents : ndarray of int64
        Parent of each node; -1 for the root and for aliases.
    parent_distances : ndarray of float64
        d(node, parent); 0 for the root; for an alias, 0 (its distance to its node).
    alias_of : ndarray of int64
        For a point at distance 0 from an earlier node: that node; else -1.
    radii : ndarray of float64
        Exact covering radius of each node: max distance to its subtree, aliases included.
    min_index : ndarray of int64
        Smallest point index in each node's subtree, aliases included (predecessor queries).
    children_ptr, children : ndarray of int64
        CSR children lists, each ordered by level (highest first), then index.
    stats : dict
        ``seconds`` per stage and counters; see Notes.

    Notes
    -----
    ``stats`` holds only measured values. ``stats["seconds"]`` has ``traversal`` (of which,
    residual only, ``traversal_net``: the batch x net tiles, and ``traversal_children``: the
    tiles of the entered net nodes' children; 0 for Euclidean, where each work item scores
    the net and descends in one loop), ``pairwise``, ``conflict``, ``mis``, ``attach``,
    ``radii`` (keeping the covering radii exact), ``finalise`` and ``total`` (this build,
    not the model's); the counters are ``distance_evaluations`` (and its parts
    ``traversal_evaluations``, ``pairwise_evaluations``, ``radius_evaluations``),
    ``kernel_tiles``, ``kernel_elements``, ``conflict_edges``, ``rounds``, ``batches``,
    ``height`` and ``aliases``.

    :meth:`save` writes the tree arrays (root, levels, parents, parent_distances, alias_of,
    radii, min_index, CSR children and aliases, insertion_order, height), the metric's inputs
    (X for Euclidean; the model's entries under ``model_`` for the residual metric), the
    pruning slack, the build parameters and the numeric ``stats``; pickles carry the same
    entries. :meth:`load` gives the tree its own (new) model, and checks the structure enough
    that no file can make the compiled search read out of bounds (indices in range, children
    lists that match the parents); :meth:`check_invariants` checks the cover-tree rules.
    """

    def __init__(self, X_or_model, *, num_threads=None, chunk_size=None, batch_size=None,
                 seed=0, schedule="doubling", progress=None):
        t_start = time.perf_counter()
        self.model, x = as_points(X_or_model)
        self.residual = self.model is not None
        self._metric = _metric(self.model, x)
        n = self._metric.n
        nt = resolve_num_threads(num_threads)
        chunk = resolve_chunk_size(chunk_size, DEFAULT_TRAVERSAL_CHUNK)
        batch_size = (DEFAULT_BATCH_SIZE if batch_size is None
                      else check_int(batch_size, "batch_size", minimum=1))
        batch_size = min(batch_size, max(n - 1, 1))    # workspaces are batch_size^2
        if schedule not in ("doubling", "fixed"):
            raise ValueError(f"schedule must be 'doubling' or 'fixed', got {schedule!r}")
        if progress is not None and not callable(progress):
            raise TypeError(f"progress must be None or a callable, got {type(progress).__name__}")
        seed = resolve_seed(seed)          # last: a Generator is drawn from only for valid calls

        order = np.random.default_rng(seed).permutation(n)
        root = int(order[0])
        if self.residual:
            root_level = 0                                   # d <= 1 = 2^0 everywhere
            # two float64 evaluations of d^2 = 1 - |C| s_i s_j differ by up to
            # 2 m u variance s_i s_j; near d = 0 that is its square root in d
            m = self.model
            slack = min(1.0, max(_SLACK_RESIDUAL, math.sqrt(
                2 * m.n_inducing * np.finfo(float).eps / 2 * m.kernel.variance)
                * float(m._inv_sqrt_p.max())))
        else:
            far = self._distances(np.full(n, root), np.arange(n), nt).max()
            root_level = _level_at_least(far)
            slack = euclidean_slack(far)

        seconds = dict.fromkeys(("traversal", "pairwise", "conflict", "mis", "attach",
                                 "radii", "finalise"), 0.0)
        # The builder sees Euclidean points renumbered along a space-filling curve, so that
        # nodes near each other in space sit near each other in memory: its descents read
        # the children of nearby nodes and their rows from the same cache lines (1M points
        # in 3-D build ~1.4x faster). Same insertion order and priorities, so the tree is the
        # same up to exact distance ties, which the builder breaks by its own numbering.
        spatial = None if self.residual else _spatial_order(x)
        bmetric, border, broot = self._metric, order, root
        if spatial is not None:
            rank = np.empty(n, dtype=np.intp)
            rank[spatial] = np.arange(n)
            bmetric, border, broot = self._metric.take(spatial), rank[order], int(rank[root])
        builder = _build.TreeBuilder(bmetric, broot, root_level, batch_size, slack)
        batches = _batches(border[1:], batch_size, schedule)
        block = np.empty(batch_size * batch_size)        # reused, viewed as nb x nb
        best_d = np.empty(batch_size)
        best_q = np.empty(batch_size, dtype=np.intp)
        inserted, t_report = 1, time.perf_counter()
        with single_threaded_blas():
            for batch in batches:
                nb = len(batch)
                t = time.perf_counter()
                builder.traverse(batch, best_d[:nb], best_q[:nb], nt, chunk)
                t1 = time.perf_counter()
                blk = block[:nb * nb].reshape(nb, nb)
                builder.pairwise(batch, blk, nt)
                t2 = time.perf_counter()
                builder.resolve(batch, blk, best_d[:nb], best_q[:nb], nt)
                builder.extend_net(batch)
                t3 = time.perf_counter()
                builder.raise_radii(batch, nt)
                seconds["traversal"] += t1 - t
                seconds["pairwise"] += t2 - t1
                seconds["radii"] += time.perf_counter() - t3
                inserted += nb
                if progress is not None and time.perf_counter() - t_report >= _REPORT_EVERY:
                    progress(inserted, n)
                    t_report = time.perf_counter()
        seconds["traversal_net"] = builder.t_net      # traversal's batch x net tiles
        seconds["traversal_children"] = builder.t_kids  # and its visitors x children tiles
        seconds["conflict"] = builder.t_conflict
        seconds["mis"] = builder.t_mis
        seconds["attach"] = builder.t_attach

        t = time.perf_counter()
        self._finalise(builder, root, nt, spatial)
        seconds["finalise"] = time.perf_counter() - t
        seconds["total"] = time.perf_counter() - t_start
        if progress is not None:
            progress(n, n)
        counters = {
            "traversal_evaluations": builder.traversal_evals,
            "pairwise_evaluations": builder.block_evals,
            "radius_evaluations": builder.radius_evals,
            "kernel_tiles": builder.kernel_tiles,
            "kernel_elements": builder.kernel_elements,
            "conflict_edges": builder.conflict_edges // 2,
            "rounds": builder.rounds,
            "batches": len(batches),
            "height": self.height,
            "aliases": int((self.alias_of >= 0).sum()),
        }
        counters["distance_evaluations"] = (counters["traversal_evaluations"]
                                            + counters["pairwise_evaluations"]
                                            + counters["radius_evaluations"])
        self.stats = {"seconds": seconds, **counters}
        self.num_threads, self.batch_size, self.seed, self.schedule = nt, batch_size, seed, schedule
        self._slack = slack

    # -- queries --------------------------------------------------------------------------------

    def query(self, Y=None, k=1, *, predecessors=False, rows=None, num_threads=None,
              chunk_size=None, precision="auto"):
        """Exact k nearest neighbours by best-first search on the tree.

        Same contract as :func:`residual.brute_force_knn`: in-sample queries (``Y=None``)
        exclude the point itself; ``predecessors=True`` keeps only j < i and returns
        ``min(k, i)`` neighbours; rows ascend by (distance, index), padded with inf / -1.

        Parameters
        ----------
        Y : array-like of shape (n_queries, n_features), default=None
            New points (for a residual tree, V and p of the new points come from the model).
        k : int, default=1
        predecessors : bool, default=False
        rows : (start, stop) or range, default=None
            In-sample only: answer only rows ``start..stop-1``, as the full query would.
        num_threads : int, default=None
            As for the build.
        chunk_size : int, default=None
            Queries per parallel work item (None = 16). The residual search answers 64
            consecutive queries in one shared traversal and hands out ``chunk_size // 64``
            such groups per work item (at least one, so one with the default). Results do not
            depend on it.
        precision : {"auto", "float32", "float64"}, default="auto"
            As for :func:`residual.brute_force_knn` (residual trees; a Euclidean tree is always
            float64): with float32, each tree node's dot products with its queries are made
            in float32 and bound its key with a proven error bound; only the candidates that
            the bounds cannot rule out are computed in float64, at the end. The answers are
            those of float64 (the rows of p ~ jitter, whose bound is loose, stay float64).

        Returns
        -------
        dist : ndarray of shape (n_queries, k), float64
        idx : ndarray of shape (n_queries, k), int64

        Notes
        -----
        ``stats["query"]`` records the last call: seconds, distance evaluations per query and
        the float32 screen's counters (as ``brute_force_knn(..., return_stats=True)``'s, in
        pairs of a query and a tree node, whose aliases it evaluates with it; they are also
        added to the model's ``metric.screen_counts``).
        Distances are evaluated on a breadth-first copy of the tree (built on the first query
        and kept). For the residual metric, groups of neighbouring queries share one
        traversal, so that each row of V is read from memory once per group; each pair's key
        is known within a proven bound (float64, or float32 with ``precision``), and the
        candidates that the bounds cannot rule out are scored with the brute force's
        arithmetic at the end, so the answer is :func:`residual.brute_force_knn`'s bit for
        bit wherever dgemm's summation order can be reproduced (``_search.pyx``, "bounded
        search"). On the standard harness the tree beats the brute force for all points and
        new points, and for ``predecessors=True`` from about 50k points (docs/benchmarks.md).
        """
        n = self.n_samples
        dim = self.model.n_features if self.residual else self._metric.dim
        Y, k = check_query(Y, k, predecessors, n, dim, euclidean=not self.residual)
        start, stop = check_rows(rows, n, Y is None)
        check_precision(precision)
        return self._query(Y, k, bool(predecessors), (start, stop),
                           resolve_num_threads(num_threads), resolve_chunk_size(chunk_size, 16),
                           precision)

    def _query(self, Y, k, predecessors, rows, nt, chunk=16, precision="auto"):
        """:meth:`query` on checked arguments: new points Y, or None for the in-sample rows
        ``rows = (start, stop)``, or for the rows of an int64 array (answered in its order,
        so neighbouring rows should be neighbours: residual/_auto.py's pilot); ``nt``
        threads."""
        t0 = time.perf_counter()
        n = self.n_samples
        in_sample = Y is None
        if in_sample and not isinstance(rows, tuple):
            row_ids = rows
            queries = self._metric.take(row_ids)
            visit = np.arange(row_ids.size, dtype=np.int64)
        elif in_sample:  # the tree's depth-first order: neighbouring queries share cache lines
            start, stop = rows
            row_ids = np.arange(start, stop, dtype=np.int64)
            queries = self._metric.take(slice(start, stop))
            visit = self._depth_first_order()
            if (start, stop) != (0, n):
                visit = visit[(visit >= start) & (visit < stop)] - start
        else:           # new points along a space-filling curve, for the same reasons
            row_ids = np.empty(0, dtype=np.int64)
            queries = (self.model._query_metric(Y, nt) if self.residual
                       else Metric.euclidean(Y))
            visit = _spatial_order(queries.x)
            visit = np.arange(queries.n) if visit is None else visit
            visit = visit.astype(np.int64)
        nq = queries.n
        with single_threaded_blas():
            bounded = self._bounded(queries, in_sample, precision)
            dist = np.empty((nq, k))
            idx = np.empty((nq, k), dtype=np.int64)
            evals, screened, recomputed = _search.knn(
                self._layout(), queries, in_sample, predecessors, row_ids, (dist, idx), visit,
                (nt, chunk), bounded)
        counts = {"pairs": int(evals.sum()), "screened_float32": int(screened.sum()),
                  "recomputed_float64": int(recomputed.sum())}
        counts["float64_pairs"] = (counts["pairs"] - counts["screened_float32"]
                                   - counts["recomputed_float64"])
        for name in COUNTERS:
            self._metric.screen_counts[name] = (self._metric.screen_counts.get(name, 0)
                                                + counts[name])
        self.stats["query"] = {"seconds": time.perf_counter() - t0,
                               "distance_evaluations_per_query":
                                   float(evals.mean()) if nq else 0.0,
                               "float32": bool(bounded and bounded[4]), **counts}
        return dist, idx

    def _bounded(self, queries, in_sample, precision):
        """_search.knn's ``bounded`` argument (its "bounded search"): () for a Euclidean tree
        or where dgemm's summation order is not reproduced (the residual answers are then
        the tree's own float64 keys), else the norms of the queries and of the search
        layout, the tree's rows, dgemm's blocking and, with the float32 screen (see
        ``precision``; the rule is the brute force's, ``Metric.float32_pays``), the float32
        rows, the bound's terms and the queries whose own rows make it loose."""
        metric = self._metric
        chain = _blas.dgemm_chain(metric.m) if self.residual else (0, 0)
        if not chain[0]:
            return ()
        layout = self._layout().metric
        pnorm, qnorm = layout.row_norms(), queries.row_norms()
        float32 = ()
        if (precision != "float64" and metric.float32_safe()
                and (precision == "float32" or metric.float32_pays())
                and (in_sample or queries.float32_safe())):
            pv32, _ = layout.float32_rows()
            # in-sample queries read their float32 rows from the layout's copy
            qv32 = (np.empty((0, metric.m), np.float32) if in_sample
                    else queries.float32_rows()[0])
            # the float32 screen's bound, widened for its float32 kernel values
            slack = float32_slack_kernel32(metric.m, max(pnorm.max(initial=0.0),
                                                         qnorm.max(initial=0.0)),
                                           self.model.kernel._code, self.model.kernel.variance)
            # a row's own part of the pair error, e_i^2 as in Metric.float32_pays: above the
            # rule's limit its pairs are computed in float64 (the rows of p ~ jitter)
            exact = (slack[0] * qnorm ** 2 * queries.s ** 2 > FLOAT32_MAX_SLACK).view(np.uint8)
            float32 = (qv32, pv32, slack, exact)
        return qnorm, pnorm, metric, chain, float32

    # -- finalise -------------------------------------------------------------------------------

    def _finalise(self, builder, root, nt, spatial=None):
        level, parent, pdist, alias_of, inserted, radii = builder.arrays_out()
        n = level.shape[0]
        if spatial is not None:                 # back to the caller's numbering
            level, pdist, radii = (_unpermute(a, spatial) for a in (level, pdist, radii))
            parent, alias_of = (_unpermute(a, spatial, ids=True) for a in (parent, alias_of))
            inserted = spatial[inserted]
        aliases = np.nonzero(alias_of >= 0)[0]
        level[aliases] = level[alias_of[aliases]]
        self.root, self.levels, self.parents, self.radii = root, level, parent, radii
        self.parent_distances, self.alias_of = pdist, alias_of
        self.insertion_order = inserted

        # height: the longest parent chain (pointer jumping, one NumPy pass per level)
        depth = np.zeros(n, dtype=np.int64)
        cur = np.where(alias_of >= 0, -1, parent)
        while (cur >= 0).any():
            depth += cur >= 0
            cur = np.where(cur >= 0, parent[np.maximum(cur, 0)], -1)
        self.height = int(depth.max()) if n else 0

        # subtree minimum index: children have lower levels, so sweep levels upward
        min_index = np.arange(n)
        np.minimum.at(min_index, alias_of[aliases], aliases)
        nodes = np.nonzero((alias_of < 0) & (parent >= 0))[0]
        for lev in np.unique(level[nodes]):
            grp = nodes[level[nodes] == lev]
            np.minimum.at(min_index, parent[grp], min_index[grp])
        self.min_index = min_index

        self.aliases_ptr, self.aliases, self.children_ptr, self.children = _csr(
            level, parent, alias_of)

    def _layout(self):
        """The tree renumbered breadth-first, as the search reads it (built once, cached)."""
        if getattr(self, "_search_layout", None) is None:
            nodes = [np.array([self.root], dtype=np.int64)]
            ptr, kids = self.children_ptr, self.children
            while True:                      # one level of the breadth-first order at a time
                f = nodes[-1]
                counts = ptr[f + 1] - ptr[f]
                if not counts.sum():
                    break
                starts = np.repeat(ptr[f] - np.cumsum(counts) + counts, counts)
                nodes.append(kids[starts + np.arange(counts.sum())])
            order = np.concatenate(nodes)
            layout = _search.SearchLayout(self, order, self._metric.take(order), self._slack)
            if self.residual:
                layout.metric.row_norms()   # the bounded search's, made with the layout
            self._search_layout = layout
        return self._search_layout

    def _depth_first_order(self):
        """Every point, in depth-first order of the tree (aliases right after their node)."""
        if getattr(self, "_dfs", None) is None:
            self._dfs = _search.depth_first_order(
                self.root, *(np.ascontiguousarray(a, dtype=np.int64) for a in (
                    self.children_ptr, self.children, self.aliases_ptr, self.aliases)))
        return self._dfs

    def _distances(self, a, b, nt=1):
        return _build.pair_distances(self._metric, np.asarray(a, dtype=np.int64),
                                     np.asarray(b, dtype=np.int64), nt)

    @property
    def n_samples(self):
        return self.levels.shape[0]

    def __repr__(self):
        data = (f"model={self.model!r}" if self.residual
                else f"n_samples={self.n_samples}, n_features={self._metric.dim}")
        return (f"CoverTree(metric={'residual' if self.residual else 'euclidean'!r}, {data}, "
                f"height={self.height}, seed={self.seed})")

    # -- persistence (save, load and pickling: residual/_persist.py) -------------------------------

    _FORMAT = _persist.TREE_FORMAT

    def _state(self):
        """The entries describing this tree (residual/_persist.py adds the header)."""
        state = {"metric": "residual" if self.residual else "euclidean", "root": self.root,
                 "height": self.height, "slack": self._slack, "num_threads": self.num_threads,
                 "batch_size": self.batch_size, "seed": self.seed, "schedule": self.schedule,
                 "stats": json.dumps(_plain_numbers(self.stats))}
        state.update((key, getattr(self, key)) for key in _INDEX_ARRAYS + _DISTANCE_ARRAYS
                     + _CSR_ARRAYS + ("insertion_order",))
        if self.residual:
            state.update(("model_" + key, value) for key, value in self.model._state().items())
        else:
            state["X"] = self._metric.x
        return state

    def _restore(self, reader):
        """Fill this (new) object from a :class:`residual._persist.Reader`, checking it."""
        self.residual = reader.text("metric", ("euclidean", "residual")) == "residual"
        x = None
        if self.residual:
            self.model = ResidualCorrelation.__new__(ResidualCorrelation)
            self.model._restore(reader.prefixed("model_"))
        else:
            self.model, x = None, reader.array("X", np.float64, (None, None))
            if x.size == 0:
                raise ValueError(f"entry {reader.name('X')} is empty (shape {x.shape})")
            check_euclidean_range(x, f"entry {reader.name('X')}")
        self._metric = _metric(self.model, x)
        self._restore_structure(reader, self._metric.n)
        self._slack = reader.number("slack")
        if self._slack < 0:
            raise ValueError(f"entry {reader.name('slack')} is {self._slack}, must be >= 0")
        self.height = reader.integer("height", minimum=0)
        self.num_threads = reader.integer("num_threads", minimum=1)
        self.batch_size = reader.integer("batch_size", minimum=1)
        self.seed = reader.integer("seed", minimum=0)
        self.schedule = reader.text("schedule", ("doubling", "fixed"))
        self.stats = json.loads(reader.text("stats"))
        if not isinstance(self.stats, dict):
            raise ValueError(f"entry {reader.name('stats')} is not a JSON object")

    def _restore_structure(self, reader, n):
        """The tree arrays, checked so that the compiled search stays in bounds."""
        self.root = reader.integer("root", minimum=0, maximum=n - 1)
        for key in _INDEX_ARRAYS:
            low = 0 if key == "min_index" else -1     # levels are any integers
            arr = reader.array(key, np.int64, (n,))
            setattr(self, key, arr if key == "levels" else reader.in_range(key, arr, low, n))
        for key in _DISTANCE_ARRAYS:
            setattr(self, key, reader.array(key, np.float64, (n,)))
            if (getattr(self, key) < 0).any():
                raise ValueError(f"entry {key!r} has negative distances")
        _check_links(self.root, self.levels, self.parents, self.alias_of)
        # the CSR lists are a function of parents, alias_of and levels: a file whose lists
        # differ (a node listed twice would overflow the search's frontier) is refused
        for key, want in zip(_CSR_ARRAYS, _csr(self.levels, self.parents, self.alias_of)):
            if not np.array_equal(reader.array(key, np.int64, (None,)), want):
                raise ValueError(f"entry {key!r} does not match parents, alias_of and levels")
            setattr(self, key, want)
        n_nodes = int((self.alias_of < 0).sum())
        self.insertion_order = reader.in_range(
            "insertion_order", reader.array("insertion_order", np.int64, (n_nodes,)), 0, n)

    # -- invariants -----------------------------------------------------------------------------

    def check_invariants(self, *, pairwise=None, tol=None):
        """Check the compressed-cover-tree rules I0-I7 (ALGORITHMS.md section 2) in float64.

        Parameters
        ----------
        pairwise : bool, default=None
            Check separation (I4) over all node pairs, O(n^2); None = only when n <= 4000.
        tol : float, default=None
            Absolute tolerance on squared distances (None: 1e-12, times the squared root
            radius for Euclidean). For the residual metric each pair also gets the float64
            resolution of d^2 = 1 - |C| s_i s_j: two evaluations of C = k - V_i . V_j can
            differ by 2 m u variance (u the unit roundoff), scaled by s_i s_j =
            1/sqrt((p_i + s2)(p_j + s2)) (s2 the model's nugget), which is ~1e-7 when
            p ~ 1e-6 and s2 = 0.

        Raises
        ------
        AssertionError
            Naming the broken rule and the nodes that break it.
        """
        _invariants.check_invariants(self, pairwise, tol)


# the tree arrays as saved (residual/_persist.py); levels ... min_index have one entry per point
_INDEX_ARRAYS = ("levels", "parents", "alias_of", "min_index")
_DISTANCE_ARRAYS = ("parent_distances", "radii")
_CSR_ARRAYS = ("aliases_ptr", "aliases", "children_ptr", "children")


def _metric(model, x):
    """The compiled metric: the model's own, or a Euclidean one over coordinates x."""
    return Metric.euclidean(x) if model is None else model.metric


def _check_links(root, level, parent, alias_of):
    """Refuse parent/alias links that are not a tree rooted at ``root`` (ValueError)."""
    node = alias_of < 0
    if not node[root] or parent[root] != -1:
        raise ValueError(f"root {root} must be a node without a parent")
    if (parent[~node] != -1).any() or not node[alias_of[~node]].all():
        raise ValueError("aliases must have no parent and point at a node")
    child = np.nonzero(node)[0]
    child = child[child != root]
    if (parent[child] < 0).any() or not node[parent[child]].all():
        raise ValueError("every node but the root must have a node as parent")
    # levels fall strictly from parent to child, so following parents cannot cycle
    if (level[parent[child]] <= level[child]).any():
        raise ValueError("a node's level is not below its parent's level")


def _plain_numbers(stats):
    """``stats`` with only its (nested) numbers, as Python ints and floats for JSON."""
    out = {}
    for key, value in stats.items():
        if isinstance(value, dict):
            out[str(key)] = _plain_numbers(value)
        elif isinstance(value, (numbers.Integral, np.bool_)):
            out[str(key)] = int(value)
        elif isinstance(value, numbers.Real):
            out[str(key)] = float(value)
    return out


def _csr(level, parent, alias_of):
    """(aliases_ptr, aliases, children_ptr, children): CSR lists per node.

    Aliases by index; children highest level first, then by index.
    """
    n = level.shape[0]
    aliases = np.nonzero(alias_of >= 0)[0]
    nodes = np.nonzero((alias_of < 0) & (parent >= 0))[0]
    al = aliases[np.argsort(alias_of[aliases], kind="stable")]
    aliases_ptr = np.concatenate([[0], np.cumsum(np.bincount(alias_of[al], minlength=n))])
    kids = nodes[np.lexsort((nodes, -level[nodes], parent[nodes]))]
    children_ptr = np.concatenate([[0], np.cumsum(np.bincount(parent[kids], minlength=n))])
    return (aliases_ptr.astype(np.int64), al.astype(np.int64),
            children_ptr.astype(np.int64), kids.astype(np.int64))


def _spatial_order(x, max_dim=16):
    """A permutation of the rows of x along a Morton (Z-order) curve, or None.

    Coordinates are quantised to a grid of 2^b cells per axis (b*dim <= 63 bits) over their
    bounding box and the bits interleaved, a byte at a time through a table that spreads a
    byte's bits dim places apart. None when the points have too many dimensions for a curve
    to keep neighbours together (dim > max_dim), fewer than two rows, or coordinates that
    overflowed (residual query points far beyond the lengthscale).
    """
    n, dim = x.shape
    if n < 2 or dim > max_dim or not np.isfinite(x).all():
        return None
    bits = min(21, 63 // dim)
    top = np.abs(x).max(axis=0)
    x = x / np.where(top > 0, top, 1.0)            # in [-1, 1]: hi - lo cannot overflow
    lo, hi = x.min(axis=0), x.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    scaled = (x - lo) / span * float(2 ** bits)        # in [0, 2^bits]
    cells = np.minimum(scaled, 2 ** bits - 1, out=scaled).astype(np.uint64)
    byte = np.arange(256, dtype=np.uint64)
    spread = np.zeros(256, dtype=np.uint64)
    for i in range(8):
        spread |= ((byte >> np.uint64(i)) & np.uint64(1)) << np.uint64(i * dim)
    code = np.zeros(n, dtype=np.uint64)
    for t in range(dim):                            # axis 0 takes the most significant bit
        for b in range((bits + 7) // 8):
            part = spread[(cells[:, t] >> np.uint64(8 * b)) & np.uint64(255)]
            code |= part << np.uint64(8 * b * dim + dim - 1 - t)
    return np.argsort(code)            # deterministic; equal codes are neighbours anyway


def _unpermute(a, spatial, ids=False):
    """An array indexed by the builder's numbering, indexed (and, with ids, valued) by the
    caller's: builder row r is caller row spatial[r]; -1 stays -1."""
    out = np.empty_like(a)
    out[spatial] = a
    if ids:
        out = np.where(out >= 0, spatial[np.maximum(out, 0)], out)
    return out


def _level_at_least(d):
    """The smallest integer L with 2^L >= d (0 for d == 0)."""
    if d <= 0:
        return 0
    f, e = math.frexp(d)
    return e - 1 if f == 0.5 else e


def _batches(rest, batch_size, schedule):
    """Split the insertion order (root removed) into batches."""
    out, i, size = [], 0, 1 if schedule == "doubling" else batch_size
    while i < rest.size:
        out.append(np.ascontiguousarray(rest[i:i + size], dtype=np.intp))
        i += size
        size = min(2 * size, batch_size)
    return out
