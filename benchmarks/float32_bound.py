"""How often could a float32 sgemm tile, with a proven error bound, decide "not a neighbour"?

    python benchmarks/float32_bound.py --n 8192 --dim 3      # standard-harness kernel
    python benchmarks/float32_bound.py --n 8192 --dim 8

For sampled query rows, the residual covariance is C = k(x_i, x_j) - V_i . V_j with the kernel
in float64 and V_i . V_j from float32 inputs. A float32 dot product of length m with
float32-rounded inputs is off by at most (gamma_m + 2u) |V_i| |V_j| (gamma_m = m u / (1 - m u),
u = 2^-24), so rho = |C| s_i s_j is known to within that times s_i s_j. A pair is decided when
even the smallest possible key 1 - min(1, rho + err) exceeds the row's exact k-th key (the best
case: a real search only knows a looser threshold). The rest would need float64 recomputation.
"""

import argparse

import numpy as np

import residual


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=8192)
    p.add_argument("--dim", type=int, default=3)
    p.add_argument("--m", type=int, default=512)
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--rows", type=int, default=400)
    args = p.parse_args(argv)
    X = np.random.default_rng(0).standard_normal((args.n, args.dim))
    model = residual.ResidualCorrelation.from_kernel(X, residual.RBF(1.0),
                                                     n_inducing=args.m, seed=0)
    d, _ = residual.brute_force_knn(model, args.k)
    kth_key = d[:, -1] ** 2
    V, s = model.V, model._inv_sqrt_p
    V32 = V.astype(np.float32)
    u = 2.0 ** -24
    bound = args.m * u / (1 - args.m * u) + 2 * u
    norms = np.linalg.norm(V, axis=1)
    decided = total = 0
    for i in np.random.default_rng(1).choice(args.n, args.rows, replace=False):
        kern = np.exp(-0.5 * ((X - X[i]) ** 2).sum(axis=1))       # RBF, lengthscale 1
        rho = np.abs(kern - (V32 @ V32[i]).astype(np.float64)) * s * s[i]
        err = bound * norms * norms[i] * s * s[i]
        key_low = 1.0 - np.minimum(1.0, rho + err)
        decided += int(np.sum(key_low > kth_key[i]))
        total += args.n - 1
    print(f"n={args.n}, D={args.dim}, m={args.m}, k={args.k}: median p "
          f"{np.median(model.p_diag):.2g}; the float32 bound decides 'not a neighbour' for {100 * decided / total:.1f} % of "
          f"pairs (knowing the exact k-th distance)")


if __name__ == "__main__":
    main()
