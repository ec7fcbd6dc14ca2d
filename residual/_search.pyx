# Exact kNN search on the compressed cover tree (ALGORITHMS.md sections 5-6).
#
# One query at a time, best-first: a min-heap of nodes keyed by the lower bound
# max(0, d(q, u) - R(u)) on the distance to anything in u's subtree, and a bounded max-heap of
# the k best (squared distance, index) pairs so far (the oracle's selection key), whose top's
# square root is tau. A node is popped while its bound
# is <= tau (plus slack for rounding), so ties with the k-th stay reachable; a child c is not
# even evaluated when |d(q, parent) - pd(c)| - R(c) > tau (triangle inequality). Predecessor
# queries (row i: only j < i) enter a subtree only if its smallest index is < i, and offer only
# eligible points; ineligible nodes still route the search. Aliases (points at distance 0 from
# a node) are offered with their node.
#
# A query starts with an upper bound on its k-th distance when it can: the k-th smallest of its
# distances to the previous query's answer (plus that query itself), on the same thread. Queries
# come in an order that keeps neighbours together, so the bound is usually nearly tight and
# prunes from the first step, where an empty top-k would admit everything. The bound only
# prunes what cannot be among the k nearest (ties stay reachable), so answers are unchanged.
#
# Queries are independent and read-only: prange over queries (Euclidean) or over groups of
# consecutive queries that share one traversal (residual, see _search_group), one Scratch workspace
# per thread (_workspace.pxd: a thread that cannot get one sets the shared flag, and knn() raises
# MemoryError). Distances are float64 (the residual dot products in small tiles, see
# RESIDUAL_DOT_TILE; with the float32 screen, float32 products and bounds first), on a
# breadth-first copy of the tree
# (SearchLayout: the tree's Metric with its rows in node order) so that a node's children and their
# rows are adjacent in memory. The bounded top-k heap and the (dist, idx) order are the shared ones
# of _heap.pxd and _tiles.pxd. Ctrl-C is checked before every query or group (_interrupt.pxd).
# Residual searches bound each key rather than trust the tree's last bits, and score their
# final candidates with the brute force's arithmetic ("bounded search", below).

from cython.parallel cimport prange, parallel
from libc.math cimport sqrt, fabs, INFINITY
from libc.stdlib cimport calloc, malloc, realloc, free
from libc.stdint cimport uint64_t
from libc.string cimport memset

import numpy as np

from residual._typedefs cimport float32_t, float64_t, intp_t, int64_t
from residual._tiles cimport (Metric, Points, Slack32, closer, residual_key, sqdist,
                              kernel32_row, kernel_of_sqdist, kernel_value, key_lower,
                              key_upper)
from residual._blas cimport gemm_elements
from residual._heap cimport best_offer, best_pop, frontier_push, frontier_pop, prefetch
from residual._interrupt cimport Interrupt, interrupt_init, interrupted, reraise
from residual._workspace cimport carve, span, workspace_new


cdef struct Node:
    # One cache line per node. Nodes are numbered breadth-first, so the children of a node
    # are the consecutive nodes [child_begin, child_end) and their records and coordinates
    # are read in order instead of gathered from seven scattered arrays.
    float64_t radius         # covering radius
    float64_t pdist          # distance to the parent
    int64_t min_index        # smallest point index in the subtree (predecessor queries)
    int64_t point            # the row this node is in the caller's numbering
    int64_t child_begin
    int64_t child_end
    int64_t alias_begin      # aliases (rows at distance 0 from this node) in Tree.aliases
    int64_t alias_end


cdef struct Tree:
    const Node* node          # node 0 is the root
    const int64_t* aliases
    const int64_t* node_of    # row -> node number
    float64_t slack
    # the bounded search (residual, see "bounded search" below): the layout's |v| and
    # _slack64's terms; with the float32 screen (v32 NULL: off) its V rows in float32 and
    # the float32 bound's terms
    bint bounded
    const unsigned char* alias_exact    # node -> its aliases are bit-identical rows
    const float64_t* norm
    Slack32 bound64
    const float32_t* v32
    Slack32 bound


cdef class SearchLayout:
    """The tree renumbered breadth-first for the search: one packed record per node, the
    metric with its rows in node order (``Metric.take(order)``) and the tree's slack.

    Built once per tree (``CoverTree._layout``); read-only afterwards, shared by all threads.
    """
    cdef Node* node
    cdef readonly intp_t n_nodes
    cdef readonly Metric metric
    cdef readonly float64_t slack
    cdef readonly object aliases
    cdef readonly object node_of      # row -> its node's number (an alias: its node's)
    cdef readonly object alias_exact  # node -> 1 if its aliases' rows are its own, bit for bit

    def __cinit__(self, tree, const int64_t[::1] order, Metric metric, float64_t slack):
        """tree: a CoverTree (its node arrays and its metric are read); order: its nodes
        breadth-first; metric: its metric with the rows in that order; slack: its slack."""
        cdef const int64_t[::1] child_count = np.diff(tree.children_ptr).astype(np.int64)
        cdef const int64_t[::1] alias_ptr = tree.aliases_ptr.astype(np.int64)
        cdef const float64_t[::1] radius = tree.radii
        cdef const float64_t[::1] pdist = tree.parent_distances
        cdef const int64_t[::1] min_index = tree.min_index
        aliases = tree.aliases
        cdef intp_t j, u, nn = order.shape[0]
        cdef int64_t nxt = 1
        self.n_nodes = nn
        self.node = <Node*>malloc(max(nn, 1) * sizeof(Node))
        if self.node == NULL:
            raise MemoryError("could not allocate the search layout")
        for j in range(nn):
            u = order[j]
            self.node[j].radius = radius[u]
            self.node[j].pdist = pdist[u]
            self.node[j].min_index = min_index[u]
            self.node[j].point = u
            self.node[j].child_begin = nxt
            nxt += child_count[u]
            self.node[j].child_end = nxt
            self.node[j].alias_begin = alias_ptr[u]
            self.node[j].alias_end = alias_ptr[u + 1]
        if nxt != nn:
            raise ValueError("order is not the breadth-first numbering of the tree")
        self.aliases = np.ascontiguousarray(aliases, dtype=np.int64)
        node_of = np.full(nn + len(self.aliases), -1, dtype=np.int64)
        node_of[np.asarray(order)] = np.arange(nn)
        counts = np.diff(np.asarray(alias_ptr))           # aliases are listed by row
        node_of[self.aliases] = node_of[np.repeat(np.arange(counts.size), counts)]
        self.node_of = node_of
        # An alias is a row at computed distance 0 from its node: a duplicate, or (residual)
        # a row whose correlation with it rounds to 1, which can be ~1e-4 away in truth (see
        # the bounded search's aliases)
        rows = tree._metric
        a = self.aliases
        at = np.asarray(order)[node_of[a]]     # the rows of their nodes
        same = (rows.x[a] == rows.x[at]).all(axis=1)
        if rows.v is not None:
            same &= (rows.v[a] == rows.v[at]).all(axis=1) & (rows.s[a] == rows.s[at])
        self.alias_exact = np.ones(nn, dtype=np.uint8)
        np.logical_and.at(self.alias_exact, node_of[a], same)
        self.metric = metric
        self.slack = slack

    def __dealloc__(self):
        free(self.node)


cdef struct Kept:
    # A candidate of the bounded search: a node with its lower bound on the key.
    float64_t lo
    intp_t node
    bint f32                # bounded in float32 (for the counters)


cdef struct Query:
    const float64_t* x      # coordinates, V row, 1/sqrt(p)
    const float64_t* v
    float64_t s
    intp_t self_index       # excluded row, or -1
    intp_t limit            # only rows < limit are eligible (predecessors), else n
    float64_t key0          # the seeds' bound on the k-th key (inf: none)
    float64_t tau           # the current bound on the k-th distance
    intp_t count            # entries in the k best
    float64_t* hd           # the k best, a max-heap (this query's slice of the workspace;
                            # in the bounded search, of upper bounds until _rescore)
    intp_t* hi
    int64_t evals           # pairs evaluated, of which
    int64_t screened        # bounded in float32 (the float32 screen), and of those
    int64_t recomputed      # the candidates rescored in float64 at the end
    # the bounded search (see "bounded search" below)
    float64_t norm          # |v|
    bint exact              # its pairs in float64 (no float32 screen, or its bound is loose)
    const float32_t* v32    # the float32 screen: its V row in float32
    Kept* kept              # its candidates (kcap slots, nkept used; malloc'd, grows)
    intp_t nkept, kcap


