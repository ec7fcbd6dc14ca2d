import pickle

import numpy as np
import pytest

import residual
from reference import model_ref


def test_from_kernel_matches_reference(any_kernel):
    X = np.random.default_rng(0).standard_normal((300, 3))
    model = residual.ResidualCorrelation.from_kernel(X, any_kernel, n_inducing=40, seed=3)
    expected = np.random.default_rng(3).choice(300, 40, replace=False)
    np.testing.assert_array_equal(model.inducing, expected)
    np.testing.assert_array_equal(model.inducing_points, X[expected])
    L, V, p = model_ref(X, any_kernel, expected, 1e-6)
    np.testing.assert_allclose(model.L, L, rtol=1e-10, atol=1e-12)
    # V enters only through V V^T; compare it, and p, at the accuracy float64 allows
    np.testing.assert_allclose(model.V @ model.V.T, V @ V.T, rtol=0, atol=1e-9)
    np.testing.assert_allclose(model.p_diag, p, rtol=0, atol=1e-9 * any_kernel.variance)
    assert model.V.flags.c_contiguous and model.V.dtype == np.float64
    assert (model.p_diag > -1e-9).all()


def test_explicit_inducing_and_ard():
    X = np.random.default_rng(1).standard_normal((120, 2))
    kern = residual.RBF(lengthscale=[0.5, 2.0])
    model = residual.ResidualCorrelation.from_kernel(X, kern, inducing=[3, 7, 11, 50])
    L, V, p = model_ref(X, kern, np.array([3, 7, 11, 50]), 1e-6)
    np.testing.assert_allclose(model.V @ model.V.T, V @ V.T, rtol=0, atol=1e-10)
    np.testing.assert_allclose(model.p_diag, p, rtol=0, atol=1e-10)


def test_user_supplied_factors_are_kept():
    X = np.random.default_rng(2).standard_normal((50, 3))
    V = np.random.default_rng(3).standard_normal((50, 4)) * 0.1
    p = np.full(50, 0.5)
    model = residual.ResidualCorrelation(X, residual.RBF(), V=V, p_diag=p)
    np.testing.assert_array_equal(model.V, V)
    np.testing.assert_array_equal(model.p_diag, p)
    assert model.inducing is None and model.inducing_points is None and model.L is None
    assert model.nugget == 0.0


def test_tiny_p_regime_and_degenerate_points():
    # the standard-harness regime: a smooth kernel and many inducing points leave p ~ 1e-6
    X = np.random.default_rng(0).standard_normal((800, 3))
    model = residual.ResidualCorrelation.from_kernel(X, residual.RBF(), n_inducing=256)
    assert np.median(model.p_diag) < 1e-4
    # a user-supplied p with exact zeros: those rows are degenerate
    p = model.p_diag.copy()
    p[[5, 9]] = 0.0
    m2 = residual.ResidualCorrelation(X, model.kernel, V=model.V, p_diag=p)
    assert m2.degenerate[[5, 9]].all() and m2.degenerate.sum() == 2


def test_model_pickles():
    X = np.random.default_rng(4).standard_normal((60, 3))
    model = residual.ResidualCorrelation.from_kernel(X, residual.Matern(1.5), n_inducing=10)
    again = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(again.V, model.V)
    assert again.kernel == model.kernel


def test_not_positive_definite_is_a_clear_error():
    X = np.zeros((10, 2))   # every inducing row identical: K_UU is rank one
    with pytest.raises(ValueError, match="positive definite"):
        residual.ResidualCorrelation.from_kernel(X, residual.RBF(), n_inducing=5, jitter=1e-300)


def test_from_kernel_seed_generator_and_none():
    X = np.random.default_rng(0).standard_normal((300, 3))
    kern = residual.RBF()
    g = np.random.default_rng(11)
    model = residual.ResidualCorrelation.from_kernel(X, kern, n_inducing=40, seed=g)
    drawn = int(np.random.default_rng(11).integers(1 << 63))    # one draw from g
    np.testing.assert_array_equal(
        model.inducing, np.random.default_rng(drawn).choice(300, 40, replace=False))
    following = residual.ResidualCorrelation.from_kernel(X, kern, n_inducing=40, seed=g)
    assert not np.array_equal(following.inducing, model.inducing)
    fresh = residual.ResidualCorrelation.from_kernel(X, kern, n_inducing=40, seed=None)
    assert len(np.unique(fresh.inducing)) == 40 and fresh.inducing.max() < 300
