# The float32 screen (issue 14): float64 only against precision="auto", brute force and tree,
# predecessor kNN, in the regimes where the screen pays and on the harness where it must not
# cost anything. Compare the two precisions of one regime and method (the ratio is the
# speed-up; benchmarks/compare.py --case precision prints it directly).
#   cd benchmarks && asv run --python=same --quick -b bench_precision  (editable tree)
import numpy as np

import residual

# name: (coordinates from a seeded Generator and n, kernel, m)
REGIMES = {
    "harness": (lambda g, n: g.standard_normal((n, 3)), residual.RBF(1.0), 512),
    "matern32-square": (lambda g, n: g.random((n, 2)), residual.Matern(1.5, lengthscale=0.1),
                        256),
    "matern32-5cube": (lambda g, n: g.random((n, 5)), residual.Matern(1.5, lengthscale=0.3),
                       500),
}


class Precision:
    number, repeat, warmup_time = 1, 3, 0
    params = ([16384], list(REGIMES), ["brute", "tree"], ["float64", "auto"])
    param_names = ["n", "regime", "method", "precision"]

    def setup(self, n, regime, method, precision):
        coords, kernel, m = REGIMES[regime]
        X = coords(np.random.default_rng(0), n)
        self.model = residual.ResidualCorrelation.from_kernel(X, kernel, n_inducing=m, seed=0)
        self.tree = residual.CoverTree(self.model) if method == "tree" else None

    def time_predecessors(self, n, regime, method, precision):
        if self.tree is None:
            residual.brute_force_knn(self.model, 30, predecessors=True, precision=precision)
        else:
            self.tree.query(k=30, predecessors=True, precision=precision)