cdef struct Pool:
    # A frontier entry's data: for each pushed node, its distance to each query of the group
    # and the mask of the queries that need its subtree. Slots are recycled as entries are
    # popped, so the pool holds the frontier, not the tree (it grows by doubling if needed).
    float64_t* d            # cap x stride: per query, the distance, or with the float32
                            # screen a lower then (`upper` on) an upper bound on it
    intp_t stride, upper    # GROUP and 0, or 2 GROUP and GROUP
    uint64_t* mask          # cap
    intp_t* node            # cap
    intp_t* free_slots      # cap: a stack of recycled slots
    intp_t n_free, used, cap


cdef struct Scratch:
    # One thread's workspace for a whole knn() call (_scratch_new / _scratch_free): the k
    # best of the queries in flight, the frontier (one entry per node), the seeds and, for
    # the residual groups, the frontier pool.
    Query* Q                 # residual groups: the queries in flight, each with its slice
                             # of hd and hi
    float64_t* hd            # (queries in flight) x k
    intp_t* hi
    float64_t* fl
    float64_t* fd
    intp_t* fn
    int64_t* seeds           # the previous answer and its row: the next query's seeds (k + 1)
    Pool* pool               # residual groups: the frontier pool
    float64_t* tile          # residual groups: dot products of the queries with a tile of
    intp_t* tile_nodes       # children (GROUP x TILE_NODES), and those children
    float32_t* tile32        # the same products in float32 (the float32 screen)
    float64_t* rkey          # the bounded search's rescoring (_rescore): keys, rows and V
    intp_t* ridx             # rows of a query's candidates (rcap of each; malloc'd, grow)
    const float64_t** rptr
    intp_t rcap, in_flight


cdef struct Job:
    # One knn() call as the residual groups read it (see knn's docstring).
    const Points* queries
    bint in_sample, predecessors
    const int64_t* rows      # in-sample: the point each query is
    intp_t k, n
    float64_t* out_dist      # (n_queries, k), row-major
    int64_t* out_idx
    int64_t* ev              # distance evaluations per query, and of them those known only
    int64_t* screened        # by their float32 bounds and those the float32 screen passed
    int64_t* recomputed      # on to the rescoring
    const float64_t* norm    # the bounded search: the queries' norms, which of them are
    const unsigned char* exact   # exact, the indexed rows in the caller's order and
    const Points* indexed    # dgemm's blocking (for _rescore), and with the float32
    long chain_q, chain_u    # screen the queries' V rows in float32
    const float32_t* v32
    int* failed              # set when a thread got no workspace (knn raises MemoryError)
    const int64_t* visit
    int num_threads
    intp_t chunk
    Interrupt* stop


cdef int64_t _search(const Points* P, const Tree* T, const float64_t* xq, intp_t self_index,
                     intp_t limit, intp_t k, const Scratch* W, intp_t* found) noexcept nogil:
    """k nearest eligible points to one Euclidean query, left in W.hd, W.hi (a max-heap of
    found[0] entries, for _emit); returns the distance evaluations.

    self_index: the query's own row (excluded), or -1. limit: only indices < limit are
    eligible and only subtrees with min_index < limit are entered (predecessors), else n.
    W.seeds: k + 1 distinct rows (-1 = none) whose distances give a first bound on the k-th.
    Nodes are the layout's numbers (P holds their rows); offered indices are rows.
    """
    cdef intp_t count = 0, size = 0, u, c, t, j
    cdef float64_t* hd = W.hd
    cdef intp_t* hi = W.hi
    cdef float64_t* fl = W.fl
    cdef float64_t* fd = W.fd
    cdef intp_t* fn = W.fn
    cdef int64_t evals = 1
    cdef float64_t tau, lb, du, dc, key, d0
    cdef const Node* nc
    # the bound: the k-th smallest key to the eligible seeds (a max-heap of the k best in
    # hd, hi, emptied again below), else none
    cdef float64_t key0 = INFINITY
    for j in range(k + 1):
        t = W.seeds[j]
        if t >= 0 and t != self_index and t < limit:
            best_offer(hd, hi, &count, k, sqdist(xq, P.x + T.node_of[t] * P.dim, P.dim), t)
            evals += 1
    if count == k:
        key0 = hd[0]
    # the k best from here on (count entries): _offer_node reads eligibility and the heap
    cdef Query q
    q.self_index = self_index
    q.limit = limit
    q.hd = hd
    q.hi = hi
    count = 0
    key = sqdist(xq, P.x, P.dim)
    d0 = sqrt(key)
    if key <= key0:
        _offer_node(T, 0, key, k, &q, &count, True)
    frontier_push(fl, fd, fn, &size, 0.0, d0, 0)
    tau = sqrt(hd[0]) if count == k else sqrt(key0)
    while size > 0:
        lb = fl[0]
        du = fd[0]
        u = fn[0]
        if lb > tau + T.slack:
            break
        frontier_pop(fl, fd, fn, &size)
        for c in range(T.node[u].child_begin, T.node[u].child_end):
            nc = &T.node[c]
            if nc.min_index >= limit:
                continue                    # nothing eligible below c
            if fabs(du - nc.pdist) - nc.radius > tau + T.slack:
                continue                    # the parent distance already rules c out
            key = sqdist(xq, P.x + c * P.dim, P.dim)
            evals += 1
            # else c and its aliases cannot enter the k best (with the seeds' bound: k eligible
            # points are no farther than key0, and the search offers them all)
            if key <= key0 and (count < k or key <= hd[0]):
                _offer_node(T, c, key, k, &q, &count, True)
                tau = sqrt(hd[0]) if count == k else sqrt(key0)
            if nc.child_end == nc.child_begin:
                continue                    # a leaf: nothing to enter
            dc = sqrt(key)
            lb = dc - nc.radius
            if lb <= tau + T.slack:
                # its children's records and rows are read when it is popped: load them now
                prefetch(&T.node[nc.child_begin])
                prefetch(P.x + nc.child_begin * P.dim)
                frontier_push(fl, fd, fn, &size, lb if lb > 0.0 else 0.0, dc, c)
    found[0] = count
    return evals


cdef inline void _set_seeds(int64_t* seeds, const int64_t* answer, intp_t k,
                            intp_t row) noexcept nogil:
    """The next search's seeds: this query's answer and its own row (-1 for a new point)."""
    cdef intp_t j
    for j in range(k):
        seeds[j] = answer[j]
    seeds[k] = row


cdef void _emit(float64_t* hd, intp_t* hi, intp_t count, intp_t k, float64_t* out_d,
                int64_t* out_i) noexcept nogil:
    """Write the k best (a max-heap of count entries, emptied) as one output row."""
    cdef intp_t j, t
    # by (squared distance, index), as the oracle selects them: pop the max-heap from the
    # back, then take square roots and order by (distance, index), since two keys one ulp
    # apart can share a square root
    j = count
    while j > 0:
        j -= 1
        out_d[j] = sqrt(hd[0])
        out_i[j] = hi[0]
        best_pop(hd, hi, j + 1)
    for j in range(1, count):           # insertion sort: already sorted but for such ties
        t = j
        while t > 0 and closer(out_d[t], out_i[t], out_d[t - 1], out_i[t - 1]):
            out_d[t], out_d[t - 1] = out_d[t - 1], out_d[t]
            out_i[t], out_i[t - 1] = out_i[t - 1], out_i[t]
            t -= 1
    for j in range(count, k):
        out_d[j] = INFINITY
        out_i[j] = -1


cdef inline void _offer_node(const Tree* T, intp_t c, float64_t d, intp_t k, const Query* q,
                             intp_t* count, bint aliases) noexcept nogil:
    """Offer node c's row and, if `aliases`, its aliases (same key d) to q's k best (q.hd,
    q.hi and count entries) if eligible for q (q.self_index, q.limit)."""
    cdef intp_t t, a
    cdef const Node* nc = &T.node[c]
    if nc.point != q.self_index and nc.point < q.limit:
        best_offer(q.hd, q.hi, count, k, d, nc.point)
    if not aliases:
        return
    for t in range(nc.alias_begin, nc.alias_end):
        a = T.aliases[t]
        if a != q.self_index and a < q.limit:
            best_offer(q.hd, q.hi, count, k, d, a)


