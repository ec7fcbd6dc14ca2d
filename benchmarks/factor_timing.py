"""Time VecchiaNeighbors.factor (and logpdf) on a Euclidean vecchia_neighbors result.

    python benchmarks/factor_timing.py --n 1000000 --k 30 --m 200 --covariance kernel residual

D = 2 uniform points, Matern 3/2 (lengthscale 0.1), random ordering, neighbours from the
Euclidean cover tree. Prints the seconds of each stage; the pattern (to_csr) is timed on its
own because factor() builds it too.
"""

import argparse
import time

import numpy as np

import residual


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--k", type=int, default=30)
    ap.add_argument("--m", type=int, default=200, help="inducing points (residual)")
    ap.add_argument("--dim", type=int, default=2)
    ap.add_argument("--nugget", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--covariance", nargs="+", default=["kernel", "residual"],
                    choices=["kernel", "residual"])
    ap.add_argument("--logpdf", action="store_true", help="also time logpdf")
    a = ap.parse_args()

    X = np.random.default_rng(0).uniform(size=(a.n, a.dim))
    kern = residual.Matern(1.5, lengthscale=0.1)
    t = time.perf_counter()
    res = residual.vecchia_neighbors(X, kern, k=a.k, n_inducing=a.m, metric="euclidean",
                                     num_threads=a.threads)
    print(f"n={a.n} D={a.dim} k={a.k} m={a.m} threads={a.threads}")
    print(f"neighbours (euclidean tree)   {time.perf_counter() - t:8.2f} s")
    t = time.perf_counter()
    res.to_csr()
    print(f"pattern (to_csr)              {time.perf_counter() - t:8.2f} s")
    if "residual" in a.covariance:
        t = time.perf_counter()
        res.model                       # built on first use after metric="euclidean"
        print(f"residual model (m={a.m})      {time.perf_counter() - t:8.2f} s")
    for cov in a.covariance:
        t = time.perf_counter()
        A = res.factor(cov, nugget=a.nugget, num_threads=a.threads)
        print(f"factor({cov!r:10})           {time.perf_counter() - t:8.2f} s  nnz={A.nnz}")
        if a.logpdf:
            y = np.sin(10 * X[:, 0])
            t = time.perf_counter()
            lp = res.logpdf(y, nugget=a.nugget, covariance=cov, num_threads=a.threads)
            print(f"logpdf({cov!r:10})           {time.perf_counter() - t:8.2f} s  {lp:.6g}")


if __name__ == "__main__":
    main()
