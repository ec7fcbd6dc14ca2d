# Tile throughput: kernel tiles and residual-covariance tiles.
#   cd benchmarks && asv continuous -f 1.1 main HEAD -b bench_tiles
#   cd benchmarks && asv run --python=same --quick -b bench_tiles      (editable tree)
import numpy as np

import residual
from residual import _tiles

from .common import harness_points


class KernelTile:
    params = ([4096], [3, 8], ["rbf", "matern12", "matern52"], [1, 2])
    param_names = ["n", "D", "kernel", "num_threads"]

    def setup(self, n, D, kernel, num_threads):
        self.kern = {"rbf": residual.RBF(), "matern12": residual.Matern(0.5),
                     "matern52": residual.Matern(2.5)}[kernel]
        X = harness_points(n, D)
        self.xs = np.ascontiguousarray(X)
        self.xt = np.ascontiguousarray(X[:512].T)

    def time_kernel_matrix(self, n, D, kernel, num_threads):
        # n x 512 kernel block, the shape of k(X, U) in model construction
        _tiles.kernel_matrix(self.kern._code, 1.0, self.xs, self.xt, num_threads)


class ResidualCovTile:
    params = ([256, 1024], [128, 512])
    param_names = ["rows", "m"]

    def setup(self, rows, m):
        X = harness_points(4096, 3)
        self.model = residual.ResidualCorrelation.from_kernel(X, residual.RBF(), n_inducing=m)

    def time_residual_cov(self, rows, m):
        mdl = self.model
        _tiles.residual_cov_matrix(0, 1.0, mdl._xs[:rows], mdl.V[:rows], mdl._xs[:1024],
                                   mdl.V[:1024])


class Model:
    params = ([8192, 32768], [128, 512])
    param_names = ["n", "m"]

    def setup(self, n, m):
        self.X = harness_points(n, 3)

    def time_from_kernel(self, n, m):
        residual.ResidualCorrelation.from_kernel(self.X, residual.RBF(), n_inducing=m)

    def peakmem_from_kernel(self, n, m):
        residual.ResidualCorrelation.from_kernel(self.X, residual.RBF(), n_inducing=m)
