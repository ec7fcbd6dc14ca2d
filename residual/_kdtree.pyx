# Exact Euclidean kNN on a k-d tree: all points, predecessors (row i: only j < i) and new points.
#
# Tree: a perfect binary tree over the points, which are copied in tree order ("slots"), so a
# node's points are the contiguous slots start[u]..stop[u]-1 and a leaf is one block of memory.
# Node u's children are 2u+1 and 2u+2; its range is cut at the middle slot, after a quickselect
# on the coordinate of widest spread (split_at, also used by maximin's ball tree), so every leaf
# sits at the same depth with between leaf_size/2 and leaf_size points. Each node keeps its
# points' tight bounding box and the smallest point index below it (`low`).
#
# Search: a node's best possible key is (b, low), b its box's lower bound on the squared
# distance: no point in it can come before that in the oracle's (squared distance, index)
# order. A node whose key does not come before the worst of the k kept is skipped, and in
# predecessor mode so is a node with low >= i. The search descends from a node to a leaf
# through the child with the better key, deferring the other child on a min-heap by key, then
# resumes from the best deferred node; it ends when that node's key does not come before the
# worst kept (no key below a node comes before the node's own: a child's box lies inside its
# parent's). The heap order matters for ties: among many equal distances (duplicates) the
# subtrees with the smallest indices come first, so the k best settle at once, where a plain
# depth-first search kept a poor worst key for long and scanned many such leaves. Leaves
# evaluate their points with sqdist (the direct sum, the brute force's own formula), so
# distances equal the oracle's bit for bit and ties go by index exactly.
#
# The box bound sums fl(q - edge)^2 over the coordinates outside the box, in the order sqdist
# sums: every rounding step is monotone, so without fused multiply-adds it is at most the
# computed key of every point in the box. The compiler may fuse some of those sums and not
# others, which can move either by a few ulps; BOUND_SHRINK absorbs that (it only widens the
# search).
#
# Queries run in tree order (in-sample: by slot), so consecutive queries reuse the same leaves
# from cache; a prange hands out chunks of them and each thread keeps its own top-k heap and
# frontier (_workspace.pxd). Ctrl-C is checked between chunks (_interrupt.pxd).

from cython.parallel cimport prange, parallel
from libc.math cimport sqrt, INFINITY
from libc.stdlib cimport free

import numpy as np

from residual._typedefs cimport float64_t, intp_t, int64_t
from residual._tiles cimport closer, sqdist
from residual._heap cimport best_offer, best_pop
from residual._interrupt cimport Interrupt, interrupt_init, interrupted, reraise
from residual._workspace cimport carve, span, workspace_new
from residual._split cimport split_at

cdef enum:
    CHUNK = 64               # queries per work item

# 1 - 2^-40: shrinks a box's lower bound by far more than a few ulps of fused rounding
cdef float64_t BOUND_SHRINK = 1.0 - 9.094947017729282e-13


cdef struct Tree:
    intp_t dim
    intp_t first_leaf        # leaves are nodes first_leaf .. 2 first_leaf
    const float64_t* x       # (n, dim), slot order
    const intp_t* index      # slot -> point index
    const intp_t* start      # node -> its first slot; its slots are start[u] .. stop[u] - 1
    const intp_t* stop
    const float64_t* box     # node -> lower corner (dim), then upper corner (dim)
    const intp_t* low        # node -> the smallest point index in its subtree


cdef struct Best:
    # one query's search: the k best, a max-heap on (squared distance, index) whose root is
    # the worst kept, and the frontier
    float64_t* d
    intp_t* i
    intp_t count
    intp_t k
    int64_t evals            # distances evaluated for this query
    # the search's frontier: a min-heap of nodes by (box bound, smallest index), one entry per
    # node at most
    float64_t* qb            # bound
    intp_t* ql               # smallest index
    intp_t* qu               # node
    intp_t nq


cdef inline float64_t box_bound(const Tree* T, intp_t u, const float64_t* q) noexcept nogil:
    """A lower bound on sqdist(q, x) for every point x in node u's box (see the opening
    comment)."""
    cdef const float64_t* lo = T.box + 2 * u * T.dim
    cdef const float64_t* hi = lo + T.dim
    cdef float64_t b = 0.0, diff
    cdef intp_t a
    for a in range(T.dim):
        if q[a] < lo[a]:
            diff = q[a] - lo[a]
        elif q[a] > hi[a]:
            diff = q[a] - hi[a]
        else:
            diff = 0.0
        b += diff * diff
    return b * BOUND_SHRINK


