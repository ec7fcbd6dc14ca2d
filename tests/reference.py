"""Plain-NumPy float64 references (written independently of the compiled code) and comparison
helpers for the tests."""

import numpy as np


def kernel_ref(kernel, X, Y):
    """k(X, Y) by explicit pairwise differences."""
    ls = np.broadcast_to(np.asarray(kernel.lengthscale, dtype=float), (X.shape[1],))
    diff = (X[:, None, :] - Y[None, :, :]) / ls
    r = np.sqrt((diff ** 2).sum(-1))
    nu = getattr(kernel, "nu", None)
    if nu is None:
        f = np.exp(-0.5 * r ** 2)
    elif nu == 0.5:
        f = np.exp(-r)
    elif nu == 1.5:
        f = (1 + np.sqrt(3) * r) * np.exp(-np.sqrt(3) * r)
    else:
        f = (1 + np.sqrt(5) * r + 5 * r ** 2 / 3) * np.exp(-np.sqrt(5) * r)
    return kernel.variance * f


def model_ref(X, kernel, inducing, jitter):
    """(L, V, p) as residual.model defines them, with numpy.linalg."""
    U = X[inducing]
    kuu = kernel_ref(kernel, U, U) + jitter * kernel.variance * np.eye(len(inducing))
    L = np.linalg.cholesky(kuu)
    V = np.linalg.solve(L, kernel_ref(kernel, U, X)).T
    p = kernel.variance - (V ** 2).sum(1)
    return L, V, p


def residual_dist_ref(kernel, Xq, Vq, pq, Xc, Vc, pc, rtol_degenerate):
    """Residual-correlation distance matrix; degenerate rows/columns at distance 1."""
    C = kernel_ref(kernel, Xq, Xc) - Vq @ Vc.T
    dq = pq <= rtol_degenerate * kernel.variance
    dc = pc <= rtol_degenerate * kernel.variance
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = C / np.sqrt(np.outer(pq, pc))
    rho = np.clip(np.abs(rho), 0, 1)
    rho[dq, :] = 0
    rho[:, dc] = 0
    return np.sqrt(1 - rho)


def euclidean_dist_ref(Xq, Xc):
    return np.sqrt(((Xq[:, None, :] - Xc[None, :, :]) ** 2).sum(-1))


def knn_ref(D, k, *, in_sample=False, predecessors=False):
    """k smallest per row of a full distance matrix, ordered by (distance, index), padded."""
    n_q, n_c = D.shape
    dist = np.full((n_q, k), np.inf)
    idx = np.full((n_q, k), -1, dtype=np.int64)
    cols = np.arange(n_c)
    for i in range(n_q):
        ok = np.ones(n_c, bool)
        if predecessors:
            ok = cols < i
        elif in_sample:
            ok = cols != i
        c = cols[ok]
        order = np.lexsort((c, D[i, c]))[:k]
        dist[i, : len(order)] = D[i, c[order]]
        idx[i, : len(order)] = c[order]
    return dist, idx


def assert_knn_equal(dist, idx, dist_ref, idx_ref, D_full=None, tol=1e-9):
    """Our answer equals the reference.

    Squared distances agree to ``tol`` (the residual distance is sqrt(1 - |rho|): near 0 its
    rounding error is the square root of rho's, so d^2 = 1 - |rho| is where float64 accuracy
    is uniform). Indices are identical, except that two neighbours whose reference squared
    distances differ by at most ``tol`` (a tie at float64 resolution, which two evaluation
    orders may break differently) may swap. With ``D_full`` (the reference distance matrix) a
    neighbour may also be replaced, at the k-th place, by one that ties it there.
    """
    assert dist.shape == dist_ref.shape and idx.shape == idx_ref.shape
    assert dist.dtype == np.float64 and idx.dtype == np.int64
    np.testing.assert_array_equal(idx == -1, idx_ref == -1)
    np.testing.assert_array_equal(np.isinf(dist), np.isinf(dist_ref))
    fin = np.isfinite(dist_ref)
    np.testing.assert_allclose(dist[fin] ** 2, dist_ref[fin] ** 2, rtol=0, atol=tol)
    bad = np.nonzero((idx != idx_ref).any(axis=1))[0]
    for i in bad:
        row, ref = idx[i], idx_ref[i]
        assert len(set(row[row >= 0])) == (row >= 0).sum(), f"row {i} repeats an index"
        for j in np.nonzero(row != ref)[0]:
            # the index we put at rank j must be at a reference distance tied with rank j
            if D_full is not None:
                d_ours = D_full[i, row[j]]
            else:
                where = np.nonzero(ref == row[j])[0]
                assert where.size, f"row {i}: index {row[j]} is not among the reference's"
                d_ours = dist_ref[i, where[0]]
            assert abs(d_ours ** 2 - dist_ref[i, j] ** 2) <= tol, (
                f"row {i}, rank {j}: index {row[j]} (d={d_ours!r}) where the reference has "
                f"{ref[j]} (d={dist_ref[i, j]!r})")
