"""The brute force's float32 kernel (_tiles.pyx, "float32 kernel"): within its stated error of
the float64 tiles' kernel over the whole input range, the screen's bound with that error added
against float64, and the brute force's bits with every kernel."""

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import residual
from residual import _blas, _tiles
from residual.bruteforce import brute_force_knn

KINDS = {"rbf": residual.RBF(1.0), "m12": residual.Matern(0.5), "m32": residual.Matern(1.5),
         "m52": residual.Matern(2.5)}
U = 2.0 ** -24


def _chain_found(m):
    with threadpool_limits(limits=1, user_api="blas"):
        return _blas.dgemm_chain(m)[0] > 0


# where this BLAS's dgemm order is not reproduced the screen is off (test_precision.py)
needs_chain = pytest.mark.skipif(not _chain_found(256), reason="dgemm's order not reproduced")


def _r2_of_argument(kernel, x):
    """The r^2 at which the kernel's exp argument is -x."""
    if isinstance(kernel, residual.RBF):
        return 2.0 * x
    return x ** 2 / {0.5: 1.0, 1.5: 3.0, 2.5: 5.0}[kernel.nu]


def _r2_range(kernel):
    """r^2 over the whole input range: exp arguments dense in [0, 100], around the float32
    cut (80) and the float64 clamp (708 to 745), r^2 zero, subnormal in float64 and float32,
    tiny, and huge up to inf (capped by both kernels)."""
    g = np.random.default_rng(0)
    x = np.concatenate([np.linspace(0.0, 100.0, 400_001), g.random(200_000) ** 4 * 90,
                        np.linspace(79.9, 80.1, 20_001), np.linspace(700.0, 750.0, 5001)])
    special = [0.0, 5e-324, 1e-310, 1e-45, 1e-40, 1.1754942e-38, 1.2e-38, 1e-30, 1e-20,
               1e-12, 1e-7, 1e29, 1e30, 1e31, 1e300, 1.7e308, np.inf]
    return np.concatenate([_r2_of_argument(kernel, x), special])


@pytest.mark.parametrize("variance", [1.0, 1e-3, 7.5, 1e6])
@pytest.mark.parametrize("name", sorted(KINDS))
def test_kernel32_within_its_bound(name, variance):
    kernel = KINDS[name]
    r2 = _r2_range(kernel)
    k32 = _tiles.kernel32_values(kernel._code, variance, r2)
    k64 = _tiles.kernel_values(kernel._code, variance, r2)
    eps, tau = _tiles.kernel32_error(kernel._code)
    assert eps < 16 * U and tau < 2 * U                # small next to the screen's a ~ m u
    ratio = np.abs(k32 - k64) / (eps * k32 + tau * variance + 2.0 ** -1068)
    assert ratio.max() <= 0.75                          # holds with margin everywhere
    assert ratio.max() > 0.1                            # and is within 10x of the worst seen
    assert k32[r2 == 0.0][0] == variance
    assert np.all(k32 >= 0.0)
    far = _r2_of_argument(kernel, 80.0) * (1 + 1e-6)    # past the cut: 0
    assert np.all(k32[r2 > far] == 0.0)


def test_kernel32_maps_nan_as_far():
    """A NaN r^2 is capped like the float64 kernel caps it (to a far pair): both give 0."""
    for kernel in KINDS.values():
        r2 = np.array([np.nan])
        assert _tiles.kernel32_values(kernel._code, 1.0, r2)[0] == 0.0
        assert _tiles.kernel_values(kernel._code, 1.0, r2)[0] == 0.0


