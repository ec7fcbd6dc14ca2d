"""One row of ``compare.py --case scale``, in its own process so that its peak RSS is its own.

    python benchmarks/scale_worker.py N [--k 30] [--m 512] [--sample 2048] [--threads T]

Prints one JSON object. The harness (X ~ N(0, I_3), seed 0; RBF, lengthscale 1; m inducing
rows), predecessor kNN of every row in the given (random) order:

- model, build: timed in full; the build includes the search's breadth-first copy of the tree
  (which the first query would otherwise make).
- tree query: in full up to ``--full-tree`` rows; above, on 8 runs of 256 consecutive points of
  the tree's depth-first order (the order the full query visits them in), spread over it, and
  projected to n rows ("projected"), after one untimed run.
- brute force: in full up to ``--full-brute`` rows; above, on about ``--sample`` rows in seeded
  blocks of consecutive rows (two chunks per thread each), projected by the pairs j < i they
  cover.
- rows identical: the tree's and the brute force's answers on those sampled blocks (all rows
  when both ran in full), indices and order.
"""

import argparse
import json
import resource
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

import residual
from residual.bruteforce import in_sample_rows
from residual._parallel import resolve_num_threads


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("n", type=int)
    p.add_argument("--k", type=int, default=30)
    p.add_argument("--m", type=int, default=512)
    p.add_argument("--sample", type=int, default=2048)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--full-tree", type=int, default=131072)
    p.add_argument("--full-brute", type=int, default=32768)
    a = p.parse_args(argv)
    n, k, nt = a.n, a.k, resolve_num_threads(a.threads)
    out = {"n": n, "k": k, "m": a.m, "threads": nt}

    X = np.random.default_rng(0).standard_normal((n, 3))
    t = time.perf_counter()
    model = residual.ResidualCorrelation.from_kernel(X, residual.RBF(1.0), n_inducing=a.m,
                                                     seed=0)
    out["model_s"] = time.perf_counter() - t
    del X

    t = time.perf_counter()
    tree = residual.CoverTree(model, num_threads=nt)
    tree._layout()              # the search's copy of the tree, made once (by the first query)
    tree._depth_first_order()
    out["build_s"] = time.perf_counter() - t
    out["build_evals_per_point"] = tree.stats["distance_evaluations"] / n

    if n <= a.full_tree:
        t = time.perf_counter()
        _, tree_idx = tree.query(k=k, predecessors=True, num_threads=nt)
        out["tree_query_s"] = time.perf_counter() - t
        out["tree_projected"] = False
    else:
        dfs = tree._depth_first_order()
        starts = np.linspace(0, n - 256, 10).astype(int)[1:-1]
        # one untimed run first: what a query pays once (dgemm's order probed, first touch of
        # the workspaces) must not be multiplied by n / the sampled rows
        tree._query(None, k, True, np.ascontiguousarray(dfs[:256]), nt)
        seconds, evals = 0.0, 0.0
        for s in starts:
            t = time.perf_counter()
            tree._query(None, k, True, np.ascontiguousarray(dfs[s:s + 256]), nt)
            seconds += time.perf_counter() - t
            evals += tree.stats["query"]["distance_evaluations_per_query"]
        out["tree_query_s"] = seconds * n / (256 * len(starts))
        out["tree_projected"] = True
        out["tree_evals_per_query"] = evals / len(starts)
    if not out["tree_projected"]:
        out["tree_evals_per_query"] = tree.stats["query"]["distance_evaluations_per_query"]

    # blocks of two brute-force chunks per thread, so that the sampled brute force runs as
    # parallel as the full one
    block = 2 * residual.bruteforce.DEFAULT_CHUNK_SIZE * nt
    nblocks = max(a.sample // block, 1)
    starts = np.sort(np.random.default_rng(0).choice(n // block, nblocks, replace=False)
                     * block)
    sampled = np.concatenate([np.arange(s, s + block) for s in starts])
    if n <= a.full_brute:
        t = time.perf_counter()
        _, brute_idx = residual.brute_force_knn(model, k, predecessors=True, num_threads=nt)
        out["brute_s"] = time.perf_counter() - t
        out["brute_projected"] = False
    else:
        pairs, seconds, parts = 0, 0.0, []
        with threadpool_limits(1, "blas"):
            for s in starts:
                t = time.perf_counter()
                parts.append(in_sample_rows(model.metric, k, True, int(s), int(s) + block,
                                            nt)[1])
                seconds += time.perf_counter() - t
                pairs += ((s + block) * (s + block - 1) - s * (s - 1)) // 2
        out["brute_s"] = seconds * (n * (n - 1) // 2) / pairs
        out["brute_projected"] = True
    if not (out["tree_projected"] or out["brute_projected"]):
        same = (tree_idx == brute_idx).all(axis=1)
    else:                       # on the sampled blocks
        brute_rows = np.concatenate(parts) if out["brute_projected"] else brute_idx[sampled]
        tree_rows = np.concatenate([tree._query(None, k, True, (int(s), int(s) + block), nt)[1]
                                    for s in starts])
        same = (tree_rows == brute_rows).all(axis=1)
    out["rows_compared"] = int(same.size)
    out["rows_identical"] = float(same.mean())
    out["v_bytes"] = n * a.m * 8
    out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
