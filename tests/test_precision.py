"""The float32 screen (``precision``) of the brute force and of the tree against float64 only:
the same bits in every regime, the screen taken where it should be, and its error bound
against float64 on adversarial inputs (_tiles.pyx, "float32 screen")."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from threadpoolctl import threadpool_limits

import residual
from residual import _blas, _tiles
from residual.bruteforce import CHUNK_ALIGN, brute_force_knn

N, K = 2048, 30

# issue 14's regimes at a test's n: coordinates from a Generator, kernel, m
REGIMES = {
    "harness": (lambda g, n: g.standard_normal((n, 3)), residual.RBF(1.0), 512),
    "D=8": (lambda g, n: g.standard_normal((n, 8)), residual.RBF(1.0), 512),
    "matern32-square": (lambda g, n: g.random((n, 2)), residual.Matern(1.5, lengthscale=0.1),
                        256),
    "matern32-5cube": (lambda g, n: g.random((n, 5)), residual.Matern(1.5, lengthscale=0.3),
                       500),
    "matern52-square": (lambda g, n: g.random((n, 2)), residual.Matern(2.5, lengthscale=0.2),
                        512),
    "rbf-square": (lambda g, n: g.random((n, 2)), residual.RBF(0.2), 400),
}
PAYS = {"D=8", "matern32-square", "matern32-5cube"}


def _chain_found(m):
    with threadpool_limits(limits=1, user_api="blas"):
        return _blas.dgemm_chain(m)[0] > 0


# where this BLAS's dgemm order is not reproduced the screen is off: answers are still checked
needs_chain = pytest.mark.skipif(not _chain_found(256), reason="dgemm's order not reproduced")


def _same_bits(out, ref):
    assert out[0].tobytes() == ref[0].tobytes()         # distances, inf padding included
    assert np.array_equal(out[1], ref[1])


def _tree_screen(model, k, ref, **kw):
    """A tree on model gives the brute force's bits ref in float64 and with the float32
    screen forced on; returns the latter's stats. Rows of the brute force's last, short
    chunk (n not a multiple of CHUNK_ALIGN) are left out: BLAS's edge kernels may sum those
    otherwise than the chain that the tree's rescoring reproduces."""
    tree = residual.CoverTree(model)
    full = model.n_samples - model.n_samples % CHUNK_ALIGN
    for precision in ("float64", "float32"):
        out = tree.query(k=k, precision=precision, **kw)
        _same_bits((out[0][:full], out[1][:full]), (ref[0][:full], ref[1][:full]))
    stats = tree.stats["query"]
    assert stats["pairs"] == (stats["screened_float32"] + stats["recomputed_float64"]
                              + stats["float64_pairs"])
    return stats


def _model(name, n=N, seed=0):
    coords, kernel, m = REGIMES[name]
    X = coords(np.random.default_rng(seed), n)
    return residual.ResidualCorrelation.from_kernel(X, kernel, n_inducing=m, seed=0)


@pytest.fixture(scope="module", params=sorted(REGIMES))
def regime(request):
    return request.param, _model(request.param)


@pytest.mark.parametrize("mode", ["predecessors", "all", "new"])
def test_float32_gives_the_float64_bits(regime, mode):
    name, model = regime
    kw = {"predecessors": dict(predecessors=True), "all": {},
          "new": dict(Y=REGIMES[name][0](np.random.default_rng(5), 100))}[mode]
    ref = brute_force_knn(model, K, precision="float64", **kw)
    for precision in ("float32", "auto"):
        dist, idx, stats = brute_force_knn(model, K, precision=precision, return_stats=True,
                                           **kw)
        _same_bits((dist, idx), ref)
        assert stats["pairs"] == (stats["screened_float32"] + stats["recomputed_float64"]
                                  + stats["float64_pairs"])
        if precision == "float32" and _chain_found(model.n_inducing):
            assert stats["float32"]


@needs_chain
def test_auto_uses_float32_where_it_pays(regime):
    name, model = regime
    _, _, stats = brute_force_knn(model, K, predecessors=True, return_stats=True)
    assert stats["float32"] == (name in PAYS)
    if name in PAYS:
        # the bound decides most pairs it sees (at n = 32k, 99.8 %: compare.py --case
        # precision); rows it cannot separate (about the inducing points, p ~ jitter) go to
        # the float64 tiles
        assert stats["hit_rate"] > 0.7
        assert stats["screened_float32"] > 0.3 * stats["pairs"]
    else:
        assert stats["float64_pairs"] == stats["pairs"] > 0
    assert model.metric.float32_pays() == (name in PAYS)