def _widened_bound_holds(kernel, xq, vq, xc, vc):
    """Every pair: the float64 tiles' C within the widened slack of c = k32 - sgemm, and the
    float64 key within [residual_key(|c| + E), residual_key(max(0, |c| - E))]. Returns the
    largest |C64 - c| / E with the widened slack and with slack32's own (which assumes the
    float64 kernel)."""
    m = vq.shape[1]
    norms_q, norms_c = np.linalg.norm(vq, axis=1), np.linalg.norm(vc, axis=1)
    norm_max = max(norms_q.max(), norms_c.max())
    a, b, t = _tiles.float32_slack_kernel32(m, norm_max, kernel._code, kernel.variance)
    with threadpool_limits(limits=1, user_api="blas"):
        c64 = _tiles.residual_cov_matrix(kernel._code, kernel.variance, xq, vq, xc, vc)
        prod = _blas.sgemm_test(vq.astype(np.float32), vc.astype(np.float32))
    r2 = _tiles.sqdist_matrix(xq, xc)
    k32 = _tiles.kernel32_values(kernel._code, kernel.variance, r2.ravel()).reshape(r2.shape)
    c = k32 - prod.astype(np.float64)

    def slack_of(a, b, t):
        return a * norms_q[:, None] * norms_c[None, :] + b * (np.abs(c) + np.abs(k32)) + t

    slack = slack_of(a, b, t)
    assert np.all(np.abs(c64 - c) <= slack)
    s_q, s_c = 1.0 / np.maximum(norms_q, 1e-300), 1.0 / np.maximum(norms_c, 1e-300)

    def key(cov):
        rho = np.abs(cov) * s_q[:, None] * s_c[None, :]
        return np.where(rho < 1.0, 1.0 - rho, 0.0)

    assert np.all(key(np.abs(c) + slack) <= key(c64))
    assert np.all(key(c64) <= key(np.maximum(0.0, np.abs(c) - slack)))
    plain = slack_of(*_tiles.float32_slack(m, norm_max))
    return (np.abs(c64 - c) / slack).max(), (np.abs(c64 - c) / plain).max()


@pytest.mark.parametrize("case", ["model rows", "kernel only", "cancellation"])
@pytest.mark.parametrize("name", sorted(KINDS))
def test_widened_bound_against_float64(name, case):
    g = np.random.default_rng(7)
    kernel = KINDS[name]
    if case == "model rows":          # real V rows: the inducing points' p ~ jitter, C ~ 0
        X = g.random((400, 2))
        model = residual.ResidualCorrelation.from_kernel(
            X, residual.Matern(kernel.nu, lengthscale=0.1) if name != "rbf"
            else residual.RBF(0.1), n_inducing=64, seed=0)
        kernel = model.kernel
        xs, V = model._xs, model.V
        xq, vq, xc, vc = xs[:100], V[:100], xs[100:], V[100:]
    elif case == "kernel only":       # |v| ~ 1e-4: the kernel's own error dominates the slack
        xq, xc = g.random((64, 2)) * 3, g.random((300, 2)) * 3
        vq, vc = g.standard_normal((64, 16)) * 1e-4, g.standard_normal((300, 16)) * 1e-4
    else:                             # C = k - v_i.v_j ~ 0 in every digit: V V^T = K
        z = g.random((180, 2))
        K = _tiles.kernel_matrix(kernel._code, kernel.variance, z, np.ascontiguousarray(z.T))
        V = np.linalg.cholesky(K + 1e-9 * np.eye(len(z)))
        xq, vq, xc, vc = z[:60], V[:60], z[60:], V[60:]
    widened, plain = _widened_bound_holds(kernel, xq, vq, xc, vc)
    assert widened <= 1.0
    if case == "kernel only":
        assert plain > 1.0          # the kernel's error is what the widening covers


def _kernel_model(kernel, n=2048, seed=0):
    X = np.random.default_rng(seed).random((n, 2))
    return residual.ResidualCorrelation.from_kernel(X, kernel, n_inducing=256, seed=0)


@needs_chain
@pytest.mark.parametrize("kernel", [residual.Matern(0.5, lengthscale=0.1, variance=2.5),
                                    residual.Matern(1.5, lengthscale=0.1, variance=2.5),
                                    residual.Matern(2.5, lengthscale=0.1, variance=0.3),
                                    residual.RBF(0.05, variance=4.0)],
                         ids=["m12", "m32", "m52", "rbf"])
def test_every_kernel_gives_the_float64_bits(kernel):
    """The screen forced on with each kernel and a variance other than 1: the float64 bits."""
    model = _kernel_model(kernel)
    for kw in (dict(predecessors=True), {}):
        ref = brute_force_knn(model, 30, precision="float64", **kw)
        dist, idx, stats = brute_force_knn(model, 30, precision="float32", return_stats=True,
                                           **kw)
        assert dist.tobytes() == ref[0].tobytes()
        assert np.array_equal(idx, ref[1])
        assert stats["float32"]
        assert stats["screened_float32"] > 0.5 * stats["pairs"]