# -- residual metric: queries in groups ----------------------------------------------------------
#
# A residual evaluation reads a 4 KB row of V, and one query's search reads thousands of rows
# spread over the whole matrix: one query at a time, the search waits on memory for every pair.
# Neighbouring queries (consecutive in the visit order) need mostly the same nodes, so GROUP of
# them share one best-first traversal: a node is entered while any of them may still find
# something below it, each child's row is read once and scored against every query that needs
# it, and each query keeps its own k best, bound and eligibility. The traversal order differs
# from a lone search, never the answers: every pruning test is the lone search's test with the
# query's own bound (in the bounded search, on bounds of the distances), and a pair's key is
# computed in one fixed order (the RESIDUAL_DOT_TILE kernels below), so it is the same bits
# whichever group, order or thread evaluates it.

cdef extern from *:
    """
    #include <string.h>
    /* The dot products of four query rows q[0..4) with NC rows c[0..NC) (NC = 1..4), each pair
       summed in one fixed order: W partial sums (lanes j mod W, one vector; W = 8 doubles,
       or 16 floats for the float32 screen), halved pairwise down to four (double: lanes
       0-3 + lanes 4-7), then (l0 + l1) + (l2 + l3), then the tail in order. Every variant
       of a type is this one text and none is inlined; a pair's lanes never mix
       with another's, and C11 mode (meson.build) keeps GCC from fusing multiply-adds (a
       compiler that did would fuse the same expression in every variant). So a pair's sum is
       the same bits whichever variant computes it and whatever the other rows are: a pair's
       key does not depend on the tile it is evaluated in. Each loaded query vector serves
       NC rows and each row vector four queries. out is 4 x NC, row stride 4. */
    #define RESIDUAL_DOT_TILE(NAME, T, W, NC)                                               \
    __attribute__((noinline))                                                               \
    static void NAME(const T* const* q, const T* const* c, Py_ssize_t m, T* out) {          \
        typedef T vec __attribute__((vector_size(W * sizeof(T))));                          \
        const vec zero = {0};                                                               \
        vec a[4][NC], y[NC], x;                                                             \
        T lanes[W];                                                                         \
        Py_ssize_t j = 0, t;                                                                \
        int i, u, h, l;                                                                     \
        for (i = 0; i < 4; i++)                                                             \
            for (u = 0; u < NC; u++) a[i][u] = zero;                                        \
        for (; j + W <= m; j += W) {                                                        \
            for (u = 0; u < NC; u++) memcpy(&y[u], c[u] + j, sizeof x);                     \
            for (i = 0; i < 4; i++) {                                                       \
                memcpy(&x, q[i] + j, sizeof x);                                             \
                for (u = 0; u < NC; u++) a[i][u] += x * y[u];                               \
            }                                                                               \
        }                                                                                   \
        for (i = 0; i < 4; i++)                                                             \
            for (u = 0; u < NC; u++) {                                                      \
                memcpy(lanes, &a[i][u], sizeof lanes);                                      \
                for (h = W / 2; h >= 4; h /= 2)                                             \
                    for (l = 0; l < h; l++) lanes[l] = lanes[l] + lanes[l + h];             \
                T s = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);                        \
                for (t = j; t < m; t++)                                                     \
                    s += q[i][t] * c[u][t];                                                 \
                out[4 * i + u] = s;                                                         \
            }                                                                               \
    }
    RESIDUAL_DOT_TILE(residual_dot_tile1, double, 8, 1)
    RESIDUAL_DOT_TILE(residual_dot_tile2, double, 8, 2)
    RESIDUAL_DOT_TILE(residual_dot_tile3, double, 8, 3)
    RESIDUAL_DOT_TILE(residual_dot_tile4, double, 8, 4)
    RESIDUAL_DOT_TILE(residual_dot32_tile1, float, 16, 1)
    RESIDUAL_DOT_TILE(residual_dot32_tile2, float, 16, 2)
    RESIDUAL_DOT_TILE(residual_dot32_tile3, float, 16, 3)
    RESIDUAL_DOT_TILE(residual_dot32_tile4, float, 16, 4)
    /* out = the tile of four queries with the first nc = 1..4 rows of c. */
    #define RESIDUAL_DOT_TILES(NAME, T, KERNEL)                                                 \
    static void NAME(const T* const* q, const T* const* c, Py_ssize_t m, T* out, int nc) {      \
        if (nc == 4) KERNEL##4(q, c, m, out);                                                   \
        else if (nc == 3) KERNEL##3(q, c, m, out);                                              \
        else if (nc == 2) KERNEL##2(q, c, m, out);                                              \
        else KERNEL##1(q, c, m, out);                                                           \
    }
    RESIDUAL_DOT_TILES(residual_dot_tiles, double, residual_dot_tile)
    RESIDUAL_DOT_TILES(residual_dot32_tiles, float, residual_dot32_tile)
    """
    void _dot_tiles "residual_dot_tiles"(const float64_t* const* q, const float64_t* const* c,
                                         intp_t m, float64_t* out, int nc) noexcept nogil
    void _dot32_tiles "residual_dot32_tiles"(const float32_t* const* q,
                                             const float32_t* const* c, intp_t m,
                                             float32_t* out, int nc) noexcept nogil


cdef enum:
    GROUP = 64          # queries per shared traversal (<= 64: one bit each in a mask)
    POOL_START = 64     # frontier entries a thread's pool holds at first (it doubles as needed)
    TILE_NODES = 256    # children scored per dot-product tile (a thread's tile: GROUP x this)


ctypedef fused real:
    float32_t
    float64_t


cdef void _dot_tile(const real* rows, intp_t m, const Query* Q, const intp_t* act, intp_t na,
                    const intp_t* nodes, intp_t nn, real* out, intp_t ldo) noexcept nogil:
    """out[t * ldo + j] = V_q . V_c for query act[t] (t < na) and node c = nodes[j] (j < nn),
    rows: the layout's V rows (float64: P.v, or float32: Tree.v32, the queries' rows of the
    same precision), in 4 x (1..4) blocks of the RESIDUAL_DOT_TILE kernels (a short block
    repeats its last query, whose extra results are dropped)."""
    cdef const real* qv[4]
    cdef const real* cv[4]
    cdef real block[16]
    cdef intp_t t, j, i, u, nq, nc, line
    j = 0
    while j < nn:
        nc = min(4, nn - j)
        for u in range(nc):
            cv[u] = rows + nodes[j + u] * m
        # the next block's rows come from memory while this block is summed
        for u in range(j + 4, min(j + 8, nn)):
            line = 0
            while line < m:             # one cache line at a time
                prefetch(rows + nodes[u] * m + line)
                line += 64 // sizeof(real)
        t = 0
        while t < na:
            nq = min(4, na - t)
            for i in range(4):
                if real is float32_t:
                    qv[i] = Q[act[t + min(i, nq - 1)]].v32
                else:
                    qv[i] = Q[act[t + min(i, nq - 1)]].v
            if real is float32_t:
                _dot32_tiles(qv, cv, m, block, nc)
            else:
                _dot_tiles(qv, cv, m, block, nc)
            for i in range(nq):
                for u in range(nc):
                    out[(t + i) * ldo + j + u] = block[4 * i + u]
            t += 4
        j += 4


# A child and the queries that score it (_search_group): made by _child_start, then entered
# (_enter, or _enter_bounded in the bounded search).
cdef struct Child:
    intp_t node, na
    intp_t act[GROUP]           # the queries, ascending
    float64_t r2[GROUP]         # their squared distances to it (scaled coordinates)
    float64_t kval[GROUP]       # their kernel values with the child (the float32 screen:
                                # in float32 but for the exact queries)
    float64_t dots[GROUP]       # their float64 dot products V_q . V_c
    float32_t prods[GROUP]      # the float32 screen: the same products in float32