@needs_chain
def test_stats_add_up_on_the_metric():
    model = _model("matern32-square", n=1200)
    before = dict(model.metric.screen_counts)
    _, _, s1 = brute_force_knn(model, 5, return_stats=True)
    _, _, s2 = brute_force_knn(model, 5, predecessors=True, precision="float64",
                               return_stats=True)
    assert s1["float32"] and not s2["float32"]
    for name in ("pairs", "screened_float32", "recomputed_float64", "float64_pairs"):
        assert model.metric.screen_counts[name] == before.get(name, 0) + s1[name] + s2[name]
    assert s2["float64_pairs"] == 1200 * 1199 // 2


def test_threads_chunks_and_row_blocks_do_not_matter():
    model = _model("matern32-square", n=1500)
    ref = brute_force_knn(model, K, predecessors=True, precision="float64")
    for kw in (dict(num_threads=1), dict(num_threads=2, chunk_size=37),
               dict(chunk_size=1000)):
        _same_bits(brute_force_knn(model, K, predecessors=True, precision="float32", **kw),
                   ref)
    block = brute_force_knn(model, K, predecessors=True, precision="float32", rows=(700, 1111))
    _same_bits(block, (ref[0][700:1111], ref[1][700:1111]))


def test_duplicates_tie_by_index():
    g = np.random.default_rng(3)
    X = g.random((1200, 2))
    X[600:] = X[g.integers(0, 600, 600)]              # half the points repeat earlier ones
    model = residual.ResidualCorrelation.from_kernel(X, residual.Matern(1.5, lengthscale=0.1),
                                                     n_inducing=256, seed=0)
    for kw in (dict(predecessors=True), {}):
        ref = brute_force_knn(model, 10, precision="float64", **kw)
        _same_bits(brute_force_knn(model, 10, precision="float32", **kw), ref)
        assert np.any(ref[0][:, 0] == 0.0)                # the ties are there
        assert _tree_screen(model, 10, ref, **kw)["float32"] == _chain_found(256)


def test_degenerate_p():
    base = _model("matern32-square", n=1200)
    p = base.p_diag.copy()
    p[::7] = 0.0                                       # distance 1 to everything
    # 1197 rows: the last chunk is short (its last rows meet BLAS's edge kernels)
    model = residual.ResidualCorrelation(base.X[:1197], base.kernel, V=base.V[:1197],
                                         p_diag=p[:1197])
    for kw in (dict(predecessors=True), {}):
        ref = brute_force_knn(model, K, precision="float64", **kw)
        _same_bits(brute_force_knn(model, K, precision="float32", **kw), ref)
        _tree_screen(model, K, ref, **kw)


def test_huge_coordinates_and_norms():
    g = np.random.default_rng(4)
    X = 1e9 + g.random((1200, 2))                      # centred by the model
    model = residual.ResidualCorrelation.from_kernel(X, residual.Matern(1.5, lengthscale=0.1),
                                                     n_inducing=256, seed=0)
    ref = brute_force_knn(model, K, predecessors=True, precision="float64")
    _same_bits(brute_force_knn(model, K, predecessors=True, precision="float32"), ref)
    _tree_screen(model, K, ref, predecessors=True)
    # |v| beyond NORM_MAX: float32 products could overflow, so the screen stays off
    big = residual.ResidualCorrelation(model.X, residual.Matern(1.5, lengthscale=0.1,
                                                                variance=1e40),
                                       V=model.V * 1e20, p_diag=model.p_diag * 1e40)
    assert not big.metric.float32_safe()
    dist, idx, stats = brute_force_knn(big, K, precision="float32", return_stats=True)
    assert not stats["float32"]
    _same_bits((dist, idx), brute_force_knn(big, K, precision="float64"))
    assert not _tree_screen(big, K, (dist, idx))["float32"]


