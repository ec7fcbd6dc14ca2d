"""Which neighbours make the best VIF? The exact KL divergence from the GP to its approximation.

The exact GP is N(0, S) with S = K + s2 I. The VIF approximation (Vecchia + inducing points) is
N(0, Q + R~): Q = V V^T from the library's residual model (inducing points U, V = (L^-1 K_UX)^T)
and R~ the Vecchia approximation of the residual R = S - Q in a given ordering with given
conditioning sets, ``R~^-1 = B^T D^-1 B`` (B unit lower triangular, row i holding
``-R_{c_i c_i}^-1 R_{c_i i}`` at c_i, ``D_i = R_ii - R_{i c_i} R_{c_i c_i}^-1 R_{c_i i}``). With
Woodbury, at O(n^2 m + n k^3) per rule and one O(n^3) Cholesky of S per setting:

    KL = 1/2 [tr((Q + R~)^-1 S) - n + log det(Q + R~) - log det S]

The neighbour rules, for one ordering (the same for every rule, so only the sets differ):

    euclidean          the k nearest earlier points in the (scaled) coordinates
    residual           the k nearest earlier points in sqrt(1 - |rho|), rho from p alone
    residual+nugget    the same with p + s2 (``ResidualCorrelation(..., nugget=s2)``)
    mixed              the ceil(k/2) nearest Euclidean, then the nearest residual+nugget ones
                       not already taken, up to k

Run from the repository root:

    python benchmarks/vif_quality.py                    # n = 1000: 79 s on 2 idle cores
    python benchmarks/vif_quality.py --n 3000 --m 100 300 --orderings random maximin \\
        maximin-residual --json out.json                # a bigger run
    python benchmarks/vif_quality.py --plot docs/vif-quality.png --markdown table.md

``vif_kl`` and ``vecchia_factor`` are plain NumPy/SciPy and are also used by
tests/test_vif_quality.py.
"""

import argparse
import itertools
import json
import math
import time

import numpy as np
import scipy.linalg
import scipy.sparse

import residual

RULES = ("euclidean", "residual", "residual+nugget", "mixed")
KERNELS = {"matern32": lambda ls: residual.Matern(1.5, lengthscale=ls),
           "matern52": lambda ls: residual.Matern(2.5, lengthscale=ls),
           "rbf": lambda ls: residual.RBF(lengthscale=ls)}


# -- the KL divergence ----------------------------------------------------------------------------

def vecchia_factor(R, neighbors):
    """Vecchia factor of the covariance R (in the ordered sequence) with the given sets.

    Parameters
    ----------
    R : ndarray of shape (n, n)
        Covariance of the ordered vector.
    neighbors : ndarray of int, shape (n, k)
        Row i: conditioning positions (all < i), ``-1`` for padding.

    Returns
    -------
    b : ndarray of shape (n, k)
        ``R_{cc}^-1 R_{ci}`` for the set c of row i (0 at padding): row i of the unit lower
        triangular B is 1 at i and ``-b`` at c.
    d : ndarray of shape (n,)
        Conditional variances: the approximation is ``R~^-1 = B^T diag(1/d) B``.
    """
    n, k = neighbors.shape
    valid = neighbors >= 0
    c = np.where(valid, neighbors, 0)
    both = valid[:, :, None] & valid[:, None, :]
    # padding: an identity block and a zero right-hand side, so its coefficients are 0
    rcc = np.where(both, R[c[:, :, None], c[:, None, :]], 0.0)
    rcc[:, np.arange(k), np.arange(k)] += ~valid
    rci = np.where(valid, R[c, np.arange(n)[:, None]], 0.0)
    b = np.linalg.solve(rcc, rci[:, :, None])[:, :, 0] if k else np.zeros((n, 0))
    return b, R.diagonal() - (b * rci).sum(axis=1)


