"""How often does the float32 screen's proven bound decide "not a neighbour"?

    python benchmarks/float32_bound.py --n 8192 --regime harness
    python benchmarks/float32_bound.py --n 8192 --regime "matern32 l=0.1 square"

For sampled query rows (all points, k neighbours), the residual covariance is known from the
float64 kernel and a float32 product S = fl32(V_i) . fl32(V_j) to within the bound of the
brute force's screen (_tiles.pyx "float32 screen", float32_slack), so each key lies in
[lo, hi]. "best case" counts the pairs whose lo exceeds the row's exact k-th key (the screen
knowing the answer); the brute force's own figure follows (stats of
``brute_force_knn(precision="float32")``, which only knows the k-th smallest hi so far, and
defers rows the bound cannot separate to float64 tiles).
"""

import argparse

import numpy as np

import residual
from residual import _tiles
from compare import PRECISION_REGIMES


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=8192)
    p.add_argument("--regime", choices=sorted(PRECISION_REGIMES), default="harness")
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--rows", type=int, default=400)
    args = p.parse_args(argv)
    coords, kernel, m = PRECISION_REGIMES[args.regime]
    X = coords(np.random.default_rng(0), args.n)
    model = residual.ResidualCorrelation.from_kernel(X, kernel(), n_inducing=m, seed=0)
    d, _, stats = residual.brute_force_knn(model, args.k, precision="float32",
                                           return_stats=True)
    kth_key = d[:, -1] ** 2
    metric = model.metric
    V32, norms = metric.float32_rows()
    s = metric.s
    a, b, t = _tiles.float32_slack(m, norms.max())
    decided = total = 0
    for i in np.random.default_rng(1).choice(args.n, args.rows, replace=False):
        kern = _tiles.kernel_matrix(model.kernel._code, model.kernel.variance,
                                    metric.x[i:i + 1], metric.xt)[0]
        c = np.abs(kern - (V32 @ V32[i]).astype(np.float64))
        slack = a * norms[i] * norms + b * (c + np.abs(kern)) + t
        key_low = 1.0 - np.minimum(1.0, (c + slack) * s * s[i])
        key_low[i] = -np.inf                         # itself: not a pair
        decided += int(np.sum(key_low > kth_key[i]))
        total += args.n - 1
    print(f"{args.regime}: n={args.n}, m={m}, k={args.k}, median p "
          f"{np.median(model.p_diag):.2g}; the float32 bound decides {100 * decided / total:.1f} %"
          f" of pairs knowing the exact k-th key (best case); the brute force's screen decided "
          f"{100 * stats['screened_float32'] / stats['pairs']:.1f} % (hit rate "
          f"{100 * stats['hit_rate']:.1f} % of the pairs it screened)")


if __name__ == "__main__":
    main()