def test_euclidean_grid_ties_stay_float64():
    X = np.stack(np.meshgrid(np.arange(40.0), np.arange(40.0)), -1).reshape(-1, 2)
    ref = brute_force_knn(X, 8, precision="float64")
    dist, idx, stats = brute_force_knn(X, 8, precision="float32", return_stats=True)
    _same_bits((dist, idx), ref)
    assert not stats["float32"] and stats["float64_pairs"] == stats["pairs"]
    assert np.all(ref[0][:, :2] == 1.0)                # neighbours at 1, tied by index


def test_large_k_stays_float64():
    model = _model("matern32-square", n=1200)
    ref = brute_force_knn(model, 151, precision="float64")
    dist, idx, stats = brute_force_knn(model, 151, precision="float32", return_stats=True)
    _same_bits((dist, idx), ref)
    assert not stats["float32"]                        # 8k > n: most pairs would be kept


def test_precision_is_checked():
    with pytest.raises(ValueError, match="precision"):
        brute_force_knn(np.zeros((5, 2)), 2, precision="float16")


@needs_chain
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2 ** 32 - 1), eps=st.floats(1e-10, 1e-4), m=st.integers(1, 300),
       k=st.integers(1, 12), n=st.integers(96, 200))
def test_near_the_bound(seed, eps, m, k, n):
    """Rows that differ by about float32's resolution: keys sit within the bound of each other,
    so the screen must keep them and float64 decides, to the same bits."""
    g = np.random.default_rng(seed)
    base = g.standard_normal(m)
    base *= 0.9 / np.linalg.norm(base)
    V = base + eps * g.standard_normal((n, m)) * np.abs(base)
    X = np.zeros((n, 1))                               # k(x_i, x_j) = 1 for every pair
    p = 1.0 - (V ** 2).sum(1)
    model = residual.ResidualCorrelation(X, residual.RBF(1.0), V=V, p_diag=p)
    for kw in (dict(predecessors=True), {}):
        ref = brute_force_knn(model, k, precision="float64", chunk_size=32, **kw)
        out = brute_force_knn(model, k, precision="float32", chunk_size=32,
                              return_stats=True, **kw)
        _same_bits(out[:2], ref)
        assert out[2]["float32"]
        assert _tree_screen(model, k, ref, **kw)["float32"]


# -- the tree's screen (_search.pyx, "bounded search") ---------------------------------------------

@pytest.fixture(scope="module")
def regime_tree(regime):
    name, model = regime
    return name, model, residual.CoverTree(model)


@pytest.mark.parametrize("mode", ["predecessors", "all", "new"])
def test_tree_float32_gives_the_oracle_bits(regime_tree, mode):
    name, model, tree = regime_tree
    kw = {"predecessors": dict(predecessors=True), "all": {},
          "new": dict(Y=REGIMES[name][0](np.random.default_rng(5), 96))}[mode]
    ref = tree.query(k=K, precision="float64", **kw)
    assert not tree.stats["query"]["float32"]
    if _chain_found(model.n_inducing):        # rescored with the oracle's arithmetic
        _same_bits(ref, brute_force_knn(model, K, precision="float64", **kw))
    for precision in ("float32", "auto"):
        _same_bits(tree.query(k=K, precision=precision, **kw), ref)
        stats = tree.stats["query"]
        assert stats["pairs"] == (stats["screened_float32"] + stats["recomputed_float64"]
                                  + stats["float64_pairs"])
        assert stats["float32"] == (precision == "float32" or name in PAYS)


def test_tree_screen_decides_most_pairs_where_it_pays(regime_tree):
    name, model, tree = regime_tree
    tree.query(k=K, predecessors=True)
    stats = tree.stats["query"]
    if name in PAYS:
        # 61-77 % here, 95-96 % at n = 16k; the float64 pairs are the seeds, the root and
        # the pairs of the rows whose own bound is loose (the inducing points, p ~ jitter:
        # 12-25 % of the rows here)
        assert stats["screened_float32"] > 0.5 * stats["pairs"]
        assert stats["recomputed_float64"] < 0.2 * stats["pairs"]
    else:
        assert stats["float64_pairs"] == stats["pairs"] > 0