def vif_kl(S, V, neighbors, logdet_S=None, R=None):
    """KL(N(0, S) || N(0, V V^T + R~)), R~ the Vecchia approximation of R = S - V V^T.

    Parameters
    ----------
    S : ndarray of shape (n, n)
        The exact covariance (kernel plus nugget), in the ordered sequence.
    V : ndarray of shape (n, m)
        The low-rank factor, same order (m = 0 gives plain Vecchia of S).
    neighbors : ndarray of int, shape (n, k)
        Conditioning sets (positions < i), ``-1`` padded.
    logdet_S : float, default=None
        ``log det S`` if already known (one Cholesky per setting).
    R : ndarray of shape (n, n), default=None
        ``S - V V^T`` if already known (one per ordering).

    Returns
    -------
    kl : float
    """
    n, m = V.shape
    if logdet_S is None:
        logdet_S = 2 * np.log(np.diag(scipy.linalg.cholesky(S, lower=True))).sum()
    b, d = vecchia_factor(S - V @ V.T if R is None else R, neighbors)
    # row i of B: 1 at i, -b at its set (padding: coefficient 0 at column 0)
    cols = np.concatenate([np.arange(n)[:, None], np.maximum(neighbors, 0)], axis=1)
    coef = np.concatenate([np.ones((n, 1)), -b], axis=1)
    B = scipy.sparse.csr_matrix((coef.ravel(), cols.ravel(),
                                 np.arange(0, coef.size + 1, coef.shape[1])), shape=(n, n))
    # tr(R~^-1 S) = sum_i (B S B^T)_ii / d_i, from the (k+1) x (k+1) blocks of S
    quad = (np.einsum("ijl,il->ij", S[cols[:, :, None], cols[:, None, :]], coef) * coef).sum(1)
    W = B @ V                                            # P V = B^T D^-1 B V = B^T (W / d)
    Wd = W / d[:, None]
    chol_M = scipy.linalg.cho_factor(np.eye(m) + W.T @ Wd, lower=True)   # I + V^T P V
    Z = B.T @ Wd
    # Woodbury: (Q + R~)^-1 = P - P V M^-1 V^T P
    tr = (quad / d).sum() - np.trace(scipy.linalg.cho_solve(chol_M, Z.T @ (S @ Z)))
    logdet = np.log(d).sum() + 2 * np.log(np.diag(chol_M[0])).sum()
    return float(0.5 * (tr - n + logdet - logdet_S))


# -- neighbour rules ------------------------------------------------------------------------------

def mixed_sets(euclid, resid, k):
    """ceil(k/2) nearest Euclidean, then the nearest residual ones not already taken, up to k.

    ``euclid`` and ``resid`` are predecessor lists of at least k columns (-1 padded); a row's
    residual list alone has min(k, i) distinct entries, so the union always fills the set.
    """
    n = euclid.shape[0]
    out = np.full((n, k), -1, dtype=np.int64)
    half = math.ceil(k / 2)
    for i in range(n):
        taken = [j for j in euclid[i, :half] if j >= 0]
        for j in resid[i, :k]:
            if len(taken) == k or j < 0:
                break
            if j not in taken:
                taken.append(j)
        out[i, :len(taken)] = taken
    return out


def neighbour_sets(model, noisy, order, ks):
    """``{rule: {k: sets}}``: every rule's predecessor sets for each k, in the ordered sequence.

    Nearest-neighbour sets are nested (the k nearest are a prefix of the k_max nearest); the
    mixed rule's are not (its Euclidean half grows with k), so they are built for each k.
    """
    def knn(data, metric):
        return residual.vecchia_neighbors(data, k=max(ks), ordering=order, metric=metric,
                                          method="brute").neighbors
    lists = {"euclidean": knn(model, "euclidean"), "residual": knn(model, "residual"),
             "residual+nugget": knn(noisy, "residual")}
    sets = {rule: {k: nb[:, :k] for k in ks} for rule, nb in lists.items()}
    sets["mixed"] = {k: mixed_sets(lists["euclidean"], lists["residual+nugget"], k)
                     for k in ks}
    return sets


# -- the experiment -------------------------------------------------------------------------------

def ordering_of(name, X, noisy, seed):
    if name == "random":
        return np.random.default_rng(seed + 1).permutation(X.shape[0])
    if name == "maximin":
        return residual.maximin_order(X)
    if name == "maximin-residual":
        return residual.maximin_order(noisy)
    raise ValueError(f"unknown ordering {name!r}")


def run_setting(n, dim, kernel, ls, m, inducing, s2, orderings, ks, seed=0):
    """KL of every rule, ordering and k for one (data, kernel, inducing, nugget) setting."""
    X = np.random.default_rng(seed).uniform(size=(n, dim))
    kern = KERNELS[kernel](ls)
    model = residual.ResidualCorrelation.from_kernel(X, kern, n_inducing=m, seed=seed,
                                                     inducing=inducing)
    # the same factors, with p + s2 in the distance
    noisy = residual.ResidualCorrelation(X, kern, V=model.V, p_diag=model.p_diag, nugget=s2)
    S = kern(X)
    S[np.diag_indices(n)] += s2
    logdet_S = 2 * np.log(np.diag(scipy.linalg.cholesky(S, lower=True))).sum()
    rows = []
    for ordering in orderings:
        order = ordering_of(ordering, X, noisy, seed)
        So, Vo = S[np.ix_(order, order)], model.V[order]
        Ro = So - Vo @ Vo.T
        for rule, by_k in neighbour_sets(model, noisy, order, ks).items():
            for k, sets in by_k.items():
                rows.append({"kernel": kernel, "dim": dim, "lengthscale": ls, "m": m,
                             "inducing": inducing, "nugget": s2, "ordering": ordering,
                             "rule": rule, "k": k,
                             "kl": vif_kl(So, Vo, sets, logdet_S, Ro)})
    return rows


