"""Demo (python -m residual / the `residual` command): the standard-harness model and its
Vecchia neighbours by the exact brute force, with timings."""

import argparse
import sys
import time

import numpy as np


def main(argv=None):
    import residual

    parser = argparse.ArgumentParser(
        prog="residual",
        description="Residual-correlation Vecchia neighbours on the standard harness "
                    "(X ~ N(0, I), RBF lengthscale 1, seeded inducing rows).")
    parser.add_argument("--n", type=int, default=32768, help="points (default 32768)")
    parser.add_argument("--dim", type=int, default=3, help="dimensions (default 3)")
    parser.add_argument("--n-inducing", type=int, default=512, help="inducing points (512)")
    parser.add_argument("--k", type=int, default=50, help="neighbours (default 50)")
    parser.add_argument("--threads", type=int, default=None, help="threads (default: all)")
    parser.add_argument("--show", type=int, default=3, help="rows to print (default 3)")
    args = parser.parse_args(argv)
    try:
        X = np.random.default_rng(0).standard_normal((args.n, args.dim))
        t0 = time.perf_counter()
        model = residual.ResidualCorrelation.from_kernel(
            X, residual.RBF(lengthscale=1.0), n_inducing=args.n_inducing, seed=0,
            num_threads=args.threads)
        t1 = time.perf_counter()
        dist, idx = residual.brute_force_knn(model, args.k, predecessors=True,
                                             num_threads=args.threads)
        t2 = time.perf_counter()
    except (TypeError, ValueError) as exc:
        print(f"residual: error: {exc}", file=sys.stderr)
        return 2
    print(f"model: n={args.n}, D={args.dim}, m={args.n_inducing}, median p = "
          f"{np.median(model.p_diag):.3g}, {int(model.degenerate.sum())} degenerate")
    rows = [r for r in (args.k + 1, args.n // 2, args.n - 1)[: args.show] if r < args.n]
    for r in rows:
        kk = min(args.k, r)
        print(f"row {r}: nearest predecessors {idx[r, :5].tolist()} ... "
              f"distances {np.round(dist[r, :5], 4).tolist()} ... (k = {kk})")
    print(f"model {t1 - t0:.2f} s, exact predecessor kNN (brute force) {t2 - t1:.2f} s, "
          f"{args.n / (t2 - t1):,.0f} rows/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