def test_tree_threads_and_chunks_do_not_matter():
    model = _model("matern32-5cube", n=1500)
    tree = residual.CoverTree(model)
    ref = tree.query(k=K, predecessors=True, precision="float64")
    for kw in (dict(num_threads=1), dict(num_threads=2, chunk_size=200), dict(chunk_size=1)):
        _same_bits(tree.query(k=K, predecessors=True, precision="float32", **kw), ref)
    _same_bits(tree.query(k=K, predecessors=True, precision="float32", rows=(700, 1111)),
               (ref[0][700:1111], ref[1][700:1111]))


def test_tree_counts_add_up_on_the_metric():
    model = _model("matern32-square", n=1200)
    tree = residual.CoverTree(model)
    before = dict(model.metric.screen_counts)
    tree.query(k=5)
    s1 = dict(tree.stats["query"])
    _, _, s2 = brute_force_knn(model, 5, return_stats=True)
    for name in ("pairs", "screened_float32", "recomputed_float64", "float64_pairs"):
        assert model.metric.screen_counts[name] == before.get(name, 0) + s1[name] + s2[name]
    with pytest.raises(ValueError, match="precision"):
        tree.query(k=5, precision="half")


# -- the bound itself -----------------------------------------------------------------------------

def _bound_holds(xq, vq, xc, vc, kernel=residual.RBF(1.0)):
    """Every pair: the float64 tiles' C within the slack of c = k - sgemm, and the float64 key
    in [residual_key(|c| + E), residual_key(max(0, |c| - E))]."""
    m = vq.shape[1]
    norms_q, norms_c = np.linalg.norm(vq, axis=1), np.linalg.norm(vc, axis=1)
    a, b, t = _tiles.float32_slack(m, max(norms_q.max(), norms_c.max()))
    with threadpool_limits(limits=1, user_api="blas"):
        c64 = _tiles.residual_cov_matrix(kernel._code, kernel.variance, xq, vq, xc, vc)
        prod = _blas.sgemm_test(vq.astype(np.float32), vc.astype(np.float32))
    kern = _tiles.kernel_matrix(kernel._code, kernel.variance, xq, np.ascontiguousarray(xc.T))
    c = kern - prod.astype(np.float64)
    slack = a * norms_q[:, None] * norms_c[None, :] + b * (np.abs(c) + np.abs(kern)) + t
    assert np.all(np.abs(c64 - c) <= slack)
    # keys, with s_i s_j = 1 / (norm_i norm_j): rho of order 1, the scale where keys decide
    s_q, s_c = 1.0 / np.maximum(norms_q, 1e-300), 1.0 / np.maximum(norms_c, 1e-300)

    def key(cov):
        with np.errstate(over="ignore"):        # rows of zeros: s = 1e300, rho inf, key 0
            rho = np.abs(cov) * s_q[:, None] * s_c[None, :]
        return np.where(rho < 1.0, 1.0 - rho, 0.0)

    assert np.all(key(np.abs(c) + slack) <= key(c64))
    assert np.all(key(c64) <= key(np.maximum(0.0, np.abs(c) - slack)))
    return np.abs(c64 - c).max() / slack.max()


@pytest.mark.parametrize("m", [1, 7, 256, 500, 513])
@pytest.mark.parametrize("case", ["plain", "large norms", "tiny p", "cancellation",
                                  "underflow"])
def test_bound_against_float64(case, m):
    g = np.random.default_rng(m)
    nq, nc = 32, 97
    xq, xc = np.zeros((nq, 1)), g.standard_normal((nc, 1)) * 0.1
    vq = g.standard_normal((nq, m)) / np.sqrt(m)
    vc = g.standard_normal((nc, m)) / np.sqrt(m)
    if case == "large norms":
        vq, vc = vq * 1e12, vc * 1e12 * g.random((nc, 1))
    elif case == "tiny p":                         # |v|^2 = 1 - 1e-12: k - |v|^2 ~ 1e-12
        vq /= np.linalg.norm(vq, axis=1, keepdims=True) / np.sqrt(1 - 1e-12)
        vc /= np.linalg.norm(vc, axis=1, keepdims=True) / np.sqrt(1 - 1e-12)
    elif case == "cancellation":                   # C = k - v_i.v_j ~ 0 in every digit
        vq /= np.linalg.norm(vq, axis=1, keepdims=True)
        vc = vq[g.integers(0, nq, nc)] * (1 + 1e-9 * g.standard_normal((nc, 1)))
        xc = np.zeros((nc, 1))
    elif case == "underflow":                      # float32 subnormals and zeros
        vq, vc = vq * 1e-42, vc * 1e-42
        vc[::3] = 0.0
    ratio = _bound_holds(xq, vq, xc, vc)
    assert ratio <= 1.0
    if case in ("plain", "large norms") and m > 1:
        assert ratio > 1e-3          # the bound is within ~3 orders of the worst error seen


