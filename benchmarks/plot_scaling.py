"""Time vs n for the user's main job, ours vs peers, as one log-log PNG under docs/.

    python benchmarks/plot_scaling.py                        # measure, then plot
    python benchmarks/plot_scaling.py --replot               # plot docs/scaling.json again
    COVERTREEX_PYTHON=<py3.12 with covertreex> python benchmarks/plot_scaling.py

Left panel: residual-correlation Vecchia neighbours (predecessor kNN of all points, k = 30, the
standard harness' kernel, m = 512) - model + search, ours (brute force, and tree build + query)
vs covertreex rust-hilbert (timed on a seeded sample of rows, projected to n). Right panel:
Euclidean all-points kNN (k = 30, D = 3) - ours (build + query) vs scipy cKDTree(workers=-1)
and scikit-learn KDTree. Every n is measured in one process with the contenders alternating, so
the ratios at one n come from the same minutes of this noisy machine. Needs matplotlib.
"""

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

import residual
from residual._parallel import resolve_num_threads

sys.path.insert(0, os.path.dirname(__file__))
from compare import covertreex_python, harness, run_covertreex  # noqa: E402

DOCS = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "docs")


def _timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def measure_residual(sizes, k, nt, sample):
    out = {"n": [], "brute force (ours)": [], "CoverTree (ours)": [],
           "covertreex rust-hilbert (projected)": []}
    for n in sizes:
        _, model, t_model = harness(n, 3, 512)
        out["n"].append(n)
        out["brute force (ours)"].append(t_model + _timed(
            lambda: residual.brute_force_knn(model, k, predecessors=True, num_threads=nt)))
        out["CoverTree (ours)"].append(t_model + _timed(
            lambda: residual.CoverTree(model, num_threads=nt).query(
                k=k, predecessors=True, num_threads=nt)))
        if covertreex_python():
            rows = np.sort(np.random.default_rng(0).choice(n, min(sample, n), replace=False))
            r = run_covertreex(model, "rust-hilbert", k, rows)
            out["covertreex rust-hilbert (projected)"].append(
                t_model + r["build_s"] + r["query_s"] * n / len(rows))
        print("residual", n, {key: v[-1] for key, v in out.items() if v and key != "n"},
              flush=True)
    return out


def measure_euclidean(sizes, k, nt):
    from scipy.spatial import cKDTree
    out = {"n": [], "CoverTree (ours)": [], "scipy cKDTree": [], "sklearn KDTree": []}
    for n in sizes:
        X = np.random.default_rng(0).standard_normal((n, 3))
        out["n"].append(n)
        out["CoverTree (ours)"].append(_timed(
            lambda: residual.CoverTree(X, num_threads=nt).query(k=k, num_threads=nt)))
        out["scipy cKDTree"].append(_timed(lambda: cKDTree(X).query(X, k + 1, workers=nt)))
        try:
            from sklearn.neighbors import KDTree
            out["sklearn KDTree"].append(_timed(lambda: KDTree(X).query(X, k + 1)))
        except ImportError:
            pass
        print("euclidean", n, {key: v[-1] for key, v in out.items() if v and key != "n"},
              flush=True)
    return out


def plot(data, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    titles = {"residual": "Residual-correlation Vecchia neighbours\n(predecessors, k=30, m=512)",
              "euclidean": "Euclidean kNN of all points\n(k=30, D=3)"}
    for ax, key in zip(axes, ("residual", "euclidean")):
        series = data[key]
        for name, ys in series.items():
            if name != "n" and len(ys) == len(series["n"]):
                ax.loglog(series["n"], ys, "o-", label=name)
        ax.set_xlabel("n (points)")
        ax.set_ylabel("seconds (model + build + query)")
        ax.set_title(titles[key], fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(data["machine"], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print("wrote", path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--residual-sizes", default="4096,8192,16384,32768")
    p.add_argument("--euclidean-sizes", default="16384,65536,262144,1048576")
    p.add_argument("--k", type=int, default=30)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--sample", type=int, default=1024, help="covertreex rows timed per n")
    p.add_argument("--replot", action="store_true", help="plot docs/scaling.json again")
    args = p.parse_args(argv)
    os.makedirs(DOCS, exist_ok=True)
    json_path = os.path.join(DOCS, "scaling.json")
    if args.replot:
        with open(json_path) as f:
            data = json.load(f)
    else:
        nt = resolve_num_threads(args.threads)
        cpu = platform.processor() or platform.machine()
        data = {"machine": f"residual {residual.__version__}, {cpu}, {os.cpu_count()} CPUs, "
                           f"{nt} threads, Python {platform.python_version()}",
                "residual": measure_residual([int(s) for s in args.residual_sizes.split(",")],
                                             args.k, nt, args.sample),
                "euclidean": measure_euclidean(
                    [int(s) for s in args.euclidean_sizes.split(",")], args.k, nt)}
        with open(json_path, "w") as f:
            json.dump(data, f, indent=1)
    plot(data, os.path.join(DOCS, "scaling.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
