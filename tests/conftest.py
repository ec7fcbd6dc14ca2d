import numpy as np
import pytest

import residual


@pytest.fixture(params=["rbf", "m12", "m32", "m52"])
def any_kernel(request):
    return {
        "rbf": residual.RBF(lengthscale=0.7, variance=1.3),
        "m12": residual.Matern(0.5, lengthscale=0.9),
        "m32": residual.Matern(1.5, lengthscale=0.6, variance=0.5),
        "m52": residual.Matern(2.5, lengthscale=1.1, variance=2.0),
    }[request.param]


def harness_like(n, dim=3, seed=0):
    """Standard-harness data at a smaller n."""
    return np.random.default_rng(seed).standard_normal((n, dim))