cdef void _child_start(const Points* P, const Query* Q, intp_t c, uint64_t mask,
                       bint float32, Child* ch) noexcept nogil:
    """ch = node c and the queries of mask, with their kernel values (one flat loop; with
    float32, the float32 screen's kernel, _tiles.kernel32_row, for _exact_dots to mend)."""
    cdef intp_t t
    cdef const float64_t* xc = P.x + c * P.dim
    ch.node = c
    ch.na = _members(mask, ch.act)
    for t in range(ch.na):
        ch.r2[t] = sqdist(Q[ch.act[t]].x, xc, P.dim)
    if float32:
        kernel32_row(P.spec, ch.r2, ch.kval, ch.na)
        return
    for t in range(ch.na):
        ch.kval[t] = ch.r2[t]
    kernel_of_sqdist(P.spec, ch.kval, ch.na)


cdef void _keys(const Points* P, const Query* Q, const Child* ch,
                float64_t* keys) noexcept nogil:
    """keys[t] = the squared residual distance of query ch.act[t] to the child (query_key's
    quantity), from its kernel value and float64 dot product."""
    cdef intp_t t
    cdef float64_t sc = P.s[ch.node]
    for t in range(ch.na):
        keys[t] = residual_key(ch.kval[t] - ch.dots[t], Q[ch.act[t]].s, sc)


cdef void _lone_node_keys(const Points* P, const Tree* T, const Query* Q, uint64_t mask,
                          intp_t c, float64_t* lo, float64_t* hi) noexcept nogil:
    """For each query r of mask, its key to node c in float64 (the seeds and the root):
    lo[r] = hi[r] = the key, or in the bounded search bounds on it (_slack64)."""
    cdef Child ch
    cdef float64_t out[GROUP]
    cdef intp_t t, r
    _child_start(P, Q, c, mask, False, &ch)
    _dot_tile(P.v, P.m, Q, ch.act, ch.na, &c, 1, ch.dots, 1)
    if not T.bounded:
        _keys(P, Q, &ch, out)
    for t in range(ch.na):
        r = ch.act[t]
        if T.bounded:
            lo[r] = key_lower(ch.kval[t], ch.dots[t], T.bound64.a * Q[r].norm, T.norm[c],
                              Q[r].s, P.s[c], T.bound64.b, T.bound64.t)
            hi[r] = key_upper(ch.kval[t], ch.dots[t], T.bound64.a * Q[r].norm, T.norm[c],
                              Q[r].s, P.s[c], T.bound64.b, T.bound64.t)
        else:
            lo[r] = out[t]
            hi[r] = out[t]


# The bounded search (residual, Tree.bounded: wherever dgemm's summation order is reproduced,
# _blas.dgemm_chain). The tree sums V_q . V_c in its own order and the brute force, the oracle,
# in dgemm's, so a pair's two keys differ in their last bits; where two candidates are closer
# than that, the tree's own keys would rank them otherwise than the oracle (at n = 131072,
# k = 30: one row in 131072). So a pair is known only within bounds lo <= key <= hi on its
# float64 key, whichever float64 arithmetic computes it: from the tree's float64 key and the
# difference two float64 evaluations can have (_slack64: about 1e-13 relative), or with
# the float32 screen from the float32 product (key_lower, key_upper; _tiles.pyx "float32
# screen": Metric.float32_pays decides, and the rows whose own bound is loose, such as the
# inducing points with p ~ jitter, stay exact: float64). Each query keeps
#   - a max-heap of the k smallest upper bounds hi (so its k-th key is at most the heap's top,
#     and tau = sqrt of that bounds the search as the k-th key does in float64);
#   - its candidates: every node whose lo was at most that bound when it was scored.
# A node whose lo exceeds the bound has a key above the k-th smallest, so it cannot be an
# answer, and a subtree is pruned only when sqrt(lo) - R(c) exceeds tau + slack: nothing that
# can be an answer is lost. A pushed child carries [sqrt(lo), sqrt(hi)] for each query, and
# its children are tested against the interval (_child_mask); in float64 only sqrt(lo), as
# close to the distance (~1e-13 relative) as the tree's slack already absorbs for any
# computed distance (a second bound per query would cost the pool's cache footprint). At
# the end (_rescore) the candidates still within the final bound (about k) are scored with
# the brute force's own arithmetic: the kernel value (sqdist, then the kernel inline) minus
# dgemm's k-blocked FMA chains (_blas.pxd gemm_elements, whose blocking _blas.dgemm_chain
# checked against dgemm), then residual_key; the k best by (key, index), ordered by
# (distance, index) as the brute force orders them, are the answer: the oracle's rows,
# distances bit for bit. With the float32 screen the search makes no float64 dot product but
# for the seeds, the root and the exact rows.
# Aliases share their node's bounds only when their rows are the node's, bit for bit
# (SearchLayout.alias_exact: duplicates). Other aliases (a correlation that rounds to 1; in
# truth up to about the tree's slack away) are not offered to the heap nor used as seeds,
# and their node is a candidate when the lower bound widened by twice the slack in distance
# (_widened) is within the query's bound; _rescore then scores each row on its own.

cdef Slack32 _slack64(intp_t m) noexcept nogil:
    """The bound on the difference of two float64 evaluations of C = k - v_i . v_j, in any
    order, fused or not: each is within gamma'_{2m+2} (|k| + |v_i| |v_j|) (+ m 2^-1070 of
    underflow) of the exact value (_tiles.pyx, "float32 screen"); the factor 1 + 2^-20 and
    the 4w of b cover the float64 roundings of the bound itself."""
    cdef float64_t w = 2.0 ** -53, margin = 1.0 + 2.0 ** -20
    cdef float64_t gamma64 = (2 * m + 2) * w / (1.0 - (2 * m + 2) * w)
    cdef Slack32 out
    out.a = margin * 2 * gamma64
    out.b = 2 * gamma64 + 4 * w
    out.t = margin * 2 * m * 2.0 ** -1070
    return out


cdef inline float64_t _widened(float64_t lo, float64_t slack) noexcept nogil:
    """A lower bound on the key of a node's alias that is not its row (see above)."""
    cdef float64_t d = sqrt(lo) - 2.0 * slack
    return d * d if d > 0.0 else 0.0


cdef inline float64_t _bound(const Query* q, intp_t k) noexcept nogil:
    """A query's bound on its k-th key now: its heap's top when full, and the seeds'."""
    return min(q.key0, q.hd[0]) if q.count == k else q.key0


cdef int _keep(Query* q, float64_t lo, intp_t node, bint f32, intp_t k) noexcept nogil:
    """Add node to q's candidates; a full buffer first drops those above the bound, and
    doubles if that leaves more than half. Returns 0, or -1 when it could not grow."""
    cdef intp_t x, w = 0
    cdef float64_t thr
    if q.nkept == q.kcap:
        thr = _bound(q, k)
        for x in range(q.nkept):
            if q.kept[x].lo <= thr:
                q.kept[w] = q.kept[x]
                w += 1
        q.nkept = w
        if w > q.kcap // 2:
            if not _grow(<void**>&q.kept, 2 * q.kcap * sizeof(Kept)):
                return -1
            q.kcap *= 2
    q.kept[q.nkept].lo = lo
    q.kept[q.nkept].node = node
    q.kept[q.nkept].f32 = f32
    q.nkept += 1
    return 0


cdef extern from *:
    """
    #define RESIDUAL_LOWEST_BIT(x) ((Py_ssize_t)__builtin_ctzll(x))
    """
    intp_t lowest_bit "RESIDUAL_LOWEST_BIT"(uint64_t x) noexcept nogil   # x != 0


cdef inline uint64_t _child_mask(const Node* nc, const Query* Q, uint64_t mask,
                                 const float64_t* du, intp_t upper,
                                 float64_t slack) noexcept nogil:
    """The queries of mask that must score child nc: the lone search's tests, query by query
    (its subtree holds an eligible row, and the parent distance does not rule it out: du[r]
    and du[upper + r] bound it; with upper = 0, max(...) is |du[r] - pdist|)."""
    cdef uint64_t cmask = 0, bit
    cdef intp_t r
    while mask:                         # the set bits only
        r = lowest_bit(mask)
        bit = <uint64_t>1 << r
        mask ^= bit
        if (nc.min_index < Q[r].limit and max(du[r] - nc.pdist, nc.pdist - du[upper + r])
                - nc.radius <= Q[r].tau + slack):
            cmask |= bit
    return cmask


