"""How much of the tree can an exact kNN search skip? An upper bound on the pruning, measured.

For a sample of query rows, the exact distances to every point are computed (a brute-force
tile), so the final k-th neighbour distance tau is known in advance: the best any exact
search can do. A node is evaluated when its parent is expanded and the parent-distance test
|d(q, u) - pd(c)| - R(c) > tau does not skip it; it is expanded when d(q, c) - R(c) <= tau
(and, for predecessor queries, its subtree holds an index below the query's). Real searches
learn tau as they go and evaluate more.

    python benchmarks/pruning_bound.py                  # standard harness, 150 queries
    python benchmarks/pruning_bound.py --n 8192 --dim 8

Compare the evaluated counts with the brute force's: n - 1 per query for all points, and
i per row i (n / 2 on average) for predecessors.
"""

import argparse

import numpy as np

import residual
from residual import _tiles


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=32768)
    p.add_argument("--dim", type=int, default=3)
    p.add_argument("--m", type=int, default=512)
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--queries", type=int, default=150)
    args = p.parse_args(argv)
    n, k = args.n, args.k
    X = np.random.default_rng(0).standard_normal((n, args.dim))
    model = residual.ResidualCorrelation.from_kernel(X, residual.RBF(), n_inducing=args.m)
    tree = residual.CoverTree(model)
    q = np.random.default_rng(1).choice(n, args.queries, replace=False)
    C = _tiles.residual_cov_matrix(0, 1.0, model._xs[q], model.V[q], model._xs, model.V)
    s = model._inv_sqrt_p
    D = np.sqrt(1 - np.minimum(1, np.abs(C) * s[q][:, None] * s[None, :]))
    D[np.arange(q.size), q] = np.inf
    par, R, pd, lo = tree.parents, tree.radii, tree.parent_distances, tree.min_index
    nodes = tree.insertion_order[1:]                  # parents come before their children
    net = int((par == tree.root).sum())
    print(f"n={n}, D={args.dim}, m={args.m}, k={k}: {int((tree.alias_of < 0).sum())} nodes, "
          f"height {tree.height}, root's children (the net) {net}")
    for pred in (False, True):
        evaluated, brute, taus = [], [], []
        for r, i in enumerate(q):
            d = np.where(np.arange(n) < i, D[r], np.inf) if pred else D[r]
            if np.isfinite(d).sum() < k:
                continue
            tau = np.sort(d)[k - 1]
            expand = (D[r] - R <= tau) & ((lo < i) if pred else True)
            expanded = np.zeros(n, bool)
            expanded[tree.root] = True
            count = 1
            for c in nodes:
                u = par[c]
                if not expanded[u] or abs(D[r, u] - pd[c]) - R[c] > tau:
                    continue
                count += 1
                expanded[c] = expand[c]
            evaluated.append(count)
            brute.append(i if pred else n - 1)
            taus.append(tau)
        ev, br = np.array(evaluated), np.array(brute)
        print(f"{'predecessors' if pred else 'all points':13s} evaluated per query: median "
              f"{np.median(ev):.0f}, p90 {np.percentile(ev, 90):.0f}; brute force {br.mean():.0f} "
              f"on average; ratio of totals {ev.sum() / br.sum():.2f}; tau median "
              f"{np.median(taus):.3f}")


if __name__ == "__main__":
    main()
