"""The cover-tree invariant checker behind :meth:`residual.CoverTree.check_invariants`.

A test and debugging aid, kept apart from the build: it re-derives every rule of a compressed
cover tree (I0-I7, ALGORITHMS.md section 2) from the stored arrays and float64 distances, and
raises AssertionError naming the first broken rule. It reads the tree only through its public
arrays and ``tree._distances`` (the build's own pair distances), so it trusts nothing the build
computed incrementally: covering radii, subtree minima and parent distances are all recomputed.
"""

import numpy as np


def check_invariants(tree, pairwise=None, tol=None):
    """Check I0-I7 on ``tree``; see :meth:`residual.CoverTree.check_invariants`."""
    n = tree.n_samples
    lev, par, alias = tree.levels, tree.parents, tree.alias_of
    is_node = alias < 0
    nodes = np.nonzero(is_node)[0]
    if tol is None:
        tol = 1e-12 if tree.residual else 1e-12 * 4.0 ** lev[tree.root]
    _check(is_node[tree.root] and par[tree.root] == -1, "I0",
           f"root {tree.root} is not a parentless node")
    roots = nodes[par[nodes] < 0]
    _check(roots.tolist() == [tree.root], "I0", f"nodes without a parent: {roots[:10]}")
    _check(((alias < 0) | (par < 0)).all(), "I0", "an alias also has a parent")
    bad = np.nonzero(~is_node & ~np.isin(alias, nodes))[0]
    _check(bad.size == 0, "I0", f"aliases of non-nodes: {bad[:10]}")
    depth_ok = np.zeros(n, bool)
    depth_ok[tree.root] = True
    for p in tree.insertion_order:          # parents are always inserted first
        if p != tree.root:
            depth_ok[p] = depth_ok[par[p]]
    _check(depth_ok[nodes].all(), "I0", "nodes not connected to the root (a cycle?)")
    _check(len(set(tree.insertion_order.tolist())) == nodes.size, "I0",
           "a node was inserted twice or never")
    child = nodes[nodes != tree.root]
    if child.size:
        top = lev[child].max()
        _check(lev[tree.root] >= 1 + top, "I1",
               f"root level {lev[tree.root]} < 1 + max other level {top}")
        bad = child[lev[par[child]] <= lev[child]]
        _check(bad.size == 0, "I2", f"nodes not below their parent's level: {bad[:10]}")
        d = tree._distances(child, par[child])
        t = _pair_tol(tree, child, par[child], tol)
        bad = child[d ** 2 > 4.0 ** (lev[child] + 1) + t]
        _check(bad.size == 0, "I3", f"nodes farther than 2^(level+1) from their parent: "
               f"{bad[:10]}")
        bad = child[np.abs(d ** 2 - tree.parent_distances[child] ** 2) > t]
        _check(bad.size == 0, "I6", f"stored parent distance is wrong for {bad[:10]}")
    if alias.max(initial=-1) >= 0:
        al = np.nonzero(~is_node)[0]
        d = tree._distances(al, alias[al])
        bad = al[d ** 2 > _pair_tol(tree, al, alias[al], tol)]
        _check(bad.size == 0, "I0", f"aliases not at distance 0 from their node: {bad[:10]}")
    if pairwise or (pairwise is None and n <= 4000):
        _check_separation(tree, nodes, tol)
    _check_subtrees(tree, nodes, tol)


def _check_separation(tree, nodes, tol):
    """I4: nodes are more than 2^min(levels) apart, over all node pairs (O(n^2))."""
    lev = tree.levels
    for lo in range(0, nodes.size, 256):
        a = nodes[lo:lo + 256]
        ai, bi = np.meshgrid(a, nodes, indexing="ij")
        keep = ai < bi
        ai, bi = ai[keep], bi[keep]
        if ai.size == 0:
            continue
        d = tree._distances(ai, bi)
        bad = d ** 2 <= 4.0 ** np.minimum(lev[ai], lev[bi]) - _pair_tol(tree, ai, bi, tol)
        _check(not bad.any(), "I4", "nodes closer than 2^min(levels): "
               f"{list(zip(ai[bad][:5].tolist(), bi[bad][:5].tolist()))}")


def _pair_tol(tree, a, b, tol):
    """Tolerance on d(a, b)^2: ``tol``, plus float64's resolution of the residual d^2."""
    if not tree.residual:
        return np.full(np.shape(a), tol)
    m = tree.model
    eps = 2 * m.n_inducing * np.finfo(float).eps / 2 * m.kernel.variance
    s = m._inv_sqrt_p
    # a degenerate point (s = 0) is at distance exactly 1: no rounding to allow for
    return tol + eps * s[a] * s[b]


def _check_subtrees(tree, nodes, tol):
    """I5 (exact covering radius, <= 2^(level+1)) and I7 (subtree minimum index)."""
    n = tree.n_samples
    members = [[] for _ in range(n)]         # every point under each node
    for w in range(n):
        u = tree.alias_of[w] if tree.alias_of[w] >= 0 else tree.parents[w]
        while u >= 0:
            members[u].append(w)
            u = tree.parents[u]
    for u in nodes:
        sub = np.array(members[u] + [u])
        r = tree._distances(np.full(sub.size, u), sub).max() if len(members[u]) else 0.0
        t = _pair_tol(tree, np.full(sub.size, u), sub, tol).max()
        _check(abs(r ** 2 - tree.radii[u] ** 2) <= t, "I5",
               f"node {u}: stored radius {tree.radii[u]!r}, true {r!r}")
        _check(tree.radii[u] ** 2 <= 4.0 ** (tree.levels[u] + 1) + t, "I5",
               f"node {u}: radius {tree.radii[u]!r} > 2^(level+1)")
        _check(tree.min_index[u] == sub.min(), "I7",
               f"node {u}: stored min index {tree.min_index[u]}, true {sub.min()}")


def _check(ok, rule, message):
    if not ok:
        raise AssertionError(f"{rule}: {message}")