cdef inline intp_t _members(uint64_t mask, intp_t* act) noexcept nogil:
    """The queries of mask in increasing order into act; returns their number."""
    cdef intp_t na = 0
    while mask:
        act[na] = lowest_bit(mask)
        mask &= mask - 1
        na += 1
    return na


cdef inline void _offer(const Tree* T, Query* q, intp_t c, float64_t key, intp_t k,
                        bint aliases) noexcept nogil:
    """Offer node c (and, if `aliases`, its aliases) to q's k best if it can enter them;
    update q's bound. (The bounded search offers the aliases only when their rows are the
    node's: see "aliases" there.)"""
    if key <= q.key0 and (q.count < k or key <= q.hd[0]):
        _offer_node(T, c, key, k, q, &q.count, aliases)
        q.tau = sqrt(q.hd[0]) if q.count == k else sqrt(q.key0)


cdef int _pool_init(Pool* pool, intp_t cap, bint intervals) noexcept nogil:
    """Allocate cap slots; returns 0, or -1 when out of memory (pool then holds NULLs)."""
    pool.cap = max(cap, 1)
    pool.n_free = 0
    pool.used = 0
    pool.stride = 2 * GROUP if intervals else GROUP
    pool.upper = GROUP if intervals else 0
    pool.d = <float64_t*>malloc(pool.cap * pool.stride * sizeof(float64_t))
    pool.mask = <uint64_t*>malloc(pool.cap * sizeof(uint64_t))
    pool.node = <intp_t*>malloc(pool.cap * sizeof(intp_t))
    pool.free_slots = <intp_t*>malloc(pool.cap * sizeof(intp_t))
    if pool.d == NULL or pool.mask == NULL or pool.node == NULL or pool.free_slots == NULL:
        return -1
    return 0


cdef void _pool_free(Pool* pool) noexcept nogil:
    free(pool.d)
    free(pool.mask)
    free(pool.node)
    free(pool.free_slots)


cdef inline bint _grow(void** block, size_t nbytes) noexcept nogil:
    """realloc *block to nbytes; False (and *block unchanged) when out of memory."""
    cdef void* p = realloc(block[0], nbytes)
    if p == NULL:
        return False
    block[0] = p
    return True


cdef intp_t _pool_take(Pool* pool) noexcept nogil:
    """A free slot, or -1 when the pool cannot grow."""
    cdef intp_t cap
    if pool.n_free > 0:
        pool.n_free -= 1
        return pool.free_slots[pool.n_free]
    if pool.used == pool.cap:
        cap = 2 * pool.cap
        if not (_grow(<void**>&pool.d, cap * pool.stride * sizeof(float64_t))
                and _grow(<void**>&pool.mask, cap * sizeof(uint64_t))
                and _grow(<void**>&pool.node, cap * sizeof(intp_t))
                and _grow(<void**>&pool.free_slots, cap * sizeof(intp_t))):
            return -1
        pool.cap = cap
    pool.used += 1
    return pool.used - 1


cdef int _enter(const Points* P, const Tree* T, Query* Q, intp_t k, const Child* ch,
                const Scratch* W, intp_t* size) noexcept nogil:
    """Score the child ch (of the node being expanded) for its queries, from their
    kernel values and float64 dot products: offer it to each, and push it with the distances
    of the queries that may find something below it. Returns 0, or -1 when the pool could
    not grow."""
    cdef Pool* pool = W.pool
    cdef intp_t c = ch.node
    cdef const Node* nc = &T.node[c]
    cdef float64_t keys[GROUP]
    cdef float64_t d, b, lbc = INFINITY, slack = T.slack
    cdef intp_t t, r, cslot = -1
    cdef uint64_t pmask = 0
    cdef Query* q
    cdef float64_t* dc = NULL
    if ch.na == 0:
        return 0
    _keys(P, Q, ch, keys)
    if nc.child_end > nc.child_begin:
        cslot = _pool_take(pool)        # where c's distances go if it is pushed
        if cslot < 0:
            return -1
        dc = pool.d + cslot * pool.stride
    for t in range(ch.na):
        r = ch.act[t]
        q = &Q[r]
        q.evals += 1
        _offer(T, q, c, keys[t], k, True)
        if cslot < 0:
            continue                    # a leaf: nothing to enter
        d = sqrt(keys[t])
        b = d - nc.radius
        if b <= q.tau + slack:
            dc[r] = d
            pmask |= <uint64_t>1 << r
            lbc = min(lbc, b if b > 0.0 else 0.0)
    return _push(P, T, c, cslot, pmask, lbc, W, size)


cdef inline int _push(const Points* P, const Tree* T, intp_t c, intp_t cslot, uint64_t pmask,
                      float64_t lbc, const Scratch* W, intp_t* size) noexcept nogil:
    """Push child c, whose distances are in pool slot cslot, for the queries of pmask with
    lower bound lbc; with no query (or no slot: a leaf) the slot goes back. Returns 0."""
    cdef Pool* pool = W.pool
    cdef const Node* nc = &T.node[c]
    if pmask:
        pool.node[cslot] = c
        pool.mask[cslot] = pmask
        prefetch(&T.node[nc.child_begin])
        prefetch(P.x + nc.child_begin * P.dim)
        frontier_push(W.fl, W.fd, W.fn, size, lbc, 0.0, cslot)
    elif cslot >= 0:
        pool.free_slots[pool.n_free] = cslot
        pool.n_free += 1
    return 0


cdef void _exact_dots(const Points* P, const Query* Q, Child* ch) noexcept nogil:
    """ch.dots and ch.kval in float64 for the exact queries of ch (the float32 screen made
    ch.prods and the float32 kernel values; kernel_value gives the tiles' bits)."""
    cdef intp_t t, ne = 0
    cdef intp_t eact[GROUP]             # the exact queries and their place in ch
    cdef intp_t epos[GROUP]
    cdef float64_t edots[GROUP]
    for t in range(ch.na):
        if Q[ch.act[t]].exact:
            eact[ne] = ch.act[t]
            epos[ne] = t
            ne += 1
    if ne:
        _dot_tile(P.v, P.m, Q, eact, ne, &ch.node, 1, edots, 1)
        for t in range(ne):
            ch.dots[epos[t]] = edots[t]
            ch.kval[epos[t]] = kernel_value(P.spec, ch.r2[epos[t]])


cdef int _enter_bounded(const Points* P, const Tree* T, Query* Q, intp_t k, const Child* ch,
                        const Scratch* W, intp_t* size) noexcept nogil:
    """_enter for the bounded search: each query's bounds on its key to the child, from
    ch.dots (exact queries) or ch.prods (the float32 screen); the child becomes a candidate
    and offers its upper bound where its lower bound is within the query's bound, and is
    pushed with its distance bounds. Returns 0, or -1 when the pool or a candidate buffer
    could not grow."""
    cdef intp_t c = ch.node, t, r, cslot = -1
    cdef const Node* nc = &T.node[c]
    cdef float64_t nj = T.norm[c], sj = P.s[c], lo, lo_c, hi, dlo = 0.0, b, lbc = INFINITY
    cdef bint candidate, push, same = T.alias_exact[c]   # (see "aliases" above)
    cdef uint64_t pmask = 0
    cdef Query* q
    cdef float64_t* dc = NULL
    if nc.child_end > nc.child_begin:
        cslot = _pool_take(W.pool)      # where c's distance bounds go if it is pushed
        if cslot < 0:
            return -1
        dc = W.pool.d + cslot * W.pool.stride
    for t in range(ch.na):
        r = ch.act[t]
        q = &Q[r]
        q.evals += 1
        if q.exact:                     # (float64 products in key_lower's arithmetic)
            lo = key_lower(ch.kval[t], ch.dots[t], T.bound64.a * q.norm, nj, q.s, sj,
                          T.bound64.b, T.bound64.t)
        else:
            q.screened += 1
            lo = key_lower(ch.kval[t], ch.prods[t], T.bound.a * q.norm, nj, q.s, sj,
                          T.bound.b, T.bound.t)
        hi = INFINITY                   # made when needed (most pairs need only lo)
        lo_c = lo if same else _widened(lo, T.slack)
        candidate = lo_c <= _bound(q, k)
        push = False                    # (a leaf: nothing to enter)
        if cslot >= 0:
            dlo = sqrt(lo)
            b = dlo - nc.radius
            push = b <= q.tau + T.slack
        if candidate or push:
            if q.exact:
                hi = key_upper(ch.kval[t], ch.dots[t], T.bound64.a * q.norm, nj, q.s, sj,
                              T.bound64.b, T.bound64.t)
            else:
                hi = key_upper(ch.kval[t], ch.prods[t], T.bound.a * q.norm, nj, q.s, sj,
                              T.bound.b, T.bound.t)
        if candidate:
            if q.s != 0.0 and _keep(q, lo_c, c, not q.exact, k) != 0:
                return -1
            _offer(T, q, c, hi, k, same)
            push = push and b <= q.tau + T.slack    # the offer may have lowered tau
        if push:
            dc[W.pool.upper + r] = sqrt(hi)     # (upper = 0: the lower bound stays)
            dc[r] = dlo
            pmask |= <uint64_t>1 << r
            lbc = min(lbc, b if b > 0.0 else 0.0)
    return _push(P, T, c, cslot, pmask, lbc, W, size)