# -- tables and figure ----------------------------------------------------------------------------

def _index(rows):
    """``{(kernel, dim, lengthscale, m, inducing, nugget, ordering, rule, k): kl}``."""
    return {(r["kernel"], r["dim"], r["lengthscale"], r["m"], r["inducing"], r["nugget"],
             r["ordering"], r["rule"], r["k"]): r["kl"] for r in rows}


def _values(rows, field):
    return sorted({r[field] for r in rows}, key=lambda v: (str(type(v)), v))


def _summary(ratios):
    r = np.asarray(ratios)
    return f"{np.median(r):.2f} ({r.min():.2f}-{r.max():.2f})"


def tables(rows, meta):
    """The Markdown tables: ratios to the Euclidean rule, winners, inducing choice, all KLs."""
    kl = _index(rows)
    dims, nuggets, inducings = _values(rows, "dim"), _values(rows, "nugget"), \
        _values(rows, "inducing")
    kernels, lss, ms = _values(rows, "kernel"), _values(rows, "lengthscale"), _values(rows, "m")
    orderings, ks = _values(rows, "ordering"), _values(rows, "k")
    rules = [r for r in RULES if r != "euclidean"]
    shown_k = [k for k in (10, 30) if k in ks] or ks[-1:]
    out = [f"n = {meta['n']}, points uniform in [0, 1]^D, kernel variance 1, m = "
           f"{', '.join(map(str, ms))} inducing points, seed {meta['seed']}; "
           f"{meta.get('seconds', '?')} s.\n"]

    def settings(dim, nugget, inducing):
        return [(kern, dim, ls, m, inducing, nugget, o) for kern in kernels for ls in lss
                if (kern, dim, ls, ms[0], inducing, nugget, orderings[0], "euclidean", ks[0])
                in kl for m in ms for o in orderings]

    out.append("### KL(rule) / KL(euclidean): median (min-max) over kernels, lengthscales"
               " and orderings\n")
    head = ["D", "s2", "inducing"] + [f"{rule} k={k}" for k in shown_k for rule in rules]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for dim, nugget, inducing in itertools.product(dims, nuggets, inducings):
        cells = []
        for k in shown_k:
            for rule in rules:
                cells.append(_summary([kl[s + (rule, k)] / kl[s + ("euclidean", k)]
                                       for s in settings(dim, nugget, inducing)]))
        out.append(f"| {dim} | {nugget:g} | {inducing} | " + " | ".join(cells) + " |")

    out.append("\n### Lowest KL: how often each rule wins (all kernels, lengthscales, "
               "orderings, inducing choices and k)\n")
    head = ["D", "s2"] + list(RULES)
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for dim, nugget in itertools.product(dims, nuggets):
        wins = dict.fromkeys(RULES, 0)
        total = 0
        for inducing in inducings:
            for s in settings(dim, nugget, inducing):
                for k in ks:
                    wins[min(RULES, key=lambda rule: kl[s + (rule, k)])] += 1
                    total += 1
        out.append(f"| {dim} | {nugget:g} | " + " | ".join(
            f"{wins[rule]}/{total}" for rule in RULES) + " |")

    if len(inducings) > 1:
        a, b = inducings[0], inducings[1]              # sorted: "kmeans++" before "random"
        out.append(f"\n### KL with {a} / KL with {b} inducing points, same rule: median "
                   "(min-max) over kernels, lengthscales, orderings\n")
        head = ["D", "s2"] + [f"{rule} k={k}" for k in shown_k for rule in RULES]
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for dim, nugget in itertools.product(dims, nuggets):
            cells = [_summary([kl[s[:4] + (a,) + s[5:] + (rule, k)] / kl[s + (rule, k)]
                               for s in settings(dim, nugget, b)])
                     for k in shown_k for rule in RULES]
            out.append(f"| {dim} | {nugget:g} | " + " | ".join(cells) + " |")

    out.append("\n### Every setting: KL at k = " + ", ".join(map(str, shown_k)) + "\n")
    head = ["kernel", "D", "l", "m", "inducing", "s2", "ordering"] + [
        f"{rule} k={k}" for k in shown_k for rule in RULES]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for dim, nugget, inducing in itertools.product(dims, nuggets, inducings):
        for s in settings(dim, nugget, inducing):
            kern, _, ls, m, _, _, o = s
            out.append(f"| {kern} | {dim} | {ls:.3g} | {m} | {inducing} | {nugget:g} | {o} | "
                       + " | ".join(f"{kl[s + (rule, k)]:.3g}" for k in shown_k
                                    for rule in RULES) + " |")
    return "\n".join(out) + "\n"


