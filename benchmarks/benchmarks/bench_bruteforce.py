# Exact brute-force kNN (the oracle and small-n path).
#   cd benchmarks && asv continuous -f 1.1 main HEAD -b bench_bruteforce
#   cd benchmarks && asv run --python=same --quick -b bench_bruteforce  (editable tree)
import residual

from .common import harness_points


class ResidualBruteForce:
    number, repeat, warmup_time = 1, 3, 0     # each call is long enough to time alone
    params = ([8192], [3, 8], [128, 512], [50], [1, 2], [64, 128, 256])
    param_names = ["n", "D", "m", "k", "num_threads", "chunk_size"]

    def setup(self, n, D, m, k, num_threads, chunk_size):
        X = harness_points(n, D)
        self.model = residual.ResidualCorrelation.from_kernel(X, residual.RBF(), n_inducing=m)

    def time_predecessors(self, n, D, m, k, num_threads, chunk_size):
        residual.brute_force_knn(self.model, k, predecessors=True, num_threads=num_threads,
                                 chunk_size=chunk_size)

    def time_all_points(self, n, D, m, k, num_threads, chunk_size):
        residual.brute_force_knn(self.model, k, num_threads=num_threads, chunk_size=chunk_size)

    def peakmem_all_points(self, n, D, m, k, num_threads, chunk_size):
        residual.brute_force_knn(self.model, k, num_threads=num_threads, chunk_size=chunk_size)


class EuclideanBruteForce:
    number, repeat, warmup_time = 1, 3, 0
    params = ([16384], [3, 8], [30], [1, 2], [128])
    param_names = ["n", "D", "k", "num_threads", "chunk_size"]

    def setup(self, n, D, k, num_threads, chunk_size):
        self.X = harness_points(n, D)

    def time_all_points(self, n, D, k, num_threads, chunk_size):
        residual.brute_force_knn(self.X, k, num_threads=num_threads, chunk_size=chunk_size)