cdef inline int _score(const Points* P, const Tree* T, Query* Q, intp_t k, const Child* ch,
                       const Scratch* W, intp_t* size) noexcept nogil:
    """_enter_bounded or _enter, as the search is bounded or not."""
    if T.bounded:
        return _enter_bounded(P, T, Q, k, ch, W, size)
    return _enter(P, T, Q, k, ch, W, size)


cdef int _search_group(const Points* P, const Tree* T, Query* Q, intp_t g, intp_t k,
                       const Scratch* W) noexcept nogil:
    """The k nearest eligible points for each of the g <= GROUP queries in Q.

    A frontier entry is a pool slot: its node, d(query r, node) for each query r, and a mask
    whose bit r is set when query r needed the node's subtree at push time. Entries are keyed
    by the smallest lower bound among their queries. Returns 0, or -1 when the pool could not
    grow (the answers are then incomplete).
    """
    cdef intp_t r, j, t, u, c, c0, c1, na, nn, slot, size = 0
    cdef uint64_t mask, cmask, bit, needed
    cdef float64_t* du
    cdef float64_t tau_max, lo_c, slack = T.slack
    cdef Query* q
    cdef float64_t* fl = W.fl
    cdef float64_t* fd = W.fd
    cdef intp_t* fn = W.fn
    cdef Pool* pool = W.pool
    cdef Child ch                       # the child being scored
    cdef intp_t act[GROUP]              # the queries of a root tile
    cdef float64_t lo[GROUP]            # the seeds' and the root's keys, by query (in the
    cdef float64_t hi[GROUP]            # bounded search, bounds on them)
    cdef intp_t row_of[GROUP]           # query -> its row in the tile
    cdef uint64_t every = ~(<uint64_t>0) >> (64 - g)
    for r in range(g):
        q = &Q[r]
        q.count = 0
        q.key0 = INFINITY
        q.evals = 1
        q.screened = 0
        q.recomputed = 0
        q.nkept = 0
    for j in range(k + 1):              # each query's seeds bound its k-th key (see _search)
        t = W.seeds[j]
        if t < 0 or (T.bounded and not T.alias_exact[T.node_of[t]]
                     and T.node[T.node_of[t]].point != t):
            continue                    # (an alias that is not its node's row: see above)
        mask = 0
        for r in range(g):
            if t != Q[r].self_index and t < Q[r].limit:
                mask |= <uint64_t>1 << r
        _lone_node_keys(P, T, Q, mask, T.node_of[t], lo, hi)
        while mask:
            r = lowest_bit(mask)
            mask &= mask - 1
            q = &Q[r]
            best_offer(q.hd, q.hi, &q.count, k, hi[r], t)
            q.evals += 1
    _lone_node_keys(P, T, Q, every, 0, lo, hi)     # the root
    for r in range(g):
        q = &Q[r]
        if q.count == k:
            q.key0 = q.hd[0]
        q.count = 0
        if not T.bounded:
            if lo[r] <= q.key0:
                _offer_node(T, 0, lo[r], k, q, &q.count, True)
        else:
            lo_c = lo[r] if T.alias_exact[0] else _widened(lo[r], T.slack)
            if lo_c <= q.key0:
                if q.s != 0.0 and _keep(q, lo_c, 0, False, k) != 0:
                    return -1
                _offer(T, q, 0, hi[r], k, T.alias_exact[0])
        q.tau = sqrt(q.hd[0]) if q.count == k else sqrt(q.key0)
    pool.n_free = 0
    pool.used = 0
    slot = _pool_take(pool)             # the root's entry (the pool has room for one)
    pool.node[slot] = 0
    pool.mask[slot] = every
    for r in range(g):
        pool.d[slot * pool.stride + pool.upper + r] = sqrt(hi[r])
        pool.d[slot * pool.stride + r] = sqrt(lo[r])
    frontier_push(fl, fd, fn, &size, 0.0, 0.0, slot)
    while size > 0:
        tau_max = Q[0].tau
        for r in range(1, g):
            tau_max = max(tau_max, Q[r].tau)
        if fl[0] > tau_max + slack:
            break                       # no query can find anything in what is left
        slot = fn[0]
        frontier_pop(fl, fd, fn, &size)
        u = pool.node[slot]
        du = pool.d + slot * pool.stride
        mask = 0                        # the queries that still need u, with today's bounds
        cmask = pool.mask[slot]
        while cmask:
            r = lowest_bit(cmask)
            bit = <uint64_t>1 << r
            cmask ^= bit
            if du[r] - T.node[u].radius <= Q[r].tau + slack:
                mask |= bit
        if mask == 0:
            pool.free_slots[pool.n_free] = slot
            pool.n_free += 1
            continue
        if u == 0:
            # The root's children are candidates for nearly every query: their dot products
            # in dense tiles of TILE_NODES children, for the queries that need at least one
            # of them with the bounds at the tile's start. Then child by child as below, the
            # tests redone with the bounds of the moment (they only shrink, so every pair
            # they admit is in the tile; the others were computed and are dropped).
            c0 = T.node[u].child_begin
            while c0 < T.node[u].child_end:
                c1 = min(T.node[u].child_end, c0 + TILE_NODES)
                nn = 0
                needed = 0
                for c in range(c0, c1):
                    cmask = _child_mask(&T.node[c], Q, mask, du, pool.upper, slack)
                    if cmask:
                        W.tile_nodes[nn] = c
                        nn += 1
                        needed |= cmask
                c0 = c1
                na = 0
                for r in range(g):
                    if needed & (<uint64_t>1 << r):
                        row_of[r] = na
                        act[na] = r
                        na += 1
                if T.v32 != NULL:       # the tile in float32 (the bounded search)
                    _dot_tile(T.v32, P.m, Q, act, na, W.tile_nodes, nn, W.tile32, TILE_NODES)
                else:
                    _dot_tile(P.v, P.m, Q, act, na, W.tile_nodes, nn, W.tile, TILE_NODES)
                for j in range(nn):
                    c = W.tile_nodes[j]
                    cmask = _child_mask(&T.node[c], Q, mask, du, pool.upper, slack)
                    if cmask == 0:
                        continue
                    _child_start(P, Q, c, cmask, T.v32 != NULL, &ch)
                    if T.v32 != NULL:
                        for t in range(ch.na):
                            ch.prods[t] = W.tile32[row_of[ch.act[t]] * TILE_NODES + j]
                        _exact_dots(P, Q, &ch)
                    else:
                        for t in range(ch.na):
                            ch.dots[t] = W.tile[row_of[ch.act[t]] * TILE_NODES + j]
                    if _score(P, T, Q, k, &ch, W, &size) != 0:
                        return -1
                    du = pool.d + slot * pool.stride  # the pool may have moved
        else:
            for c in range(T.node[u].child_begin, T.node[u].child_end):
                cmask = _child_mask(&T.node[c], Q, mask, du, pool.upper, slack)
                if cmask == 0:
                    continue
                # c's row is read once, for all of them
                _child_start(P, Q, c, cmask, T.v32 != NULL, &ch)
                if T.v32 != NULL:
                    _dot_tile(T.v32, P.m, Q, ch.act, ch.na, &c, 1, ch.prods, 1)
                    _exact_dots(P, Q, &ch)
                else:
                    _dot_tile(P.v, P.m, Q, ch.act, ch.na, &c, 1, ch.dots, 1)
                if _score(P, T, Q, k, &ch, W, &size) != 0:
                    return -1
                du = pool.d + slot * pool.stride      # the pool may have moved
        pool.free_slots[pool.n_free] = slot     # u is done
        pool.n_free += 1
    return 0


