"""Named benchmark cases run side by side in one process, printed as a table of times and ratios.

    python benchmarks/compare.py                       # every case, standard harness (slow)
    python benchmarks/compare.py --case bruteforce-vs-gemm --n 8192 --repeat 3

This machine is shared and noisy: each case alternates its contenders within every repeat and
reports the best time of each, so ratios come from one run. Absolute seconds are not the point.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np
from threadpoolctl import threadpool_limits

import residual
from residual._parallel import resolve_num_threads


def harness(n, dim=3, m=512, kernel=None):
    """The standard harness: X ~ N(0, I_D) (seed 0), RBF with lengthscale 1, m inducing rows."""
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


def covertreex_python():
    """The Python 3.12 interpreter that has covertreex (env COVERTREEX_PYTHON), or None."""
    exe = os.environ.get("COVERTREEX_PYTHON")
    return exe if exe and os.path.exists(exe) else None


def run_covertreex(model, engine, k=None, rows=None):
    """Time covertreex on our V and p in its own interpreter (see covertreex_worker.py)."""
    exe = covertreex_python()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "data.npz")
        np.savez(path, X=model.X, V=model.V, p=model.p_diag,
                 rows=np.zeros(0) if rows is None else rows)
        argv = [exe, os.path.join(os.path.dirname(__file__), "covertreex_worker.py"), path,
                engine] + ([] if k is None else [str(k)])
        out = subprocess.run(argv, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def case_build(args):
    """Tree build vs our brute-force predecessor kNN vs covertreex's build, in one run.

    Targets: build (after the model) < 1/4 of our brute force, and faster than covertreex
    rust-hilbert's build.
    """
    _, model, t_model = harness(args.n, args.dim, args.m)
    nt = resolve_num_threads(args.threads)
    stats = {}

    def ours():
        stats["tree"] = residual.CoverTree(model, num_threads=nt).stats

    def brute():
        residual.brute_force_knn(model, args.k, predecessors=True, num_threads=nt)

    peer = {}

    def hilbert():
        peer["build"] = min(peer.get("build", np.inf),
                            run_covertreex(model, "rust-hilbert")["build_s"])

    contenders = [("ours", ours), ("brute", brute)]
    if covertreex_python():
        contenders.append(("covertreex", hilbert))
    best = best_of(contenders, args.repeat)
    s = stats["tree"]
    print(f"\nbuild: n={args.n}, D={args.dim}, m={args.m}, threads={nt}, model {t_model:.2f} s, "
          f"best of {args.repeat}")
    print(f"{'contender':42s} {'seconds':>9s} {'ratio to ours':>14s}")
    print(f"{'CoverTree build (after the model)':42s} {best['ours']:9.3f} {1.0:14.2f}")
    print(f"{'brute-force predecessor kNN, k=' + str(args.k):42s} {best['brute']:9.3f} "
          f"{best['brute'] / best['ours']:14.2f}")
    if "build" in peer:
        print(f"{'covertreex 0.4.5 rust-hilbert build':42s} {peer['build']:9.3f} "
              f"{peer['build'] / best['ours']:14.2f}")
    else:
        print("covertreex: not run (set COVERTREEX_PYTHON to a Python 3.12 with covertreex)")
    print(f"distance evaluations per point {s['distance_evaluations'] / args.n:.0f} "
          f"(traversal {s['traversal_evaluations'] / args.n:.0f}, pairwise "
          f"{s['pairwise_evaluations'] / args.n:.0f}, radii {s['radius_evaluations'] / args.n:.0f})"
          f", height {s['height']}, batches {s['batches']}")
    print("stage seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in s["seconds"].items()))


def case_build_scaling(args):
    """Build seconds and evaluations per point at n, 4n, 16n (n = --n / 4 by default)."""
    nt = resolve_num_threads(args.threads)
    base = max(args.n // 4, 1024)
    print(f"\nbuild-scaling: D={args.dim}, m={args.m}, threads={nt}, best of {args.repeat}")
    print(f"{'metric':10s} {'n':>8s} {'build s':>9s} {'x per doubling':>15s} {'evals/point':>12s}")
    for metric in ("residual", "euclidean"):
        prev = None
        for n in (base, 4 * base, 16 * base):
            X, model, _ = (harness(n, args.dim, args.m) if metric == "residual"
                           else (np.random.default_rng(0).standard_normal((n, args.dim)),
                                 None, 0))
            data = model if metric == "residual" else X
            stats = {}

            def build():
                stats["s"] = residual.CoverTree(data, num_threads=nt).stats

            t = best_of([("b", build)], args.repeat)["b"]
            per = "" if prev is None else f"{(t / prev) ** 0.5:15.2f}"
            print(f"{metric:10s} {n:8d} {t:9.3f} {per:>15s} "
                  f"{stats['s']['distance_evaluations'] / n:12.0f}")
            prev = t


def case_query(args):
    """Tree queries vs the brute force in each mode, one run each, with agreement.

    Predecessors and all points on the indexed points; "new points" are n / 4 seeded points
    drawn like the harness. On the residual harness the tree is still slower than the brute
    force (README, Status); this case tracks by how much.
    """
    _, model, t_model = harness(args.n, args.dim, args.m)
    nt = resolve_num_threads(args.threads)
    t = time.perf_counter()
    tree = residual.CoverTree(model, num_threads=nt)
    t_build = time.perf_counter() - t
    print(f"\nquery: n={args.n}, D={args.dim}, m={args.m}, k={args.k}, threads={nt}, "
          f"model {t_model:.2f} s, build {t_build:.2f} s")
    print(f"{'mode':14s} {'tree s':>9s} {'brute s':>9s} {'tree/brute':>11s} "
          f"{'evals/query':>12s} {'rows identical':>15s}")
    Y = np.random.default_rng(1).standard_normal((args.n // 4, args.dim))
    for mode, kw in (("predecessors", dict(predecessors=True)), ("all points", {}),
                     ("new points", dict(Y=Y))):
        t = time.perf_counter()
        d, i = tree.query(k=args.k, num_threads=nt, **kw)
        t_tree = time.perf_counter() - t
        t = time.perf_counter()
        db, ib = residual.brute_force_knn(model, args.k, num_threads=nt, **kw)
        t_brute = time.perf_counter() - t
        same = np.mean((i == ib).all(axis=1)) * 100
        print(f"{mode:14s} {t_tree:9.2f} {t_brute:9.2f} {t_tree / t_brute:11.2f} "
              f"{tree.stats['query']['distance_evaluations_per_query']:12.0f} {same:14.2f}%")


VARIANTS = {
    "harness": dict(dim=3, m=512, kernel=lambda: residual.RBF(1.0)),
    # nearly flat tree (all pairs ~1 apart): our tree query is timed on sampled row blocks
    "D=8": dict(dim=8, m=512, kernel=lambda: residual.RBF(1.0), sample_tree=True),
    "matern52": dict(dim=3, m=512, kernel=lambda: residual.Matern(nu=2.5, lengthscale=1.0)),
    "m=128,l=0.3": dict(dim=3, m=128, kernel=lambda: residual.RBF(0.3)),
}
COVERTREEX_ENGINES = ("rust-hilbert", "rust-natural")


def _recall(idx, ref):
    """Percent of the oracle's neighbours (padding excluded) that idx also returns."""
    hit = sum(len(np.intersect1d(a[a >= 0], b[b >= 0])) for a, b in zip(idx, ref))
    return 100.0 * hit / max(int((ref >= 0).sum()), 1)