cdef inline bint hopeless(const Tree* T, const Best* B, intp_t u, float64_t bound,
                          int64_t limit) noexcept nogil:
    """True if no point under u can enter the k best: all indices >= limit, or its best
    possible (bound, smallest index) comes after the worst kept."""
    if T.low[u] >= limit:
        return True
    return B.count == B.k and not closer(bound, T.low[u], B.d[0], B.i[0])


cdef void scan_leaf(const Tree* T, Best* B, intp_t u, const float64_t* q, int64_t limit,
                    int64_t self_index) noexcept nogil:
    """Offer the leaf's points with index < limit, other than self_index, to the k best."""
    cdef intp_t s, j
    cdef float64_t d
    for s in range(T.start[u], T.stop[u]):
        j = T.index[s]
        if j >= limit or j == self_index:
            continue
        d = sqdist(q, T.x + s * T.dim, T.dim)
        B.evals += 1
        if B.count < B.k or closer(d, j, B.d[0], B.i[0]):
            best_offer(B.d, B.i, &B.count, B.k, d, j)


cdef inline void _node_put(Best* B, intp_t pos, float64_t b, intp_t low,
                           intp_t u) noexcept nogil:
    """(b, low, u) at position pos of the search's min-heap (one step of a sift, or its end)."""
    B.qb[pos] = b
    B.ql[pos] = low
    B.qu[pos] = u


cdef inline void node_push(Best* B, float64_t b, intp_t low, intp_t u) noexcept nogil:
    """Push node u (bound b, smallest index low) on the search's min-heap."""
    cdef intp_t pos = B.nq, parent
    B.nq += 1
    while pos > 0:
        parent = (pos - 1) // 2
        if not closer(b, low, B.qb[parent], B.ql[parent]):
            break
        _node_put(B, pos, B.qb[parent], B.ql[parent], B.qu[parent])
        pos = parent
    _node_put(B, pos, b, low, u)


cdef inline void node_pop(Best* B) noexcept nogil:
    """Remove the first node of the search's min-heap (read it from index 0 first)."""
    cdef intp_t pos = 0, child, n, u, low
    cdef float64_t b
    B.nq -= 1
    n = B.nq
    if n == 0:
        return
    b = B.qb[n]
    low = B.ql[n]
    u = B.qu[n]
    while True:
        child = 2 * pos + 1
        if child >= n:
            break
        if child + 1 < n and closer(B.qb[child + 1], B.ql[child + 1], B.qb[child],
                                    B.ql[child]):
            child += 1
        if not closer(B.qb[child], B.ql[child], b, low):
            break
        _node_put(B, pos, B.qb[child], B.ql[child], B.qu[child])
        pos = child
    _node_put(B, pos, b, low, u)


cdef void search(const Tree* T, Best* B, const float64_t* q, int64_t limit,
                 int64_t self_index) noexcept nogil:
    """The k nearest points to q with index < limit, other than self_index, into B."""
    cdef intp_t u, c
    cdef float64_t b, b1, b2
    B.count = 0
    B.evals = 0
    B.nq = 0
    node_push(B, box_bound(T, 0, q), T.low[0], 0)
    while B.nq > 0:
        u = B.qu[0]
        b = B.qb[0]
        node_pop(B)
        if B.count == B.k and not closer(b, T.low[u], B.d[0], B.i[0]):
            return                 # every node left comes after this one: none can enter
        # descend to a leaf through the better child, deferring the other one
        while not hopeless(T, B, u, b, limit):
            if u >= T.first_leaf:
                scan_leaf(T, B, u, q, limit, self_index)
                break
            c = 2 * u + 1
            b1 = box_bound(T, c, q)
            b2 = box_bound(T, c + 1, q)
            if closer(b2, T.low[c + 1], b1, T.low[c]):
                c += 1
                b1, b2 = b2, b1
            if not hopeless(T, B, 4 * u + 3 - c, b2, limit):      # the sibling of c
                node_push(B, b2, T.low[4 * u + 3 - c], 4 * u + 3 - c)
            u = c
            b = b1


