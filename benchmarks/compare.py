"""Named benchmark cases run side by side in one process, printed as a table of times and ratios.

    python benchmarks/compare.py                       # every case, standard harness
    python benchmarks/compare.py --case bruteforce-vs-gemm --n 8192 --repeat 3

This machine is shared and noisy: each case alternates its contenders within every repeat and
reports the best time of each, so ratios come from one run. Absolute seconds are not the point.
"""

import argparse
import os
import platform
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

import residual
from residual._parallel import resolve_num_threads


def harness(n, dim=3, m=512, kernel=None):
    """The standard harness of DESIGN.md section 6 (n, D, m adjustable)."""
    X = np.random.default_rng(0).standard_normal((n, dim))
    t = time.perf_counter()
    model = residual.ResidualCorrelation.from_kernel(X, kernel or residual.RBF(1.0),
                                                     n_inducing=m, seed=0)
    return X, model, time.perf_counter() - t


def best_of(contenders, repeat):
    """Run each (name, fn) `repeat` times, alternating; best seconds per name."""
    best = {name: float("inf") for name, _ in contenders}
    for _ in range(repeat):
        for name, fn in contenders:
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def case_bruteforce_vs_gemm(args):
    """Our residual brute force vs the bare float64 GEMM it must do (NumPy V_block @ V.T).

    The GEMM runs over the same query blocks (chunk_size rows) and, for predecessors, only the
    columns before each block's end: exactly the products our tiles compute. Target: <= 1.3x.
    """
    _, model, t_model = harness(args.n, args.dim, args.m)
    nt = resolve_num_threads(args.threads)
    V, n, chunk = model.V, args.n, args.chunk_size
    rows = []
    for pred in (True, False):
        def gemm():
            with threadpool_limits(limits=nt, user_api="blas"):
                for q0 in range(0, n, chunk):
                    q1 = min(n, q0 + chunk)
                    V[q0:q1] @ V[: (q1 - 1 if pred else n)].T

        def ours():
            residual.brute_force_knn(model, args.k, predecessors=pred, num_threads=nt,
                                     chunk_size=chunk)

        best = best_of([("gemm", gemm), ("ours", ours)], args.repeat)
        label = "predecessors" if pred else "all points"
        rows.append((f"residual brute force, {label}", best["ours"], best["gemm"],
                     best["ours"] / best["gemm"]))
    print(f"\nbruteforce-vs-gemm: n={n}, D={args.dim}, m={args.m}, k={args.k}, threads={nt}, "
          f"chunk={chunk}, model {t_model:.2f} s, best of {args.repeat}")
    print(f"{'case':40s} {'ours s':>9s} {'GEMM s':>9s} {'ours/GEMM':>10s}")
    for name, a, b, r in rows:
        print(f"{name:40s} {a:9.3f} {b:9.3f} {r:10.3f}")
    return rows


CASES = {
    "bruteforce-vs-gemm": case_bruteforce_vs_gemm,
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", action="append", choices=sorted(CASES),
                   help="case to run (repeatable; default: all)")
    p.add_argument("--n", type=int, default=32768)
    p.add_argument("--dim", type=int, default=3)
    p.add_argument("--m", type=int, default=512)
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--chunk-size", type=int, default=residual.bruteforce.DEFAULT_CHUNK_SIZE)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    print(f"residual {residual.__version__}, Python {platform.python_version()}, "
          f"{platform.machine()}, {os.cpu_count()} CPUs, numpy {np.__version__}")
    for name in args.case or sorted(CASES):
        CASES[name](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
