# Exact kNN queries on the cover tree: seconds, and distance evaluations per query (noise-free).
#   cd benchmarks && asv continuous -f 1.1 main HEAD -b bench_query
#   cd benchmarks && asv run --python=same --quick -b bench_query   (editable tree)
import time

import numpy as np

import residual

from .common import harness_points


class TreeQuery:
    number, repeat, warmup_time, timeout = 1, 2, 0, 600
    params = ([8192, 32768], ["euclidean", "residual"], [False, True])
    param_names = ["n", "metric", "predecessors"]

    def setup(self, n, metric, predecessors):
        X = harness_points(n, 3)
        data = X if metric == "euclidean" else residual.ResidualCorrelation.from_kernel(
            X, residual.RBF(), n_inducing=512, seed=0)
        self.tree = residual.CoverTree(data)
        self.k = 30 if metric == "euclidean" else 50

    def time_query(self, n, metric, predecessors):
        self.tree.query(k=self.k, predecessors=predecessors)

    def track_distance_evaluations_per_query(self, n, metric, predecessors):
        self.tree.query(k=self.k, predecessors=predecessors)
        return self.tree.stats["query"]["distance_evaluations_per_query"]

    track_distance_evaluations_per_query.unit = "evaluations"


class ResidualNewPoints:
    """Residual kNN of n / 4 new points: the grouped tree search vs the brute force."""
    number, repeat, warmup_time, timeout = 1, 2, 0, 600
    params = ([32768],)
    param_names = ["n"]

    def setup(self, n):
        self.model = residual.ResidualCorrelation.from_kernel(
            harness_points(n, 3), residual.RBF(), n_inducing=512, seed=0)
        self.tree = residual.CoverTree(self.model)
        self.Y = harness_points(n // 4, 3, seed=1)

    def time_cover_tree(self, n):
        self.tree.query(self.Y, k=50)

    def time_brute_force(self, n):
        residual.brute_force_knn(self.model, 50, Y=self.Y)


class EuclideanAllPoints:
    """Build + all-points query side by side with scipy's cKDTree (the issue's Euclidean
    target is within 2x of it; compare.py runs the full n = 1M case)."""
    number, repeat, warmup_time, timeout = 1, 2, 0, 900
    params = ([262144], [3, 8])
    param_names = ["n", "D"]

    def setup(self, n, D):
        self.X = harness_points(n, D)

    def time_cover_tree(self, n, D):
        residual.CoverTree(self.X).query(k=30)

    def time_ckdtree(self, n, D):
        from scipy.spatial import cKDTree
        cKDTree(self.X).query(self.X, 31, workers=-1)


class ResidualPairCost:
    """Nanoseconds per distance evaluation: the tree's predecessor query against a pair
    inside the brute force's GEMM tiles, on the same rows (issue 12 tracks the ratio; the
    tree wins end to end once its evaluations per query fall below the brute force's n / 2
    by more than this ratio). One thread, so that the ratio is the work's, not the pool's."""
    number, repeat, warmup_time, timeout = 1, 1, 0, 600
    params = ([32768, 131072],)
    param_names = ["n"]
    ROWS = 2048

    def setup(self, n):
        self.model = residual.ResidualCorrelation.from_kernel(
            harness_points(n, 3), residual.RBF(), n_inducing=512, seed=0)
        self.tree = residual.CoverTree(self.model)
        self.tree._layout()

    def _seconds(self, fn):
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    def track_tree_ns_per_evaluation(self, n):
        # a run of the depth-first order, as the full query visits it (a range of row
        # numbers would scatter each group of 64 queries over the data)
        dfs = self.tree._depth_first_order()
        rows = np.ascontiguousarray(dfs[n // 2:n // 2 + self.ROWS])
        seconds = self._seconds(lambda: self.tree._query(None, 30, True, rows, 1))
        evals = self.tree.stats["query"]["distance_evaluations_per_query"] * self.ROWS
        return 1e9 * seconds / evals

    def track_brute_force_ns_per_evaluation(self, n):
        rows = (n - self.ROWS, n)
        seconds = self._seconds(lambda: residual.brute_force_knn(
            self.model, 30, predecessors=True, rows=rows, num_threads=1))
        return 1e9 * seconds / (self.ROWS * (n - self.ROWS / 2))

    track_tree_ns_per_evaluation.unit = "ns"
    track_brute_force_ns_per_evaluation.unit = "ns"