@needs_chain
def test_cli_summary_says_whether_float32_ran(tmp_path, capsys):
    from residual.cli import main
    path = tmp_path / "points.csv"
    np.savetxt(path, np.random.default_rng(0).random((1500, 2)), delimiter=",")
    common = ["--input", str(path), "--k", "10", "--quiet", "--n-inducing", "100"]
    assert main(common + ["--kernel", "matern32", "--lengthscale", "0.1"]) == 0
    assert "float32 screen        used:" in capsys.readouterr().out
    assert main(common + ["--kernel", "rbf", "--lengthscale", "1"]) == 0   # p ~ 1e-6
    assert "float32 screen        not used" in capsys.readouterr().out


@needs_chain
def test_vecchia_reports_the_screen_for_both_methods():
    X = np.random.default_rng(0).random((1500, 2))
    kernel = residual.Matern(1.5, lengthscale=0.1)
    out = {method: residual.vecchia_neighbors(X, kernel, 10, n_inducing=100, method=method)
           for method in ("brute", "tree")}
    for res in out.values():
        counts = res.stats["float32_screen"]
        assert counts["screened_float32"] > 0.3 * counts["pairs"] > 0
    assert np.array_equal(out["brute"].neighbors, out["tree"].neighbors)
    assert out["brute"].distances.tobytes() == out["tree"].distances.tobytes()


@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_tree_aliases_that_are_not_their_nodes_rows(precision):
    # near-duplicates in the tiny-p regime: their correlation with their twin rounds to 1, so
    # the build makes them aliases, but their rows differ and so do their keys to a query;
    # the bounded search must not give them their node's bounds
    g = np.random.default_rng(0)
    X = g.standard_normal((512, 2))
    X[256:] = X[:256] + g.standard_normal((256, 2)) * 1e-7
    model = residual.ResidualCorrelation.from_kernel(X, residual.RBF(1.0), n_inducing=150,
                                                     seed=0)
    tree = residual.CoverTree(model)
    layout = tree._layout()
    assert tree.stats["aliases"] > 50 and not np.asarray(layout.alias_exact).all()
    for k in (1, 3, 8):
        for kw in (dict(predecessors=True), {}):
            ref = brute_force_knn(model, k, precision="float64", **kw)
            _same_bits(tree.query(k=k, precision=precision, **kw), ref)


@needs_chain
@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2 ** 32 - 1), n=st.integers(64, 320), dim=st.integers(1, 3),
       kind=st.sampled_from(["rbf", "m12", "m32", "m52"]), twins=st.floats(0.0, 0.5),
       jitter=st.sampled_from([0.0, 1e-12, 1e-9, 1e-6]), nugget=st.sampled_from([0.0, 1e-3]),
       k=st.integers(1, 12))
def test_tree_bounded_search_against_the_oracle(seed, n, dim, kind, twins, jitter, nugget, k):
    """Random small problems with exact and near duplicates (aliases that are, or are not,
    their node's rows), both precisions: the tree's rows are the brute force's, bit for bit."""
    g = np.random.default_rng(seed)
    X = g.standard_normal((n, dim))
    t = int(twins * n)
    X[n - t:] = X[g.integers(0, n - t, t)] + jitter * g.standard_normal((t, dim))
    kernel = {"rbf": residual.RBF(1.0), "m12": residual.Matern(0.5, lengthscale=0.7),
              "m32": residual.Matern(1.5, lengthscale=0.5),
              "m52": residual.Matern(2.5, lengthscale=0.8)}[kind]
    model = residual.ResidualCorrelation.from_kernel(X, kernel, n_inducing=min(40, n - 1),
                                                     seed=0, nugget=nugget)
    for kw in (dict(predecessors=True), {}):
        ref = brute_force_knn(model, k, precision="float64", **kw)
        _tree_screen(model, k, ref, **kw)
