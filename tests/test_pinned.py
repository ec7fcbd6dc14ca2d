"""Bit-for-bit pins of one harness-like answer, so a refactor of the compiled seam that changes
any rounding or tie order fails here (the oracle tests compare with a tolerance).

The hashes were computed on the code before the seam refactor (issue 11); a deliberate change of
results must update them, with the reason in the commit message."""

import hashlib

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import residual
from conftest import harness_like

N, M, K = 4096, 128, 30

PINNED = {
    ("euclidean", "brute", "all"):
        "301858042fa168dda44cd335fd403d24fdd5a58c5066b886fbdba9d3680497b4",
    ("euclidean", "brute", "pred"):
        "024cae21a86c5cc0211eeb7031f35efd11f2506787427f31ad1abe82ee618945",
    ("euclidean", "tree", "all"):
        "301858042fa168dda44cd335fd403d24fdd5a58c5066b886fbdba9d3680497b4",
    ("euclidean", "tree", "pred"):
        "024cae21a86c5cc0211eeb7031f35efd11f2506787427f31ad1abe82ee618945",
    ("residual", "brute", "all"):
        "cc60d0fe9c714216ebe5a8112dc299edfbf60494619f311e9e1299491a1e9ce0",
    ("residual", "brute", "pred"):
        "e0350396b1723817807c982d4528d5af6f2b133735cfec8222804f9398852ec8",
    # the residual tree scores its candidates with the brute force's arithmetic (_search.pyx,
    # "bounded search"), so its answers are the oracle's, bit for bit (pinned before that on
    # its own arithmetic: 0d866b3f... and a7f7bd88...)
    ("residual", "tree", "all"):
        "cc60d0fe9c714216ebe5a8112dc299edfbf60494619f311e9e1299491a1e9ce0",
    ("residual", "tree", "pred"):
        "e0350396b1723817807c982d4528d5af6f2b133735cfec8222804f9398852ec8",
    ("euclidean", "maximin", "all"):
        "b57a7e512035a2180cf4e9b0446de48bd9f1f35250c61f90bda9c01734d4fd83",
    ("residual", "maximin", "all"):
        "e1adf93f374709b2fa012b3d6256f1b1d5a4925c13ec3c80621f0ccebb679372",
    ("residual", "vecchia", "pred"):
        "8081ce53eb008596b8ed109dcc0954034b117cd2d654e531a2e8b607e84ae332",
}


@pytest.fixture(scope="module")
def data():
    X = harness_like(N)
    with threadpool_limits(limits=1, user_api="blas"):      # see test below
        model = residual.ResidualCorrelation.from_kernel(X, residual.RBF(1.0), n_inducing=M,
                                                         seed=0)
    return {"euclidean": X, "residual": model}


def _answer(data, metric, engine, which):
    points = data[metric]
    pred = which == "pred"
    if engine == "brute":
        return residual.brute_force_knn(points, K, predecessors=pred)
    if engine == "maximin":
        order, dist = residual.maximin_order(points, return_distances=True)
        return dist, order
    if engine == "vecchia":
        nb = residual.vecchia_neighbors(points.X, points.kernel, K, n_inducing=M, seed=0)
        return nb.distances, np.concatenate([nb.order[:, None], nb.neighbors], axis=1)
    return residual.CoverTree(points).query(k=K, predecessors=pred)


def _digest(dist, idx):
    return hashlib.sha256(dist.tobytes() + idx.astype(np.int64).tobytes()).hexdigest()


@pytest.mark.parametrize("key", sorted(PINNED))
def test_answer_is_bit_identical_to_the_pin(data, key):
    # a model's V depends, in its last bits, on how BLAS splits the factorisation among its
    # threads (the searches do not: they hold BLAS to one thread), so models are made on one
    with threadpool_limits(limits=1, user_api="blas"):
        dist, idx = _answer(data, *key)
    assert _digest(dist, idx) == PINNED[key]