cdef Scratch* _scratch_new(intp_t in_flight, intp_t k, intp_t frontier, bint grouped,
                          bint bounded, bint screen, int* failed) noexcept nogil:
    """One thread's Scratch for in_flight queries at a time (the seeds start empty): one
    workspace block (_workspace.pxd) and, for the groups, the frontier pool, which grows;
    for the bounded search the queries' candidate buffers and the rescoring buffers (these
    grow too), and with the float32 screen its tile. NULL, with failed[0] set, if any
    allocation failed."""
    cdef intp_t j, cap = 4 * k + 64
    cdef size_t nq = in_flight * sizeof(Query) if grouped else 0
    cdef size_t nd = in_flight * k * sizeof(float64_t), ni = in_flight * k * sizeof(intp_t)
    cdef size_t fd = frontier * sizeof(float64_t), fi = frontier * sizeof(intp_t)
    cdef size_t ns = (k + 1) * sizeof(int64_t)
    cdef size_t nt = GROUP * TILE_NODES * sizeof(float64_t) if grouped and not screen else 0
    cdef size_t nn = TILE_NODES * sizeof(intp_t) if grouped else 0
    cdef size_t n32 = GROUP * TILE_NODES * sizeof(float32_t) if grouped and screen else 0
    cdef char* at = workspace_new(span(sizeof(Scratch)) + span(nq) + span(nd) + span(ni) +
                                  2 * span(fd) + span(fi) + span(ns) + span(nt) + span(nn) +
                                  span(n32), failed)
    cdef Scratch* W = <Scratch*>carve(&at, sizeof(Scratch))
    if W == NULL:
        return NULL
    memset(W, 0, sizeof(Scratch))
    W.hd = <float64_t*>carve(&at, nd)
    W.hi = <intp_t*>carve(&at, ni)
    W.fl = <float64_t*>carve(&at, fd)
    W.fd = <float64_t*>carve(&at, fd)
    W.fn = <intp_t*>carve(&at, fi)
    W.seeds = <int64_t*>carve(&at, ns)
    if grouped:
        W.Q = <Query*>carve(&at, nq)
        W.tile = <float64_t*>carve(&at, nt) if not screen else NULL
        W.tile_nodes = <intp_t*>carve(&at, nn)
        W.tile32 = <float32_t*>carve(&at, n32) if screen else NULL
        W.pool = <Pool*>calloc(1, sizeof(Pool))
        if (W.pool == NULL
                or _pool_init(W.pool, min(frontier, <intp_t>POOL_START), screen) != 0):
            failed[0] = 1
            _scratch_free(W)
            return NULL
    for j in range(in_flight if grouped else 0):
        W.Q[j].hd = W.hd + j * k
        W.Q[j].hi = W.hi + j * k
        W.Q[j].kept = NULL
        W.Q[j].kcap = 0
    W.in_flight = in_flight if grouped else 0
    if grouped and bounded:
        for j in range(in_flight):
            W.Q[j].kept = <Kept*>malloc(cap * sizeof(Kept))
            W.Q[j].kcap = cap
            if W.Q[j].kept == NULL:
                failed[0] = 1
        W.rcap = cap
        W.rkey = <float64_t*>malloc(cap * sizeof(float64_t))
        W.ridx = <intp_t*>malloc(cap * sizeof(intp_t))
        W.rptr = <const float64_t**>malloc(cap * sizeof(float64_t*))
        if failed[0] or W.rkey == NULL or W.ridx == NULL or W.rptr == NULL:
            failed[0] = 1
            _scratch_free(W)
            return NULL
    for j in range(k + 1):
        W.seeds[j] = -1
    return W


cdef void _scratch_free(Scratch* W) noexcept nogil:
    """Free a Scratch: its pool and other buffers of its own, then its block (W itself is
    the block's start)."""
    cdef intp_t j
    if W == NULL:
        return
    if W.pool != NULL:
        _pool_free(W.pool)
    free(W.pool)
    for j in range(W.in_flight):
        free(W.Q[j].kept)
    free(W.rkey)
    free(W.ridx)
    free(<void*>W.rptr)
    free(W)


def knn(SearchLayout layout, Metric queries, bint in_sample, bint predecessors,
        const int64_t[::1] rows, tuple out, const int64_t[::1] visit_order,
        tuple parallel_plan, tuple bounded=()):
    """Exact kNN for every query row; returns ``(evals, screened, recomputed)``, per query:
    the pairs evaluated, of them those bounded only in float32 and those that were then
    rescored in float64 (the float32 screen).

    queries: the query rows, prepared like the indexed points (same kernel). In-sample queries
    are indexed points themselves: query q is point i = rows[q], which excludes itself and,
    with predecessors, considers only j < i (rows is not read for new points).
    out = (dist, idx), each (n_queries, k), filled. Queries are answered in visit_order (a
    permutation of the rows): neighbouring queries in that order share the tree nodes they
    touch, so they find them in cache. parallel_plan = (num_threads, chunk). bounded: () for
    the tree's own float64 keys, or (residual) the bounded search's ``(query norms, layout
    norms, the indexed rows in the caller's order (a Metric), dgemm's blocking (q, u),
    float32)`` (see "bounded search"), float32 = () or the float32 screen's ``(query V in
    float32 (not read for in-sample queries: theirs are the layout's), layout V in float32,
    (a, b, t) of the widened float32 bound, the exact queries (uint8))``: the answers are
    then scored with the brute force's arithmetic.
    """
    cdef Tree T
    cdef const float64_t[:, ::1] xq = queries.x
    cdef float64_t[:, ::1] out_dist = out[0]
    cdef int64_t[:, ::1] out_idx = out[1]
    cdef int num_threads = parallel_plan[0]
    cdef intp_t chunk = parallel_plan[1], k = out_dist.shape[1]
    cdef const Points* P = &layout.metric.P
    cdef intp_t nq = xq.shape[0], n = layout.n_nodes + len(layout.aliases), q, pos
    cdef Job J
    cdef const int64_t[::1] al = layout.aliases
    cdef const int64_t[::1] node_of = layout.node_of
    cdef const unsigned char[::1] alias_exact = layout.alias_exact
    cdef Scratch* W
    cdef intp_t found
    cdef int failed = 0
    evals = np.zeros(nq, dtype=np.int64)
    screened, recomputed = np.zeros(nq, dtype=np.int64), np.zeros(nq, dtype=np.int64)
    cdef int64_t[::1] ev = evals, sc = screened, rc = recomputed
    cdef const float32_t[:, ::1] qv32, pv32
    cdef const float64_t[::1] qnorm, pnorm
    cdef const unsigned char[::1] exact
    cdef Metric rows_metric
    cdef Interrupt stop
    interrupt_init(&stop)
    T.node = layout.node
    T.aliases = &al[0] if al.shape[0] else NULL
    T.node_of = &node_of[0]
    T.alias_exact = &alias_exact[0] if alias_exact.shape[0] else NULL
    T.slack = layout.slack
    T.bounded, T.v32, T.norm = False, NULL, NULL
    J.v32, J.norm, J.exact = NULL, NULL, NULL
    if bounded and nq and P.n:
        qnorm, pnorm, rows_metric = bounded[:3]
        if (qnorm.shape[0] != nq or pnorm.shape[0] != P.n or rows_metric.P.n != n
                or rows_metric.P.m != P.m or not P.residual):
            raise ValueError("the bounded search's rows must match the queries and the tree")
        T.bounded, T.norm, T.bound64 = True, &pnorm[0], _slack64(P.m)
        J.norm, J.indexed = &qnorm[0], &rows_metric.P
        J.chain_q, J.chain_u = bounded[3]
        if bounded[4]:
            qv32, pv32, abt, exact = bounded[4]
            if ((not in_sample and (qv32.shape[0] != nq or qv32.shape[1] != P.m))
                    or pv32.shape[0] != P.n or pv32.shape[1] != P.m or exact.shape[0] != nq):
                raise ValueError("the float32 rows must match the queries and the tree")
            T.v32, J.exact = &pv32[0, 0], &exact[0]
            J.v32 = &qv32[0, 0] if not in_sample else NULL
            T.bound.a, T.bound.b, T.bound.t = abt
    if nq == 0:
        return evals, screened, recomputed
    if visit_order.shape[0] != nq or (in_sample and rows.shape[0] != nq):
        raise ValueError("visit_order and rows must have one entry per query")
    if P.residual:
        J.queries = &queries.P
        J.in_sample, J.predecessors = in_sample, predecessors
        J.rows = &rows[0] if in_sample else NULL
        J.k, J.n = k, n
        J.out_dist, J.out_idx, J.ev = &out_dist[0, 0], &out_idx[0, 0], &ev[0]
        J.screened, J.recomputed = &sc[0], &rc[0]
        J.visit = &visit_order[0]
        J.num_threads, J.chunk, J.stop, J.failed = num_threads, chunk, &stop, &failed
        with nogil:
            _knn_groups(P, &T, layout.n_nodes, &J)
    else:                               # Euclidean: one query at a time (see _search_group)
        with nogil, parallel(num_threads=num_threads):
            W = _scratch_new(1, k, n, False, False, False, &failed)
            for pos in prange(nq, schedule='dynamic', chunksize=chunk):
                q = visit_order[pos]
                if W != NULL and not interrupted(&stop):
                    ev[q] = _search(P, &T, &xq[q, 0], rows[q] if in_sample else -1,
                                    rows[q] if predecessors else n, k, W, &found)
                    _emit(W.hd, W.hi, found, k, &out_dist[q, 0], &out_idx[q, 0])
                    _set_seeds(W.seeds, &out_idx[q, 0], k, rows[q] if in_sample else -1)
            # end: prange
            _scratch_free(W)
    reraise(&stop)
    if failed:
        raise MemoryError("could not allocate the search workspaces")
    return evals, screened, recomputed


