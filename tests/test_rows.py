"""Row blocks (``rows=``): a block of the in-sample query equals those rows of the full query,
bit for bit, for the brute force and the tree (progress reports and scale-out rely on it)."""

import numpy as np
import pytest

import residual
from conftest import harness_like


def _data(metric, n=700):
    X = harness_like(n)
    if metric == "euclidean":
        return X
    return residual.ResidualCorrelation.from_kernel(X, residual.RBF(), n_inducing=80, seed=0)


BLOCKS = [(0, 0), (0, 1), (0, 33), (5, 70), (31, 97), (64, 128), (650, 700), (0, 700),
          (699, 700), range(100, 321)]


@pytest.mark.parametrize("metric", ["euclidean", "residual"])
@pytest.mark.parametrize("predecessors", [False, True])
def test_blocks_equal_the_full_query(metric, predecessors):
    data = _data(metric)
    tree = residual.CoverTree(data)
    for query, kwargs in ((residual.brute_force_knn, {"X_or_model": data}),
                          (tree.query, {})):
        full = query(k=9, predecessors=predecessors, chunk_size=40, **kwargs)
        for block in BLOCKS:
            a, b = (block.start, block.stop) if isinstance(block, range) else block
            got = query(k=9, predecessors=predecessors, rows=block, chunk_size=64, **kwargs)
            np.testing.assert_array_equal(got[1], full[1][a:b], err_msg=str(block))
            np.testing.assert_array_equal(got[0], full[0][a:b], err_msg=str(block))


def test_rows_are_validated():
    X = harness_like(50)
    tree = residual.CoverTree(X)
    for query, kwargs in ((residual.brute_force_knn, {"X_or_model": X}), (tree.query, {})):
        for bad, err in (((3, 2), ValueError), ((0, 51), ValueError), ((-1, 4), ValueError),
                         ((0,), TypeError), ("0:4", TypeError), (range(0, 10, 2), ValueError),
                         ((0.5, 3), TypeError)):
            with pytest.raises(err, match="rows"):
                query(k=2, rows=bad, **kwargs)
        with pytest.raises(ValueError, match="rows"):
            query(Y=X[:3], k=2, rows=(0, 3), **kwargs)
