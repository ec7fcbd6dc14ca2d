# Cover-tree build: seconds, and distance evaluations per inserted point (noise-free).
#   cd benchmarks && asv continuous -f 1.1 main HEAD -b bench_build
#   cd benchmarks && asv run --python=same --quick -b bench_build   (editable tree)
import residual

from .common import harness_points


class TreeBuild:
    number, repeat, warmup_time, timeout = 1, 2, 0, 600
    params = ([4096, 16384, 65536], [3, 8], ["euclidean", "residual"])
    param_names = ["n", "D", "metric"]

    def setup(self, n, D, metric):
        X = harness_points(n, D)
        self.data = X if metric == "euclidean" else residual.ResidualCorrelation.from_kernel(
            X, residual.RBF(), n_inducing=512, seed=0)

    def time_build(self, n, D, metric):
        residual.CoverTree(self.data)

    def track_distance_evaluations_per_point(self, n, D, metric):
        return residual.CoverTree(self.data).stats["distance_evaluations"] / n

    track_distance_evaluations_per_point.unit = "evaluations"


class TreeBuildSchedule:
    number, repeat, warmup_time = 1, 2, 0
    params = ([16384], ["doubling", "fixed"], [256, 512, 1024])
    param_names = ["n", "schedule", "batch_size"]

    def setup(self, n, schedule, batch_size):
        self.model = residual.ResidualCorrelation.from_kernel(harness_points(n, 3),
                                                              residual.RBF(), n_inducing=512)

    def time_build(self, n, schedule, batch_size):
        residual.CoverTree(self.model, schedule=schedule, batch_size=batch_size)