cdef void _knn_groups(const Points* P, const Tree* T, intp_t n_nodes,
                      const Job* J) noexcept nogil:
    """knn() for the residual metric: GROUP consecutive queries of the visit order per
    traversal; a thread without its workspace sets J.failed and skips its queries."""
    cdef const Points* X = J.queries
    cdef intp_t nq = X.n, k = J.k, n_groups = (nq + GROUP - 1) // GROUP, gi, g, r, q, p0, u
    cdef Scratch* W
    with parallel(num_threads=J.num_threads):
        W = _scratch_new(GROUP, k, n_nodes, True, T.bounded, T.v32 != NULL, J.failed)
        for gi in prange(n_groups, schedule='dynamic', chunksize=max(1, J.chunk // GROUP)):
            p0 = gi * GROUP
            g = min(<intp_t>GROUP, nq - p0)
            if W == NULL or interrupted(J.stop):
                continue
            for r in range(g):
                q = J.visit[p0 + r]
                W.Q[r].x = X.x + q * X.dim
                W.Q[r].v = X.v + q * X.m
                W.Q[r].s = X.s[q]
                W.Q[r].self_index = J.rows[q] if J.in_sample else -1
                W.Q[r].limit = J.rows[q] if J.predecessors else J.n
                if T.bounded:
                    W.Q[r].norm = J.norm[q]
                    W.Q[r].exact = J.exact[q] if T.v32 != NULL else True
                    W.Q[r].v32 = NULL
                    if T.v32 != NULL and not J.in_sample:
                        W.Q[r].v32 = J.v32 + q * X.m
                    elif T.v32 != NULL:     # an indexed row: the layout's float32 copy of it
                        u = T.node_of[J.rows[q]]
                        W.Q[r].v32 = T.v32 + u * X.m
                        if T.node[u].point != J.rows[q]:
                            # an alias: its own row is not in the layout, so it is exact (the
                            # float32 tiles still read its node's row, and drop the products)
                            W.Q[r].exact = True
            if _search_group(P, T, W.Q, g, k, W) != 0:
                J.failed[0] = 1             # its frontier pool could not grow
                continue
            for r in range(g):
                q = J.visit[p0 + r]
                if T.bounded and _rescore(T, J, &W.Q[r], W) != 0:
                    J.failed[0] = 1
                _emit(W.Q[r].hd, W.Q[r].hi, W.Q[r].count, k, J.out_dist + q * k,
                      J.out_idx + q * k)
                J.ev[q] = W.Q[r].evals
                J.screened[q] = W.Q[r].screened - W.Q[r].recomputed
                J.recomputed[q] = W.Q[r].recomputed
            q = J.visit[p0 + g - 1]
            _set_seeds(W.seeds, J.out_idx + q * k, k, J.rows[q] if J.in_sample else -1)
        # end: prange
        _scratch_free(W)


cdef int _rescore(const Tree* T, const Job* J, Query* q, Scratch* W) noexcept nogil:
    """The bounded search's answer for q (see "bounded search"): its candidates still within
    its final bound, each node's row and its aliases where eligible, scored with the brute
    force's arithmetic, and the k best by (key, index) into q's heap.
    A degenerate query (1/sqrt(p) = 0) keeps no candidates: every key of it is exactly 1 in
    any arithmetic, so its heap (the k smallest rows at bound 1) is already the answer.
    Returns 0, or -1 when the buffers could not grow."""
    cdef const Points* C = J.indexed
    cdef float64_t thr = _bound(q, J.k)
    cdef intp_t x, t, a, n = 0, need = 0
    cdef const Node* nc
    if q.s == 0.0:
        return 0
    for x in range(q.nkept):            # rows of the candidates, at most
        if q.kept[x].lo <= thr:
            nc = &T.node[q.kept[x].node]
            need += 1 + nc.alias_end - nc.alias_begin
    if need > W.rcap:
        if not (_grow(<void**>&W.rkey, need * sizeof(float64_t))
                and _grow(<void**>&W.ridx, need * sizeof(intp_t))
                and _grow(<void**>&W.rptr, need * sizeof(float64_t*))):
            return -1
        W.rcap = need
    for x in range(q.nkept):
        if q.kept[x].lo > thr:
            continue
        q.recomputed += q.kept[x].f32
        nc = &T.node[q.kept[x].node]
        if nc.point != q.self_index and nc.point < q.limit:
            W.ridx[n] = nc.point
            n += 1
        for t in range(nc.alias_begin, nc.alias_end):
            a = T.aliases[t]
            if a != q.self_index and a < q.limit:
                W.ridx[n] = a
                n += 1
    for t in range(n):
        W.rkey[t] = kernel_value(C.spec, sqdist(q.x, C.x + W.ridx[t] * C.dim, C.dim))
        W.rptr[t] = C.v + W.ridx[t] * C.m
    gemm_elements(W.rkey, q.v, W.rptr, n, C.m, J.chain_q, J.chain_u)
    q.count = 0
    for t in range(n):
        best_offer(q.hd, q.hi, &q.count, J.k, residual_key(W.rkey[t], q.s, C.s[W.ridx[t]]),
                   W.ridx[t])
    return 0


def depth_first_order(intp_t root, const int64_t[::1] children_ptr,
                      const int64_t[::1] children, const int64_t[::1] aliases_ptr,
                      const int64_t[::1] aliases):
    """Every point in depth-first (preorder) order of the tree, children in their CSR order
    and aliases right after their node: the in-sample queries' visit order."""
    cdef intp_t n = children_ptr.shape[0] - 1, sp = 0, m = 0, u, t
    out = np.empty(n, dtype=np.int64)
    stack_a = np.empty(max(n, 1), dtype=np.int64)
    cdef int64_t[::1] o = out
    cdef int64_t[::1] stack = stack_a
    if n == 0:
        return out
    with nogil:
        stack[0] = root
        sp = 1
        while sp > 0:
            sp -= 1
            u = stack[sp]
            o[m] = u
            m += 1
            for t in range(aliases_ptr[u], aliases_ptr[u + 1]):
                o[m] = aliases[t]
                m += 1
            t = children_ptr[u + 1]
            while t > children_ptr[u]:      # last child pushed first: the first pops first
                t -= 1
                stack[sp] = children[t]
                sp += 1
    return out[:m]