def plot(rows, path):
    """KL against k, one row of panels per D, maximin ordering (else the first).

    Columns: the roughest kernel at its shortest lengthscale without and with the largest
    nugget, and the smoothest at its longest lengthscale with that nugget (the two regimes).
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kl = _index(rows)
    dims, nuggets, kernels = _values(rows, "dim"), _values(rows, "nugget"), _values(rows, "kernel")
    rough = next((k for k in KERNELS if k in kernels), kernels[0])
    smooth = next((k for k in reversed(list(KERNELS)) if k in kernels), kernels[-1])
    orderings = _values(rows, "ordering")
    o = "maximin" if "maximin" in orderings else orderings[0]
    m, ks = _values(rows, "m")[0], _values(rows, "k")
    columns = [(rough, min, nuggets[0]), (rough, min, nuggets[-1]), (smooth, max, nuggets[-1])]
    fig, axes = plt.subplots(len(dims), len(columns), figsize=(4.0 * len(columns),
                                                               2.9 * len(dims)),
                             squeeze=False, sharex=True)
    colours = dict(zip(RULES, ("C0", "C3", "C1", "C2")))
    styles = dict(zip(_values(rows, "inducing"), ("--", "-", ":")))   # kmeans++ dashed
    for (i, dim), (j, (kern, pick, nugget)) in itertools.product(enumerate(dims),
                                                                 enumerate(columns)):
        ax = axes[i, j]
        ls = pick(r["lengthscale"] for r in rows if r["dim"] == dim)
        for rule, (inducing, style) in itertools.product(RULES, styles.items()):
            y = [kl.get((kern, dim, ls, m, inducing, nugget, o, rule, k)) for k in ks]
            if None not in y:
                ax.plot(ks, y, style, color=colours[rule], marker="o", ms=3,
                        label=f"{rule}, {inducing}")
        ax.set_yscale("log")
        ax.set_title(f"{kern}, D={dim}, l={ls:.3g}, s2={nugget:g}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        if j == 0:
            ax.set_ylabel("KL(exact || VIF)")
        if i == len(dims) - 1:
            ax.set_xlabel("k (conditioning-set size)")
    axes[0, 0].legend(fontsize=6.5)
    fig.suptitle(f"VIF quality by neighbour rule: m={m}, {o} ordering", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000,
                   help="points (default 1000; docs/vif-quality.md uses 2000)")
    p.add_argument("--dims", type=int, nargs="+", default=[2, 3, 5])
    p.add_argument("--kernels", nargs="+", default=list(KERNELS), choices=list(KERNELS))
    p.add_argument("--lengthscales", type=float, nargs="+", default=[0.1, 0.3],
                   help="in 2-D; scaled by sqrt(D / 2) in D dimensions, so that a point has "
                        "about as many neighbours within a lengthscale (default 0.1 0.3)")
    p.add_argument("--m", type=int, nargs="+", default=[100], help="inducing points")
    p.add_argument("--inducing", nargs="+", default=["random", "kmeans++"])
    p.add_argument("--nuggets", type=float, nargs="+", default=[1e-6, 1e-2],
                   help="s2 relative to the kernel variance 1 (1e-6: effectively none)")
    p.add_argument("--orderings", nargs="+", default=["random", "maximin"],
                   choices=["random", "maximin", "maximin-residual"])
    p.add_argument("--k", type=int, nargs="+", default=[5, 10, 20, 30])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write every KL here")
    p.add_argument("--from-json", help="skip the runs: tables and figure from this file")
    p.add_argument("--markdown", help="write the tables here")
    p.add_argument("--plot", help="write the figure here (needs matplotlib)")
    args = p.parse_args(argv)
    if args.from_json:
        with open(args.from_json) as fh:
            saved = json.load(fh)
        return report(saved["rows"], saved["args"], args)

    rows = []
    t0 = time.perf_counter()
    grid = list(itertools.product(args.dims, args.kernels, args.lengthscales, args.m,
                                  args.inducing, args.nuggets))
    for i, (dim, kernel, ls, m, inducing, s2) in enumerate(grid):
        ls_d = ls * math.sqrt(dim / 2)
        rows += run_setting(args.n, dim, kernel, ls_d, m, inducing, s2, args.orderings,
                            args.k, args.seed)
        print(f"[{i + 1}/{len(grid)}] D={dim} {kernel} l={ls_d:.3g} m={m} {inducing} "
              f"s2={s2:g}  {time.perf_counter() - t0:.0f} s", flush=True)
    meta = {k: v for k, v in vars(args).items()
            if k not in ("json", "from_json", "markdown", "plot")}
    meta["seconds"] = round(time.perf_counter() - t0, 1)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": meta, "rows": rows}, fh, indent=0)
    report(rows, meta, args)


def report(rows, meta, args):
    text = tables(rows, meta)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(text)
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
