"""Bit-for-bit pins of one harness-like answer, so a refactor of the compiled seam that changes
any rounding or tie order fails here (the oracle tests compare with a tolerance).

The hashes were computed on the code before the seam refactor (issue 11); a deliberate change of
results must update them, with the reason in the commit message."""

import hashlib

import numpy as np
import pytest

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
        "5b470880a6df9bae8f383306bbe064e584699ce4c99aef1dc659b66cfd63db6d",
    ("residual", "brute", "pred"):
        "2a69fc83033a1ad4daa170b69c0605256ffdab21552405f7988a40942d3b7fe8",
    ("residual", "tree", "all"):
        "a24a84283fb0576b10269aa024507f0ba6adef1cd7282fbc60dc615b8104052b",
    ("residual", "tree", "pred"):
        "ab5ea0530e8f473bc682174a5b07f42f4768dc41b7900c02a94c603e9e95dd16",
    ("euclidean", "maximin", "all"):
        "b57a7e512035a2180cf4e9b0446de48bd9f1f35250c61f90bda9c01734d4fd83",
    ("residual", "maximin", "all"):
        "6a367189044901d17eea036a14bd6e6e38c92de32355159b393f304419b93e96",
    ("residual", "vecchia", "pred"):
        "6e56879b89f8f259deb42f6598c2d33973446e3538e146518bed487f3ee851bd",
}


@pytest.fixture(scope="module")
def data():
    X = harness_like(N)
    model = residual.ResidualCorrelation.from_kernel(X, residual.RBF(1.0), n_inducing=M, seed=0)
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
    dist, idx = _answer(data, *key)
    assert _digest(dist, idx) == PINNED[key]