cdef void write_row(Best* B, float64_t* out_d, int64_t* out_i) noexcept nogil:
    """The k best ascending by (distance, index), padded with inf / -1 (empties B).

    As the brute force does, the order is that of the distances, not of their squares: two
    squares an ulp apart can have the same root, and then the smaller index comes first.
    """
    cdef intp_t j, m, count = B.count
    cdef float64_t d
    cdef int64_t i
    for j in range(count, B.k):
        out_d[j] = INFINITY
        out_i[j] = -1
    for j in range(count - 1, -1, -1):      # the heap's root is the worst kept
        out_d[j] = sqrt(B.d[0])
        out_i[j] = B.i[0]
        best_pop(B.d, B.i, j + 1)
    for j in range(1, count):               # insertion sort: at most a few equal roots move
        d = out_d[j]
        i = out_i[j]
        m = j
        while m > 0 and closer(d, i, out_d[m - 1], out_i[m - 1]):
            out_d[m] = out_d[m - 1]
            out_i[m] = out_i[m - 1]
            m -= 1
        out_d[m] = d
        out_i[m] = i


cdef struct Job:
    # what a query run reads: the queries' coordinates, and per query its row of the output,
    # the bound on candidate indices and the index it must not return
    const Tree* T
    const float64_t* xq      # (n_queries, dim)
    const int64_t* visit     # the queries in the order to answer them
    intp_t n_visit
    const int64_t* out_row   # query -> output row
    const int64_t* limit     # query -> candidates must have index < limit (NULL: no bound)
    const int64_t* self_index    # query -> excluded index (NULL: none)
    float64_t* out_d         # (rows, k)
    int64_t* out_i
    int64_t* out_evals       # (rows,): the distances each query evaluated
    intp_t k
    Interrupt* stop


cdef int run(const Job* J, int num_threads) noexcept nogil:
    """prange over chunks of J.visit, one workspace (top k, frontier) per thread; returns 1
    if a thread could not allocate it."""
    cdef intp_t n_chunks = (J.n_visit + CHUNK - 1) // CHUNK, c, t, v, r
    cdef size_t nd = J.k * sizeof(float64_t), ni = J.k * sizeof(intp_t)
    cdef size_t nodes = 2 * J.T.first_leaf + 1
    cdef size_t nqb = nodes * sizeof(float64_t), nqu = nodes * sizeof(intp_t)
    cdef int64_t big = 0x7fffffffffffffff
    cdef int failed = 0
    cdef char* work
    cdef char* at
    cdef Best* B
    with parallel(num_threads=num_threads):
        work = workspace_new(span(sizeof(Best)) + span(nd) + span(ni) + span(nqb) + 2 * span(nqu),
                             &failed)
        at = work
        B = <Best*>carve(&at, sizeof(Best))
        if B != NULL:
            B.d = <float64_t*>carve(&at, nd)
            B.i = <intp_t*>carve(&at, ni)
            B.qb = <float64_t*>carve(&at, nqb)
            B.ql = <intp_t*>carve(&at, nqu)
            B.qu = <intp_t*>carve(&at, nqu)
            B.k = J.k
        for c in prange(n_chunks, schedule='dynamic'):
            if work != NULL and not interrupted(J.stop):
                for t in range(c * CHUNK, min((c + 1) * CHUNK, J.n_visit)):
                    v = J.visit[t]
                    r = J.out_row[v]
                    search(J.T, B, J.xq + v * J.T.dim,
                           J.limit[v] if J.limit != NULL else big,
                           J.self_index[v] if J.self_index != NULL else -1)
                    write_row(B, J.out_d + r * J.k, J.out_i + r * J.k)
                    J.out_evals[r] = B.evals
        # end: prange
        free(work)
    return failed


def knn(tuple tree, const float64_t[:, ::1] xq, const int64_t[::1] visit, tuple rules,
        tuple out, int num_threads):
    """The k nearest neighbours of the queries xq[visit], answered in that order.

    tree = (x, index, start, stop, box, low, first_leaf) as built by ``build``; rules =
    (out_row, limit, self_index): per query its output row, the bound on candidate indices
    (None: none) and the index it may not return (None: none); out = (dist, idx, evals):
    (rows, k) twice and the (rows,) distances evaluated per query. Arguments are already
    checked (residual/kdtree.py).
    """
    cdef Tree T
    cdef Job J
    cdef Interrupt stop
    cdef int status
    cdef const float64_t[:, ::1] x = tree[0]
    cdef const intp_t[::1] index = tree[1]
    cdef const intp_t[::1] start = tree[2]
    cdef const intp_t[::1] stop_ = tree[3]
    cdef const float64_t[:, ::1] box = tree[4]
    cdef const intp_t[::1] low = tree[5]
    cdef const int64_t[::1] out_row = rules[0]
    cdef const int64_t[::1] limit
    cdef const int64_t[::1] self_index
    cdef float64_t[:, ::1] out_d = out[0]
    cdef int64_t[:, ::1] out_i = out[1]
    cdef int64_t[::1] out_evals = out[2]
    if visit.shape[0] == 0:
        return
    T.dim = x.shape[1]
    T.first_leaf = tree[6]
    T.x, T.index, T.start, T.stop = &x[0, 0], &index[0], &start[0], &stop_[0]
    T.box, T.low = &box[0, 0], &low[0]
    J.T = &T
    J.xq = &xq[0, 0]
    J.visit, J.n_visit = &visit[0], visit.shape[0]
    J.out_row = &out_row[0]
    J.limit = J.self_index = NULL
    if rules[1] is not None:
        limit = rules[1]
        J.limit = &limit[0]
    if rules[2] is not None:
        self_index = rules[2]
        J.self_index = &self_index[0]
    J.out_d, J.out_i, J.k = &out_d[0, 0], &out_i[0, 0], out_d.shape[1]
    J.out_evals = &out_evals[0]
    interrupt_init(&stop)
    J.stop = &stop
    with nogil:
        status = run(&J, num_threads)
    reraise(&stop)
    if status != 0:
        raise MemoryError("could not allocate the per-thread workspaces")