def _same_rows(idx, ref, ordered=True):
    """Percent of rows equal to the oracle's (as sets of indices when not ordered)."""
    if not ordered:
        idx, ref = np.sort(idx, axis=1), np.sort(ref, axis=1)
    return float(np.mean((idx == ref).all(axis=1)) * 100)


def _tree_sampled(tree, k, nt, sample, block=32):
    """Our tree's predecessor query on seeded row blocks (sample rows in all), projected to n.

    Returns (projected seconds, evaluations per query, idx of the sampled rows, those rows).
    """
    n = tree.n_samples
    starts = np.random.default_rng(0).choice(max(n // block, 1), max(sample // block, 1),
                                             replace=False) * block
    parts, evals, seconds = [], 0.0, 0.0
    for a in np.sort(starts):
        b = min(a + block, n)
        t = time.perf_counter()
        parts.append(tree.query(k=k, predecessors=True, rows=(a, b), num_threads=nt)[1])
        seconds += time.perf_counter() - t
        evals += tree.stats["query"]["distance_evaluations_per_query"] * (b - a)
    sel = np.concatenate([np.arange(a, min(a + block, n)) for a in np.sort(starts)])
    return seconds * n / len(sel), evals / len(sel), np.concatenate(parts), sel


def case_table(args):
    """Issue 4's table: Vecchia predecessor kNN (all points, k) per variant, model + build +
    query, ours vs our brute force vs covertreex engines, with agreement to the oracle.

    covertreex answers a seeded sample of --sample rows (and our tree, for the D=8 variant,
    seeded 32-row blocks); those query times are projected to n and marked *. covertreex's
    agreement compares index sets (it may order ties differently); recall is the share of
    the oracle's neighbours returned.
    """
    nt = resolve_num_threads(args.threads)
    n, k = args.n, args.k
    print(f"\ntable: predecessor kNN of all points, n={n}, k={k}, threads={nt}; "
          f"covertreex on {args.sample} sampled rows, projected (*)")
    print(f"{'variant':12s} {'contender':24s} {'model s':>8s} {'build s':>8s} {'query s':>9s} "
          f"{'total s':>9s} {'evals/q':>8s} {'rows same':>10s} {'recall':>7s}")
    for name in args.variant or list(VARIANTS):
        spec = VARIANTS[name]
        _, model, t_model = harness(n, spec["dim"], spec["m"], spec["kernel"]())
        t = time.perf_counter()
        _, ref = residual.brute_force_knn(model, k, predecessors=True, num_threads=nt)
        t_brute = time.perf_counter() - t
        rows = [("brute force (ours)", t_model, 0.0, t_brute, (n - 1) / 2, 100.0, 100.0, "")]
        t = time.perf_counter()
        tree = residual.CoverTree(model, num_threads=nt)
        t_build = time.perf_counter() - t
        if spec.get("sample_tree"):
            t_query, ev, idx, sel = _tree_sampled(tree, k, nt, args.sample)
            mark, ref_rows = "*", ref[sel]
        else:
            t = time.perf_counter()
            _, idx = tree.query(k=k, predecessors=True, num_threads=nt)
            t_query = time.perf_counter() - t
            ev, mark, ref_rows = tree.stats["query"]["distance_evaluations_per_query"], "", ref
        rows.append(("CoverTree (ours)", t_model, t_build, t_query, ev,
                     _same_rows(idx, ref_rows), _recall(idx, ref_rows), mark))
        sample = np.sort(np.random.default_rng(0).choice(n, min(args.sample, n), replace=False))
        for engine in args.engine or COVERTREEX_ENGINES if covertreex_python() else ():
            out = run_covertreex(model, engine, k, sample)
            got = np.full((len(sample), k), -1, dtype=np.int64)
            theirs = np.asarray(out["idx"], dtype=np.int64).reshape(len(sample), -1)[:, :k]
            got[:, :theirs.shape[1]] = theirs
            got[got >= sample[:, None]] = -1       # predecessors only; padding as ours
            rows.append((f"covertreex {engine}", t_model, out["build_s"],
                         out["query_s"] * n / len(sample), float("nan"),
                         _same_rows(got, ref[sample], ordered=False),
                         _recall(got, ref[sample]), "*"))
        for who, tm, tb, tq, ev, same, rec, mark in rows:
            print(f"{name:12s} {who:24s} {tm:8.2f} {tb:8.2f} {tq:8.2f}{mark or ' '} "
                  f"{tm + tb + tq:8.2f}{mark or ' '} {ev:8.0f} {same:9.1f}% {rec:6.1f}%")
    if not covertreex_python():
        print("covertreex: not run (set COVERTREEX_PYTHON to a Python 3.12 with covertreex)")


def case_euclidean(args):
    """All-points Euclidean kNN (k=30 by default here) at n = --euclid-n, D = 3 and 8: ours
    (KDTree, and CoverTree; build + query) vs scipy cKDTree(workers=threads) and scikit-learn
    KDTree (build + query)."""
    from residual.kdtree import KDTree
    from scipy.spatial import cKDTree
    nt = resolve_num_threads(args.threads)
    n, k = args.euclid_n, args.euclid_k
    print(f"\neuclidean: all points, n={n}, k={k}, threads={nt} (sklearn KDTree queries on "
          f"one thread)")
    print(f"{'D':>3s} {'contender':24s} {'build s':>8s} {'query s':>8s} {'total s':>8s} "
          f"{'/ cKDTree':>9s} {'identical':>10s}")
    for dim in args.euclid_dims:
        X = np.random.default_rng(0).standard_normal((n, dim))
        res = {}

        def timed(name, build, query):
            t = time.perf_counter()
            obj = build()
            t1 = time.perf_counter()
            idx = query(obj)
            res[name] = (t1 - t, time.perf_counter() - t1, idx)

        def report(who):
            tb, tq, idx = res[who]
            ref, base = res["cKDTree"][2], sum(res["cKDTree"][:2])
            print(f"{dim:3d} {who:24s} {tb:8.2f} {tq:8.2f} {tb + tq:8.2f} "
                  f"{(tb + tq) / base:9.2f} {_same_rows(idx, ref):9.1f}%", flush=True)

        # each row is printed when it is done: a slow contender cut short loses only its row
        timed("cKDTree", lambda: cKDTree(X),
              lambda t: t.query(X, k + 1, workers=nt)[1][:, 1:])
        report("cKDTree")
        if "ours" in args.euclid_contenders:
            timed("KDTree (ours)", lambda: KDTree(X, num_threads=nt),
                  lambda t: t.query(k=k, num_threads=nt)[1])
            report("KDTree (ours)")
        if "covertree" in args.euclid_contenders:
            timed("CoverTree (ours)", lambda: residual.CoverTree(X, num_threads=nt),
                  lambda t: t.query(k=k, num_threads=nt)[1])
            report("CoverTree (ours)")
        if "sklearn" in args.euclid_contenders:
            try:
                from sklearn.neighbors import KDTree
                timed("sklearn KDTree", lambda: KDTree(X),
                      lambda t: t.query(X, k + 1)[1][:, 1:])
                report("sklearn KDTree")
            except ImportError:
                print("scikit-learn not installed: its row is skipped")


def case_overheads(args):
    """End-to-end overheads, one run: maximin_order (both metrics) vs one all-points
    predecessor query on the same data, and vecchia_neighbors end to end vs the same steps by
    hand."""
    from residual.ordering import maximin_order
    nt = resolve_num_threads(args.threads)
    n, k = args.n, args.k
    X, model, t_model = harness(n, args.dim, args.m)
    print(f"\noverheads: n={n}, D={args.dim}, m={args.m}, k={k}, threads={nt}, "
          f"model {t_model:.2f} s")
    print(f"{'metric':10s} {'maximin s':>10s} {'pred. query s':>14s} {'ratio':>7s} "
          f"{'evals/point':>12s}   (query: brute force for residual, tree build + query "
          f"for Euclidean)")
    for metric, data in (("residual", model), ("euclidean", X)):
        t = time.perf_counter()
        _, stats = maximin_order(data, num_threads=nt, return_stats=True)
        t_max = time.perf_counter() - t
        t = time.perf_counter()
        if metric == "residual":
            residual.brute_force_knn(model, k, predecessors=True, num_threads=nt)
        else:
            residual.CoverTree(X, num_threads=nt).query(k=k, predecessors=True,
                                                        num_threads=nt)
        t_q = time.perf_counter() - t
        evals = stats.get("distance_evaluations", float("nan")) / n
        print(f"{metric:10s} {t_max:10.2f} {t_q:14.2f} {t_max / t_q:7.2f} {evals:12.0f}")

    def by_hand():                      # what vecchia_neighbors does, written out
        order = np.random.default_rng(0).permutation(n)
        m = residual.ResidualCorrelation.from_kernel(X[order], residual.RBF(1.0),
                                                     n_inducing=args.m, seed=0)
        residual.brute_force_knn(m, k, predecessors=True, num_threads=nt)

    def vecchia():
        residual.vecchia_neighbors(X, residual.RBF(1.0), k, n_inducing=args.m,
                                   num_threads=nt)

    best = best_of([("hand", by_hand), ("vecchia", vecchia)], args.repeat)
    print(f"vecchia_neighbors {best['vecchia']:.2f} s vs by hand (order, model, brute-force "
          f"predecessor kNN) {best['hand']:.2f} s: ratio {best['vecchia'] / best['hand']:.3f}")


#: euclidean-pipeline: the sizes and dimensions it runs, and the rows checked per run.
PIPELINE_SIZES = (10 ** 5, 10 ** 6)
PIPELINE_DIMS = (2, 3)
PIPELINE_SAMPLE = 1000


def _predecessor_rows_ref(Xo, rows, k):
    """Brute-force predecessor kNN of the given positions of Xo: (len(rows), k) indices
    ascending by (distance, index), padded with -1."""
    out = np.full((len(rows), k), -1, dtype=np.int64)
    for r, i in enumerate(rows):
        d = ((Xo[:i] - Xo[i]) ** 2).sum(1)
        keep = np.lexsort((np.arange(i), d))[:k]
        out[r, :keep.size] = keep
    return out


def _filter_to_predecessors(nbrs, k):
    """Rows of all-points neighbours (self included, ascending) cut to the earlier positions:
    the first min(k, i) with j < i, padded with -1 (short where fewer were among them)."""
    n = nbrs.shape[0]
    out = np.full((n, k), -1, dtype=np.int64)
    pred = nbrs < np.arange(n)[:, None]
    rank = np.cumsum(pred, axis=1) - 1
    r, c = np.nonzero(pred & (rank < k))
    out[r, rank[r, c]] = nbrs[r, c]
    return out


def case_euclidean_pipeline(args):
    """The Euclidean Vecchia pipeline at n = 1e5 and 1e6, D = 2 and 3, X uniform on the unit
    square / cube, k = --euclid-k: ours (maximin_order, then vecchia_neighbors with that
    ordering: its default k-d tree sets, and with --euclid-contenders covertree also
    method="tree") against cKDTree and scikit-learn, which have no maximin ordering: they get
    ours and find the sets by filtering to predecessors: query k + 1 neighbours of every
    point and keep the earlier ones (inexact where fewer than min(k, i) predecessors are
    among them). "rows exact": of PIPELINE_SAMPLE seeded rows, the percent equal to brute
    force."""
    from scipy.spatial import cKDTree
    from residual.ordering import maximin_order
    nt = resolve_num_threads(args.threads)
    k = args.euclid_k
    print(f"\neuclidean-pipeline: k={k}, threads={nt}, one run each; ordering s is "
          f"maximin_order's (ours) in every row")
    print(f"{'n':>8s} {'D':>2s} {'contender':32s} {'ordering s':>10s} {'sets s':>8s} "
          f"{'total s':>8s} {'rows exact':>10s}")
    for n in PIPELINE_SIZES:
        for dim in PIPELINE_DIMS:
            X = np.random.default_rng(0).uniform(size=(n, dim))
            t = time.perf_counter()
            order = maximin_order(X, num_threads=nt)
            t_order = time.perf_counter() - t
            Xo = X[order]
            rows = np.sort(np.random.default_rng(1).choice(n, min(PIPELINE_SAMPLE, n),
                                                           replace=False))
            ref = _predecessor_rows_ref(Xo, rows, k)

            def report(who, t_sets, idx):
                exact = 100.0 * np.mean((idx[rows] == ref).all(axis=1))
                print(f"{n:8d} {dim:2d} {who:32s} {t_order:10.2f} {t_sets:8.2f} "
                      f"{t_order + t_sets:8.2f} {exact:9.1f}%", flush=True)

            methods = [("kdtree", "ours (vecchia_neighbors)")]
            if "covertree" in args.euclid_contenders:
                methods.append(("tree", "ours, method='tree' (CoverTree)"))
            for method, who in methods:
                t = time.perf_counter()
                res = residual.vecchia_neighbors(X, k=k, metric="euclidean", ordering=order,
                                                 method=method, num_threads=nt)
                report(who, time.perf_counter() - t, res.neighbors)
            t = time.perf_counter()
            nbrs = cKDTree(Xo).query(Xo, k + 1, workers=nt)[1]
            report("cKDTree k+1, filtered", time.perf_counter() - t,
                   _filter_to_predecessors(nbrs, k))
            if "sklearn" not in args.euclid_contenders:
                continue
            try:
                from sklearn.neighbors import NearestNeighbors
            except ImportError:
                print("scikit-learn not installed: its row is skipped")
                continue
            t = time.perf_counter()
            nn = NearestNeighbors(n_neighbors=k + 1, algorithm="kd_tree", n_jobs=nt).fit(Xo)
            nbrs = nn.kneighbors(Xo, return_distance=False)
            report("sklearn KDTree k+1, filtered", time.perf_counter() - t,
                   _filter_to_predecessors(nbrs, k))


def case_scale(args):
    """Issue 12's table: the harness (D=3, RBF, m, k) at growing n, tree against brute force.

    Each n runs in its own process (benchmarks/scale_worker.py), so peak RSS is that n's. Large
    n are sampled and projected (*): see the worker's docstring.
    """
    nt = resolve_num_threads(args.threads)
    print(f"\nscale: predecessor kNN of all points, harness D=3 RBF m={args.m} k={args.k}, "
          f"threads={nt}; * = sampled and projected (benchmarks/scale_worker.py)")
    print(f"{'n':>8s} {'model s':>8s} {'build s':>8s} {'query s':>9s} {'tree s':>9s} "
          f"{'brute s':>10s} {'tree/brute':>10s} {'evals/q':>8s} {'build ev/pt':>11s} "
          f"{'peak RSS':>9s} {'RSS/V':>6s} {'rows same':>10s}")
    worker = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scale_worker.py")
    rows = []
    for n in args.scale_n:
        argv = [sys.executable, worker, str(n), "--k", str(args.k), "--m", str(args.m),
                "--sample", str(args.sample), "--threads", str(nt)]
        r = json.loads(subprocess.run(argv, capture_output=True, text=True,
                                      check=True).stdout.splitlines()[-1])
        tq, tb = ("*" if r["tree_projected"] else " "), ("*" if r["brute_projected"] else " ")
        tree = r["model_s"] + r["build_s"] + r["tree_query_s"]
        brute = r["model_s"] + r["brute_s"]
        print(f"{n:8d} {r['model_s']:8.1f} {r['build_s']:8.1f} {r['tree_query_s']:8.1f}{tq} "
              f"{tree:8.1f}{tq} {brute:9.1f}{tb} {tree / brute:10.2f} "
              f"{r['tree_evals_per_query']:8.0f} {r['build_evals_per_point']:11.0f} "
              f"{r['peak_rss_bytes'] / 2**30:8.2f}G {r['peak_rss_bytes'] / r['v_bytes']:6.2f} "
              f"{100 * r['rows_identical']:9.1f}% of {r['rows_compared']}")
        rows.append(r)
    if args.scale_json:         # for benchmarks/plot_scale.py
        with open(args.scale_json, "w") as f:
            json.dump({"machine": _machine(nt), "rows": rows}, f, indent=1)


AUTO_VARIANTS = {
    "harness": (3, lambda: residual.RBF(1.0)),
    "matern52": (3, lambda: residual.Matern(nu=2.5, lengthscale=1.0)),
    "D=8": (8, lambda: residual.RBF(1.0)),
}


def case_auto(args):
    """vecchia_neighbors(method="auto") against both fixed paths, end to end (model, build,
    query; random order; m=512), per variant and n: auto should be within 1.2x of the faster."""
    nt = resolve_num_threads(args.threads)
    print(f"\nauto: vecchia_neighbors, k={args.k}, m={args.m}, threads={nt}")
    print(f"{'variant':9s} {'n':>7s} {'brute s':>8s} {'tree s':>8s} {'auto s':>8s} "
          f"{'chose':>6s} {'auto/best':>9s}  why")
    for name in args.auto_variant or list(AUTO_VARIANTS):
        dim, kernel = AUTO_VARIANTS[name]
        for n in args.auto_n:
            X = np.random.default_rng(0).standard_normal((n, dim))
            seconds, res = {}, {}
            for method in ("brute", "tree", "auto"):
                t = time.perf_counter()
                res[method] = residual.vecchia_neighbors(X, kernel(), args.k, n_inducing=args.m,
                                                         method=method, num_threads=nt)
                seconds[method] = time.perf_counter() - t
            assert (res["auto"].neighbors == res["brute"].neighbors).all()
            best = min(seconds["brute"], seconds["tree"])
            print(f"{name:9s} {n:7d} {seconds['brute']:8.1f} {seconds['tree']:8.1f} "
                  f"{seconds['auto']:8.1f} {res['auto'].method:>6s} "
                  f"{seconds['auto'] / best:9.2f}  {res['auto'].stats['auto']['reason']}")


# competitors for --case busy: each prints "ready" once it is in its loop
_COMPETITORS = {
    "BLAS job": ("import numpy as np\n"
                 "a = np.random.default_rng(0).standard_normal((1500, 1500))\n"
                 "a @ a\nprint('ready', flush=True)\n"
                 "while True:\n    a @ a\n"),
    "1-core loop": "print('ready', flush=True)\nwhile True:\n    pass\n",
}


def _busy_stages(args):
    """(name, fn(num_threads)) for every stage of case_busy, on the standard harness."""
    from residual.ordering import maximin_order
    n, k = args.n, args.k
    X, model, _ = harness(n, args.dim, args.m)
    tree_e = residual.CoverTree(X, num_threads=1)
    tree_r = residual.CoverTree(model, num_threads=1)
    kern = residual.RBF(1.0)
    return [
        ("residual model", lambda nt: residual.ResidualCorrelation.from_kernel(
            X, kern, n_inducing=args.m, seed=0, num_threads=nt)),
        ("Euclidean build", lambda nt: residual.CoverTree(X, num_threads=nt)),
        ("residual build", lambda nt: residual.CoverTree(model, num_threads=nt)),
        ("Euclidean tree query, all", lambda nt: tree_e.query(k=k, num_threads=nt)),
        ("residual tree query, pred.", lambda nt: tree_r.query(k=k, predecessors=True,
                                                               num_threads=nt)),
        ("Euclidean brute force, all", lambda nt: residual.brute_force_knn(
            X, k, num_threads=nt)),
        ("residual brute force, pred.", lambda nt: residual.brute_force_knn(
            model, k, predecessors=True, num_threads=nt)),
        ("maximin_order, Euclidean", lambda nt: maximin_order(X, num_threads=nt)),
        ("maximin_order, residual", lambda nt: maximin_order(model, num_threads=nt)),
        ("vecchia_neighbors", lambda nt: residual.vecchia_neighbors(
            X, kern, k, n_inducing=args.m, num_threads=nt)),
    ]


def case_busy(args):
    """Each stage with default threads vs ``num_threads=1``, idle and next to a competitor.

    Competitors, each in its own process for the whole scenario: a NumPy loop of 1500 x 1500
    matrix products on its default BLAS threads, and a plain one-core Python loop. Target: with
    a competitor, no stage more than 2x slower with default threads than with one thread.
    ``--n 8192`` is the size of the table in docs/benchmarks.md. "idle" means no competitor of ours: other load on the
    machine (see the load average printed) still counts, so repeat the run.
    """
    stages = _busy_stages(args)
    print(f"\nbusy: n={args.n}, D={args.dim}, m={args.m}, k={args.k}, default threads "
          f"{resolve_num_threads(None)}, best of {args.repeat}; load average before "
          f"{os.getloadavg()[0]:.2f}; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
          f"GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT')}")
    columns = {}
    for scenario in ("idle",) + tuple(_COMPETITORS):
        job = None
        if scenario != "idle":
            job = subprocess.Popen([sys.executable, "-c", _COMPETITORS[scenario]],
                                   stdout=subprocess.PIPE, text=True)
            job.stdout.readline()
        try:
            columns[scenario] = [best_of([("default", lambda: fn(None)), ("one", lambda: fn(1))],
                                         args.repeat) for _, fn in stages]
        finally:
            if job is not None:
                job.kill()
                job.wait()
    head = f"{'stage':28s}" + "".join(f" | {s + ': default':>20s} {'1 thread':>8s} {'ratio':>6s}"
                                      for s in columns)
    print(head)
    for r, (name, _) in enumerate(stages):
        line = f"{name:28s}"
        for scenario in columns:
            t = columns[scenario][r]
            line += f" | {t['default']:20.3f} {t['one']:8.3f} {t['default'] / t['one']:6.2f}"
        print(line)
    return columns


PRECISION_REGIMES = {
    # name: (coordinates from a seeded Generator and n, kernel, m)
    "harness": (lambda g, n: g.standard_normal((n, 3)), lambda: residual.RBF(1.0), 512),
    "D=8": (lambda g, n: g.standard_normal((n, 8)), lambda: residual.RBF(1.0), 512),
    "matern32 l=0.1 square": (lambda g, n: g.random((n, 2)),
                              lambda: residual.Matern(nu=1.5, lengthscale=0.1), 256),
    "matern32 l=0.3 5-cube": (lambda g, n: g.random((n, 5)),
                              lambda: residual.Matern(nu=1.5, lengthscale=0.3), 500),
    "matern52 l=0.2 square": (lambda g, n: g.random((n, 2)),
                              lambda: residual.Matern(nu=2.5, lengthscale=0.2), 512),
    "rbf l=0.2 square": (lambda g, n: g.random((n, 2)), lambda: residual.RBF(0.2), 400),
}


def case_precision(args):
    """The residual predecessor kNN, float64 only vs precision="auto" (the float32 screen where
    it pays), brute force and tree, per regime of issue 14, in one run:

        python benchmarks/compare.py --case precision --k 30 --repeat 2

    Columns, for the brute force and then the tree (built once, untimed): best wall seconds of
    float64 and auto and their ratio float64 / auto; whether auto used float32; the share of
    pairs decided in float32 (the brute force: ruled out by the bound; the tree: bounded in
    float32 and never rescored); then the rows bit-identical (distances and indices) to the
    brute force's float64 answer, over all four answers. Targets (n = 32k, k = 30, brute
    force): >= 1.6x on the Matern 3/2 square and 5-cube, <= 1.05x slower on the harness,
    100 % identical.
    """
    nt = resolve_num_threads(args.threads)
    print(f"\nprecision: n={args.n}, k={args.k}, predecessors, threads={nt}, "
          f"chunk={args.chunk_size}, best of {args.repeat}; load average before "
          f"{os.getloadavg()[0]:.2f}")
    print(f"{'regime':24s} {'median p':>9s} | {'brute f64 s':>11s} {'auto s':>7s} "
          f"{'ratio':>6s} {'f32':>4s} {'decided':>8s} | {'tree f64 s':>10s} {'auto s':>7s} "
          f"{'ratio':>6s} {'f32':>4s} {'decided':>8s} | {'identical':>9s}")
    rows = []
    for name, (coords, kernel, m) in PRECISION_REGIMES.items():
        X = coords(np.random.default_rng(0), args.n)
        model = residual.ResidualCorrelation.from_kernel(X, kernel(), n_inducing=m, seed=0)
        tree = residual.CoverTree(model, num_threads=nt)
        out, stats = {}, {}

        def brute(precision):
            *out[("brute", precision)], stats[("brute", precision)] = residual.brute_force_knn(
                model, args.k, predecessors=True, num_threads=nt, chunk_size=args.chunk_size,
                precision=precision, return_stats=True)

        def search(precision):
            out[("tree", precision)] = tree.query(k=args.k, predecessors=True,
                                                  num_threads=nt, precision=precision)
            stats[("tree", precision)] = dict(tree.stats["query"])

        best = best_of([((method, p), lambda f=f, p=p: f(p))
                        for method, f in (("brute", brute), ("tree", search))
                        for p in ("float64", "auto")], args.repeat)
        d0, i0 = out[("brute", "float64")]
        same = np.ones(args.n, dtype=bool)
        for d1, i1 in out.values():
            same &= (d0.view(np.int64) == d1.view(np.int64)).all(axis=1) & (i0 == i1).all(axis=1)
        line = f"{name:24s} {np.median(model.p_diag):9.2g}"
        row = [name]
        for method in ("brute", "tree"):
            st = stats[(method, "auto")]
            decided = st["screened_float32"] / st["pairs"] * 100 if st["pairs"] else 0.0
            t64, t32 = best[(method, "float64")], best[(method, "auto")]
            line += (f" | {t64:{11 if method == 'brute' else 10}.3f} {t32:7.3f} {t64 / t32:6.2f}"
                     f" {'yes' if st['float32'] else 'no':>4s} {decided:7.1f}%")
            row += [t64, t32, st["float32"], decided]
        print(line + f" | {same.mean() * 100:8.2f}%", flush=True)
        rows.append(row + [same.mean() * 100])
    return rows


CASES = {
    "bruteforce-vs-gemm": case_bruteforce_vs_gemm,
    "build": case_build,
    "build-scaling": case_build_scaling,
    "query": case_query,
    "table": case_table,
    "euclidean": case_euclidean,
    "euclidean-pipeline": case_euclidean_pipeline,
    "overheads": case_overheads,
    "busy": case_busy,
    "scale": case_scale,
    "auto": case_auto,
    "precision": case_precision,
}


def _machine(nt):
    return (f"residual {residual.__version__}, {platform.machine()}, {os.cpu_count()} CPUs, "
            f"{nt} threads, Python {platform.python_version()}")


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
    p.add_argument("--variant", action="append", choices=sorted(VARIANTS),
                   help="table: variant to run (repeatable; default: all)")
    p.add_argument("--sample", type=int, default=2048, help="table: covertreex sample rows")
    p.add_argument("--engine", action="append", choices=COVERTREEX_ENGINES,
                   help="table: covertreex engine (repeatable; default: all)")
    p.add_argument("--scale-n", type=lambda v: [int(x) for x in v.split(",")],
                   default=[32768, 131072, 262144, 1048576],
                   help="scale: n values, comma-separated")
    p.add_argument("--scale-json", default=None,
                   help="scale: also write the rows to this JSON file (plot_scale.py reads it)")
    p.add_argument("--auto-n", type=lambda v: [int(x) for x in v.split(",")],
                   default=[8192, 32768, 131072], help="auto: n values, comma-separated")
    p.add_argument("--auto-variant", action="append", choices=sorted(AUTO_VARIANTS),
                   help="auto: variant (repeatable; default: all)")
    p.add_argument("--euclid-n", type=int, default=1 << 20)
    p.add_argument("--euclid-k", type=int, default=30)
    p.add_argument("--euclid-contenders", type=lambda v: v.split(","),
                   default=["ours", "covertree", "sklearn"],
                   help="euclidean and euclidean-pipeline: comma-separated, of ours "
                        "(KDTree),covertree,sklearn (cKDTree always runs, and the pipeline "
                        "always runs ours; "
                        "sklearn's one-thread queries take over 30 min at n=1M, D=8)")
    p.add_argument("--euclid-dims", type=lambda v: [int(d) for d in v.split(",")],
                   default=[3, 8], help="euclidean: dimensions, comma-separated (3,8)")
    args = p.parse_args(argv)
    print(f"residual {residual.__version__}, Python {platform.python_version()}, "
          f"{platform.machine()}, {os.cpu_count()} CPUs, numpy {np.__version__}")
    for name in args.case or sorted(CASES):
        CASES[name](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
