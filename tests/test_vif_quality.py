"""The VIF KL divergence of benchmarks/vif_quality.py: against dense linear algebra, ~0 with full
conditioning, and the orderings a Vecchia approximation must respect as its sets grow."""

import pathlib
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import residual

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
from vif_quality import mixed_sets, vecchia_factor, vif_kl  # noqa: E402


def _problem(n, dim, m, s2, seed, kernel=None):
    """(S, V, euclidean sets, residual sets) in a random order, every set as long as it gets."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(size=(n, dim))
    kernel = residual.Matern(1.5, lengthscale=0.3) if kernel is None else kernel
    model = residual.ResidualCorrelation.from_kernel(X, kernel, n_inducing=m, seed=seed,
                                                     nugget=s2)
    order = rng.permutation(n)
    S = kernel(X)[np.ix_(order, order)] + s2 * np.eye(n)
    sets = [residual.vecchia_neighbors(model, k=n - 1, ordering=order, metric=metric,
                                       method="brute").neighbors
            for metric in ("euclidean", "residual")]
    return S, model.V[order], sets[0], sets[1]


def _dense_kl(S, V, neighbors):
    """The same KL from the dense approximate covariance, by inverses and slogdet."""
    n = S.shape[0]
    b, d = vecchia_factor(S - V @ V.T, neighbors)
    B = np.eye(n)
    for i in range(n):
        ok = neighbors[i] >= 0
        B[i, neighbors[i, ok]] = -b[i, ok]
    Binv = np.linalg.inv(B)
    approx = V @ V.T + Binv @ np.diag(d) @ Binv.T
    return 0.5 * (np.trace(np.linalg.solve(approx, S)) - n + np.linalg.slogdet(approx)[1]
                  - np.linalg.slogdet(S)[1])


@pytest.mark.parametrize("m, s2, k", [(10, 1e-2, 3), (25, 1e-4, 8), (0, 1e-1, 5), (5, 0.5, 0)])
def test_kl_matches_dense_linear_algebra(m, s2, k):
    S, V, euclid, resid = _problem(90, 2, max(m, 1), s2, seed=1)
    V = V[:, :m]
    for sets in (euclid[:, :k], resid[:, :k], mixed_sets(euclid, resid, k)):
        want = _dense_kl(S, V, sets)
        assert want > 1e-6                         # a real approximation error to compare
        assert vif_kl(S, V, sets) == pytest.approx(want, rel=1e-8)


@settings(max_examples=8, deadline=None)
@given(n=st.integers(20, 60), dim=st.integers(1, 3), m=st.integers(1, 15),
       log_s2=st.floats(-3, 0), ls=st.floats(0.1, 0.6), rbf=st.booleans(),
       seed=st.integers(0, 2 ** 16))
def test_full_conditioning_is_exact_and_growing_sets_help(n, dim, m, log_s2, ls, rbf, seed):
    kernel = residual.RBF(lengthscale=ls) if rbf else residual.Matern(2.5, lengthscale=ls)
    S, V, euclid, resid = _problem(n, dim, m, 10 ** log_s2, seed, kernel)
    for nested in (euclid, resid):
        # every earlier point: the Vecchia factor is exact, so is the VIF
        assert abs(vif_kl(S, V, nested)) < 1e-8
        R = S - V @ V.T
        d_full = vecchia_factor(R, nested)[1]
        residual_kl, vif = [], []
        for k in range(n):
            d = vecchia_factor(R, nested[:, :k])[1]
            # KL(R || R~) is the sum of the conditional-variance gaps: conditioning on a
            # superset never raises a conditional variance, so it never grows with k
            residual_kl.append(0.5 * np.log(d / d_full).sum())
            vif.append(vif_kl(S, V, nested[:, :k], R=R))
            assert residual_kl[-1] == pytest.approx(vif_kl(R, V[:, :0], nested[:, :k]),
                                                    rel=1e-7, abs=1e-9)
        assert (np.diff(residual_kl) <= 1e-9).all()
        # adding the same independent low-rank part to both sides cannot raise the KL
        # (data processing); the VIF KL itself need not fall at every step of k
        assert (np.asarray(vif) <= np.asarray(residual_kl) + 1e-9).all()


def test_mixed_sets_take_half_euclidean_then_residual():
    _, _, euclid, resid = _problem(120, 2, 10, 1e-2, seed=3)
    for k in (1, 5, 10):
        mixed = mixed_sets(euclid, resid, k)
        for i in range(120):
            row = mixed[i][mixed[i] >= 0]
            assert row.size == min(k, i) and np.unique(row).size == row.size
            assert (row < i).all()
            half = euclid[i, :(k + 1) // 2]
            np.testing.assert_array_equal(row[:half[half >= 0].size], half[half >= 0])
            rest = row[half[half >= 0].size:]
            # the rest: the nearest residual ones, in order, that the Euclidean half lacks
            expected = [j for j in resid[i] if j >= 0 and j not in half][:rest.size]
            np.testing.assert_array_equal(rest, expected)
