"""Time against n for the tree and the brute force (the rows of ``compare.py --case scale``).

    python benchmarks/compare.py --case scale --k 30 --scale-json docs/scale.json
    python benchmarks/plot_scale.py docs/scale.json docs/scale.png

Model + search seconds for both paths, log-log; hollow markers are sampled and projected
(see benchmarks/scale_worker.py). Needs matplotlib.
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(argv=None):
    src, dst = (argv or sys.argv[1:])[:2]
    with open(src) as f:
        data = json.load(f)
    rows = data["rows"]
    n = [r["n"] for r in rows]
    paths = {
        "CoverTree (model + build + query)":
            ([r["model_s"] + r["build_s"] + r["tree_query_s"] for r in rows],
             [r["tree_projected"] for r in rows], "C0", "o"),
        "brute force (model + query)":
            ([r["model_s"] + r["brute_s"] for r in rows],
             [r["brute_projected"] for r in rows], "C3", "s"),
    }
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for label, (seconds, projected, colour, marker) in paths.items():
        ax.plot(n, seconds, color=colour, label=label)
        for x, y, p in zip(n, seconds, projected):
            ax.plot(x, y, marker=marker, color=colour,
                    markerfacecolor="white" if p else colour, linestyle="none")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("n (points)")
    ax.set_ylabel("seconds")
    k, m = rows[0]["k"], rows[0]["m"]
    ax.set_title(f"Residual Vecchia neighbours, harness D=3, m={m}, k={k}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(title="hollow: sampled and projected", fontsize=8, title_fontsize=8)
    fig.text(0.01, 0.01, data["machine"], fontsize=6, color="grey")
    fig.tight_layout()
    fig.savefig(dst, dpi=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