# -- the build ------------------------------------------------------------------------------------

cdef void fill_node(float64_t* x, intp_t* index, intp_t dim, float64_t* box, intp_t lo,
                    intp_t hi, bint split) noexcept nogil:
    """The bounding box of slots lo..hi-1 into box (lower corner, upper corner); if split,
    partition them at the middle slot along the coordinate of widest spread."""
    cdef intp_t a, t, axis = 0
    cdef float64_t v, wide = -1.0
    for a in range(dim):
        box[a] = INFINITY
        box[dim + a] = -INFINITY
    for t in range(lo, hi):
        for a in range(dim):
            v = x[t * dim + a]
            box[a] = v if v < box[a] else box[a]
            box[dim + a] = v if v > box[dim + a] else box[dim + a]
    if not split:
        return
    for a in range(dim):
        if box[dim + a] - box[a] > wide:
            wide = box[dim + a] - box[a]
            axis = a
    split_at(index, x, dim, lo, hi, lo + (hi - lo) // 2, axis)


def build(const float64_t[:, ::1] x_in, intp_t leaf_size, int num_threads):
    """The k-d tree of the rows of x_in, leaves of at most leaf_size points:
    ``(x, index, start, stop, box, low, first_leaf)`` as ``knn`` reads it."""
    cdef intp_t n = x_in.shape[0], dim = x_in.shape[1], depth = 0, u, first, last, lv, a
    cdef intp_t nodes
    while (n + (1 << depth) - 1) >> depth > leaf_size:
        depth += 1
    nodes = (2 << depth) - 1
    x_a = np.array(x_in)
    index_a = np.arange(n, dtype=np.intp)
    start_a = np.empty(nodes, dtype=np.intp)
    stop_a = np.empty(nodes, dtype=np.intp)
    box_a = np.empty((nodes, 2 * dim))
    low_a = np.empty(nodes, dtype=np.intp)
    cdef float64_t[:, ::1] x = x_a
    cdef intp_t[::1] index = index_a
    cdef intp_t[::1] start = start_a
    cdef intp_t[::1] stop = stop_a
    cdef float64_t[:, ::1] box = box_a
    cdef intp_t[::1] low = low_a
    with nogil:
        start[0] = 0
        stop[0] = n
        for lv in range(depth + 1):
            first = (1 << lv) - 1
            last = (2 << lv) - 1
            if lv < depth:        # the children's ranges: each node is cut at its middle slot
                for u in range(first, last):
                    start[2 * u + 1] = start[u]
                    stop[2 * u + 1] = start[u] + (stop[u] - start[u]) // 2
                    start[2 * u + 2] = stop[2 * u + 1]
                    stop[2 * u + 2] = stop[u]
            for u in prange(first, last, num_threads=num_threads if last - first > 1 else 1,
                            schedule='dynamic'):
                fill_node(&x[0, 0], &index[0], dim, &box[u, 0], start[u], stop[u],
                          lv < depth)
        for u in range(nodes - 1, -1, -1):   # children first
            if u >= (1 << depth) - 1:
                low[u] = index[start[u]]
                for a in range(start[u] + 1, stop[u]):
                    low[u] = index[a] if index[a] < low[u] else low[u]
            else:
                low[u] = min(low[2 * u + 1], low[2 * u + 2])
    return x_a, index_a, start_a, stop_a, box_a, low_a, (1 << depth) - 1
