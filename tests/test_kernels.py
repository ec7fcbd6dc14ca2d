import numpy as np
import pytest

import residual
from reference import kernel_ref


def test_kernel_matrix_matches_reference(any_kernel):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((57, 3)) * 2
    Y = rng.standard_normal((33, 3))
    np.testing.assert_allclose(any_kernel(X, Y), kernel_ref(any_kernel, X, Y),
                               rtol=1e-12, atol=1e-14)


def test_ard_lengthscales():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((40, 4))
    kern = residual.Matern(1.5, lengthscale=[0.5, 1.0, 2.0, 4.0], variance=0.7)
    np.testing.assert_allclose(kern(X), kern(X).T, rtol=0, atol=1e-15)
    np.testing.assert_allclose(kern(X), kernel_ref(kern, X, X), rtol=1e-12, atol=1e-14)


def test_diagonal_is_variance(any_kernel):
    X = np.random.default_rng(3).standard_normal((10, 2))
    np.testing.assert_allclose(np.diag(any_kernel(X)), any_kernel.variance, rtol=1e-14)
    np.testing.assert_array_equal(any_kernel.diag(X), np.full(10, any_kernel.variance))


def test_far_translation_keeps_accuracy():
    # centring before the Gram identity: data shifted by 1e4 still gives the exact kernel
    X = np.random.default_rng(4).standard_normal((30, 3)) + 1e4
    kern = residual.RBF(lengthscale=0.8)
    np.testing.assert_allclose(kern(X), kernel_ref(kern, X, X), rtol=1e-9, atol=1e-12)


def test_threads_do_not_change_values(any_kernel):
    X = np.random.default_rng(5).standard_normal((700, 3))
    np.testing.assert_array_equal(any_kernel(X, num_threads=1), any_kernel(X, num_threads=2))


@pytest.mark.parametrize("nu", [0.25, 1.0, 3.5, "2.5"])
def test_unsupported_nu(nu):
    with pytest.raises((ValueError, TypeError), match="nu"):
        residual.Matern(nu)


@pytest.mark.parametrize("ls", [0.0, -1.0, np.nan, np.inf, [1.0, 0.0], [[1.0]]])
def test_bad_lengthscale(ls):
    with pytest.raises(ValueError, match="lengthscale"):
        residual.RBF(lengthscale=ls)


@pytest.mark.parametrize("var", [0.0, -2.0, np.nan])
def test_bad_variance(var):
    with pytest.raises(ValueError, match="variance"):
        residual.RBF(variance=var)


def test_ard_dimension_mismatch():
    kern = residual.RBF(lengthscale=[1.0, 2.0])
    with pytest.raises(ValueError, match="lengthscales"):
        kern(np.zeros((3, 3)))


def test_repr_and_equality():
    assert residual.Matern(1.5, 2.0) == residual.Matern(1.5, 2.0)
    assert residual.Matern(1.5, 2.0) != residual.Matern(2.5, 2.0)
    assert residual.RBF(1.0) != residual.Matern(2.5, 1.0)
    assert "nu=1.5" in repr(residual.Matern(1.5))


@pytest.mark.parametrize("kern, text", [
    (residual.RBF(lengthscale=np.array([0.5, 2.0])),
     "RBF(lengthscale=[0.5, 2.0], variance=1.0)"),
    (residual.Matern(2.5, lengthscale=[1, 3], variance=np.float64(2)),
     "Matern(nu=2.5, lengthscale=[1.0, 3.0], variance=2.0)"),
    (residual.Matern(0.5, lengthscale=np.float64(0.25)),
     "Matern(nu=0.5, lengthscale=0.25, variance=1.0)"),
])
def test_repr_prints_plain_floats(kern, text):
    assert repr(kern) == text
    assert eval(text, {"RBF": residual.RBF, "Matern": residual.Matern}) == kern
