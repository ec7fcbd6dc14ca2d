# Parallel compressed cover tree: batch insertion (ALGORITHMS.md sections 1-4).
#
# Insertion rule, one point p against a valid tree: among the nodes q that cover p,
# d(p, q) <= 2^l(q), take the nearest, q* (ties by index), and insert p at level
# l(p) = ceil(log2 d(p, q*)) - 1 under q*; d(p, q*) = 0 makes p an alias of q*. It is valid:
# a node that does not cover p never constrains p's level (d > 2^l(q) >= 2^min(l(p), l(q))),
# every covering node is >= d(p, q*) > 2^l(p) away (separation), and q* has level >= l(p) + 1
# and lies within 2^(l(p)+1) (cover). The root has a fixed level that covers every point, so q*
# always exists and l(p) < l(root).
#
# One batch: (1) traversal, nogil prange over the batch: each point descends the tree as it was
# before the batch and finds (q*, d*). The root's children (the "net": in the residual metric
# thousands of nodes that nearly every point must score) are scored for the whole batch in one
# BLAS tile, and (residual only) so are the children of each net node, against the batch
# points that enter it; below that a point goes on alone, best-first, one pair at a time,
# reading each node's children from a contiguous run that carries what the tests need (Kid).
# No scope needs keeping: a point's answer can only change through the batch's own new nodes.
# (2) the batch x batch distance block, ONCE, with tiles;
# (3) rounds: the pending points at the highest level i, the conflict graph among them (edge iff
# d <= 2^i, read from the block), a greedy MIS by batch position, attach; the other pending
# points re-check only the new nodes, whose distances are in the block. Nodes of one round are
# > 2^i apart, so none covers another: the rounds replay a sequential insertion, the tree is
# valid, and since batches and priorities come from the seed it is the same for any thread
# count. Step (3) gets the block by pointer and nothing else of the metric.
#
# Threads: a step runs on one thread when its estimated work is too small to pay for waking the
# others (threads_for): next to another busy process a parallel region can cost a time slice.
# Ctrl-C: Python handles it between batches (the caller's loop), and the traversal, a batch's
# longest step, checks for it between points (_interrupt.pxd).

from cython.parallel cimport prange, parallel, threadid
from libc.math cimport sqrt, fabs, ldexp, frexp
from libc.stdlib cimport malloc, realloc, free
from libc.stdint cimport int32_t

import numpy as np

from residual._typedefs cimport float64_t, intp_t, int64_t
from residual._heap cimport frontier_push, frontier_pop, prefetch
from residual._interrupt cimport (Interrupt, interrupt_init, interrupted, monotonic_seconds,
                                  reraise)
from residual._workspace cimport carve, span, workspace_new
from residual._tiles cimport (Block, Metric, Points, closer, pair_key, sqdist, residual_cov_tile,
                              residual_key, sqdist_direct_tile)

cdef enum:
    BLOCK_ROWS = 128         # rows per work item of the net and pairwise tiles: a multiple of
                             # 32 (see _bruteforce.pyx on BLAS blocking and determinism), and
                             # tall enough that BLAS packs each column panel for many rows
    MIRROR_TILE = 32         # rows and columns per tile of the block's mirror copy
    PARALLEL_MIN_WORK = 65536  # estimated operations below which a step runs on one thread:
                               # a parallel region wakes the other threads (microseconds idle,
                               # up to a time slice next to another busy process)
    NO_NODE = -1
    INSERTED = -2147483647   # a batch point's pending level once it has joined the tree


cdef inline int level_below(float64_t d) noexcept nogil:
    """The largest integer l with 2^l < d (d > 0), exactly: d = f 2^e with f in [0.5, 1)."""
    cdef int e
    cdef float64_t f = frexp(d, &e)
    return e - 2 if f == 0.5 else e - 1


cdef inline int threads_for(int num_threads, float64_t work) noexcept nogil:
    """num_threads for a step of about `work` operations, 1 if too small to pay for a
    parallel region. Only speed depends on it: every step's result is thread-independent."""
    return num_threads if work >= PARALLEL_MIN_WORK else 1


cdef int64_t conflict_graph(const float64_t* block, intp_t nb, const intp_t* members,
                            intp_t nl, float64_t radius, intp_t* adj_ptr, intp_t* adj,
                            int num_threads) noexcept nogil:
    """Edges {j, k} among the round's members with block[j, k] <= radius, as CSR.

    block is the batch's nb x nb distance matrix (symmetric); members are batch positions in
    priority order. Row j's neighbours (positions in the round) go to adj[j * nl ...] and its
    degree to adj_ptr[j + 1]. Returns the number of edges counted from both ends. Rows in
    parallel.
    """
    cdef intp_t j, k, count
    cdef int64_t total = 0
    cdef const float64_t* row
    for j in prange(nl, num_threads=num_threads, schedule='static'):
        row = block + members[j] * nb
        count = 0
        for k in range(nl):
            if k != j and row[members[k]] <= radius:
                adj[j * nl + count] = k
                count = count + 1
        adj_ptr[j + 1] = count
    for j in range(nl):
        total += adj_ptr[j + 1]
    return total


cdef void greedy_mis(intp_t nl, const intp_t* adj_ptr, const intp_t* adj,
                     intp_t* chosen) noexcept nogil:
    """Greedy maximal independent set by priority (position): j joins unless an earlier
    neighbour joined. Sequential, so the set is the same for any thread count."""
    cdef intp_t j, k, nbr
    for j in range(nl):
        chosen[j] = 1
        for k in range(adj_ptr[j + 1]):
            nbr = adj[j * nl + k]
            if nbr < j and chosen[nbr]:
                chosen[j] = 0
                break


cdef struct Kid:
    # A child as its parent's list holds it: everything the descent reads about it, so that
    # scanning a node's children, testing them and entering one reads contiguous runs instead
    # of scattered per-point arrays. pdist and cover are fixed once the child is attached;
    # radius, start and count mirror radius_, kid_start and kid_count as they change.
    intp_t node
    float64_t pdist          # d(child, parent)
    float64_t cover          # 2^level(child)
    float64_t radius         # its covering radius
    int64_t start            # its own children's run: kids[start : start + count]
    int64_t count


cdef struct Entered:
    # What the net pass left for the batch rows: row b's entries are at b * ld. Read-only by
    # the descents but for each row's best cover so far (best_d[b], best_q[b]).
    const intp_t* net           # the net's nodes
    const float64_t* net_d      # d(batch[b], net node k)
    const int32_t* enter        # the net positions row b enters, n_enter[b] of them
    const intp_t* n_enter
    const int32_t* row_of       # row b's row in each entered node's children tile
    intp_t ld
    float64_t* best_d
    intp_t* best_q


cdef struct Children:
    # The children tiles of the entered net nodes (traverse's stage C): net node k's visitors
    # (batch positions) members[members_ptr[k]:members_ptr[k + 1]], its children
    # kids[kids_ptr[k]:kids_ptr[k + 1]], and their tile at tile2[tile2_off[k]:], visitors x
    # children, row-major. nb and max_kids bound the per-thread workspaces.
    intp_t nc, nb, max_kids
    const intp_t* members_ptr
    const intp_t* members
    const intp_t* kids_ptr
    const intp_t* kids
    const intp_t* tile2_off
    float64_t* tile2


cdef class TreeBuilder:
    """Mutable tree state during batch insertion, and the three per-batch stages."""

    cdef Points P
    cdef intp_t n, root, max_batch
    cdef float64_t slack
    # tree (nodes only; aliases point at their node)
    cdef int32_t[::1] level
    cdef intp_t[::1] parent, alias_of, inserted
    # children: node q's are kids[kid_start[q] : kid_start[q] + kid_count[q]], a run of
    # kid_room[q] slots in one pool; a full run moves to the pool's end with twice the room
    # (at most ~4 slots per node in all). Node c's own entry is kids[kid_slot[c]] (-1 for
    # the root). Euclidean: kid_x holds each slot's coordinates, so siblings' rows are
    # contiguous too.
    cdef Kid* kids
    cdef float64_t* kid_x
    # the descents' per-thread frontiers (front_threads x n each), allocated on first use
    cdef float64_t* front_l
    cdef float64_t* front_d
    cdef intp_t* front_n
    cdef int front_threads
    cdef int64_t kids_used, kids_room
    cdef int64_t[::1] kid_start, kid_slot
    cdef int32_t[::1] kid_count, kid_room
    cdef float64_t[::1] pdist
    cdef float64_t[::1] radius_     # each node's exact covering radius, kept as we go
    cdef public intp_t n_inserted
    cdef public bint out_of_memory   # a children list could not grow: the tree is broken
    # per-batch workspaces, allocated once
    cdef float64_t[:, ::1] gx, gxt, gv
    cdef float64_t[::1] gs
    cdef intp_t[::1] adj_ptr, adj, pending, in_round, chosen, keep
    cdef int32_t[::1] lev
    # the root's children (the top net), their rows kept contiguous for the batch x net tile;
    # capacity doubles as the net grows
    cdef intp_t[::1] net
    cdef float64_t[:, ::1] net_xt, net_v, net_tile
    cdef int32_t[:, ::1] net_enter, net_row   # per batch point: entered net nodes, its rows
    cdef float64_t[::1] net_s
    cdef intp_t net_count
    # telemetry
    cdef public int64_t traversal_evals, block_evals, radius_evals, conflict_edges, rounds
    cdef public int64_t kernel_tiles, kernel_elements
    cdef public float64_t t_conflict, t_mis, t_attach, t_net, t_kids
    cdef int64_t traversed           # batch points traversed so far
    cdef float64_t pair_cost         # rough operations per distance, for threads_for
    cdef Metric metric

    def __init__(self, Metric metric, intp_t root, int root_level, intp_t max_batch,
                 float64_t slack):
        cdef intp_t n = metric.P.n
        cdef bint residual = metric.P.residual
        self.n = n
        self.root = root
        self.max_batch = max_batch
        self.slack = slack
        self.P = metric.P
        self.metric = metric             # keeps the rows P points into alive
        # the coordinate sum (and for the residual metric the dot product and the kernel),
        # plus the bookkeeping around a pair
        self.pair_cost = self.P.dim + 8 + (self.P.m + 16 if residual else 0)
        self.level = np.zeros(n, dtype=np.int32)
        self.parent = np.full(n, NO_NODE, dtype=np.intp)
        self.kid_start = np.zeros(n, dtype=np.int64)
        self.kid_count = np.zeros(n, dtype=np.int32)
        self.kid_room = np.zeros(n, dtype=np.int32)
        self.kids_room = max(2 * n, 16)
        self.kids_used = 0
        self.kid_slot = np.full(n, -1, dtype=np.int64)
        self.kids = <Kid*>malloc(self.kids_room * sizeof(Kid))
        self.kid_x = NULL if residual else \
            <float64_t*>malloc(self.kids_room * self.P.dim * sizeof(float64_t))
        if self.kids == NULL or (not residual and self.kid_x == NULL):
            raise MemoryError("could not allocate the children lists")
        self.alias_of = np.full(n, NO_NODE, dtype=np.intp)
        self.inserted = np.full(n, NO_NODE, dtype=np.intp)
        self.pdist = np.zeros(n)
        self.radius_ = np.zeros(n)
        self.level[root] = root_level
        self.inserted[0] = root
        self.n_inserted = 1
        b = max(max_batch, 1)
        self.gx = np.zeros((b, self.P.dim))
        self.gxt = np.zeros((self.P.dim, b))
        self.gv = np.zeros((b, max(self.P.m, 1)))
        self.gs = np.zeros(b)
        self.adj_ptr = np.zeros(b + 1, dtype=np.intp)
        self.adj = np.zeros(b * b, dtype=np.intp)
        self.pending = np.zeros(b, dtype=np.intp)
        self.in_round = np.zeros(b, dtype=np.intp)
        self.chosen = np.zeros(b, dtype=np.intp)
        self.keep = np.zeros(b, dtype=np.intp)
        self.lev = np.zeros(b, dtype=np.int32)
        self.net_count = 0
        self._reserve_net(256)

    def __dealloc__(self):
        free(self.kids)
        free(self.kid_x)
        free(self.front_l)
        free(self.front_d)
        free(self.front_n)

    def _reserve_frontiers(self, int num_threads):
        """One descent frontier per thread, n entries each, kept for the whole build."""
        if num_threads <= self.front_threads:
            return
        free(self.front_l)
        free(self.front_d)
        free(self.front_n)
        self.front_l = <float64_t*>malloc(num_threads * self.n * sizeof(float64_t))
        self.front_d = <float64_t*>malloc(num_threads * self.n * sizeof(float64_t))
        self.front_n = <intp_t*>malloc(num_threads * self.n * sizeof(intp_t))
        self.front_threads = num_threads
        if self.front_l == NULL or self.front_d == NULL or self.front_n == NULL:
            self.front_threads = 0
            raise MemoryError("could not allocate the traversal workspaces")

    cdef int _grow_pool(self, int64_t need) noexcept nogil:
        """Room for `need` more slots; returns 1 if the pool could not grow."""
        cdef int64_t room = 2 * (self.kids_used + need), dim = self.P.dim
        cdef Kid* kids
        cdef float64_t* kid_x
        if self.kids_used + need <= self.kids_room:
            return 0
        kids = <Kid*>realloc(self.kids, room * sizeof(Kid))
        if kids == NULL:
            return 1
        self.kids = kids
        if self.kid_x != NULL:
            kid_x = <float64_t*>realloc(self.kid_x, room * dim * sizeof(float64_t))
            if kid_x == NULL:
                return 1
            self.kid_x = kid_x
        self.kids_room = room
        return 0

    cdef int _add_child(self, intp_t q, intp_t p, float64_t pdist,
                        float64_t cover) noexcept nogil:
        """Append p to q's children; returns 1 if the pool could not grow (nothing changed)."""
        cdef int64_t t, u, start, room = self.kid_room[q], dim = self.P.dim
        if self.kid_count[q] == room:
            room = max(2 * room, 2)
            if self._grow_pool(room):
                return 1
            start = self.kids_used
            for t in range(self.kid_count[q]):
                self._move_slot(self.kid_start[q] + t, start + t)
            self.kid_start[q] = start
            self.kid_room[q] = <int32_t>room
            self.kids_used += room
            if self.kid_slot[q] >= 0:
                self.kids[self.kid_slot[q]].start = start
        t = self.kid_start[q] + self.kid_count[q]
        self.kids[t].node = p
        self.kids[t].pdist = pdist
        self.kids[t].cover = cover
        self.kids[t].radius = self.radius_[p]
        self.kids[t].start = self.kid_start[p]
        self.kids[t].count = self.kid_count[p]
        if self.kid_x != NULL:
            for u in range(dim):
                self.kid_x[t * dim + u] = self.P.x[p * dim + u]
        self.kid_slot[p] = t
        self.kid_count[q] += 1
        if self.kid_slot[q] >= 0:
            self.kids[self.kid_slot[q]].count = self.kid_count[q]
        return 0

    cdef inline void _move_slot(self, int64_t src, int64_t dst) noexcept nogil:
        cdef int64_t u, dim = self.P.dim
        self.kids[dst] = self.kids[src]
        if self.kid_x != NULL:
            for u in range(dim):
                self.kid_x[dst * dim + u] = self.kid_x[src * dim + u]
        self.kid_slot[self.kids[dst].node] = dst

    # -- stage 1: traversal ---------------------------------------------------------------------

    def traverse(self, const intp_t[::1] batch, float64_t[::1] best_d, intp_t[::1] best_q,
                 int num_threads, intp_t chunk):
        """(q*, d*) for every batch point against the current tree (read-only, parallel).

        The root's children (the top net: in the residual metric hundreds to thousands of
        nodes that nearly every point must score) are scored in tiles, a block of batch rows
        at a time (BLAS for the residual metric); each point then descends on its own below
        them. Euclidean: one parallel loop, each work item scoring its rows and descending
        them. Residual: the children of the entered net nodes get tiles of their own between
        the two steps, so three.
        """
        cdef intp_t nb = batch.shape[0], nc = self.net_count, b, c, k, t, j, kk, r0, nr
        cdef intp_t n_items, n = self.n
        cdef float64_t* fl
        cdef float64_t* fd
        cdef intp_t* fn
        cdef int64_t[::1] evals = np.zeros(nb, dtype=np.int64)
        cdef intp_t[::1] n_enter = np.zeros(nb, dtype=np.intp)
        cdef Interrupt stop             # the descents are checked for Ctrl-C
        if nb == 0:
            return
        interrupt_init(&stop)
        self._gather_batch(batch)
        # a point scores the net and makes about as many descent evaluations as the points
        # before it did
        cdef int threads = threads_for(num_threads, nb * self.pair_cost * (
            nc + self.traversal_evals / <float64_t>max(self.traversed, 1)))
        self.traversed += nb
        self._reserve_frontiers(threads)
        cdef float64_t[:, ::1] tile = self.net_tile
        cdef intp_t[::1] net = self.net
        cdef int32_t[:, ::1] enter = self.net_enter
        cdef int32_t[:, ::1] row_of = self.net_row
        # the net's rows: the column side of every point's first tile
        cdef Block rows, net_cols = Block(n=nc, ld=self.net_xt.shape[1], x=&self.net_xt[0, 0],
                                          v=&self.net_v[0, 0], s=&self.net_s[0])
        cdef Entered E = Entered(net=&net[0], net_d=&tile[0, 0], enter=&enter[0, 0],
                                 n_enter=&n_enter[0], row_of=&row_of[0, 0], ld=tile.shape[1],
                                 best_d=&best_d[0], best_q=&best_q[0])
        cdef float64_t t0 = monotonic_seconds()
        if not self.P.residual:
            # a Euclidean distance costs less than a tile's bookkeeping, and the descent's
            # parent-distance test skips most of the net nodes' children unevaluated: no
            # children tiles, so each work item goes from the net to the answers of its rows
            n_items = (nb + chunk - 1) // chunk
            with nogil, parallel(num_threads=threads):
                # this thread's frontier (one entry per node at most), allocated once per build
                fl = self.front_l + threadid() * n
                fd = self.front_d + threadid() * n
                fn = self.front_n + threadid() * n
                for c in prange(n_items, schedule='dynamic'):
                    if interrupted(&stop):
                        continue
                    r0 = c * chunk
                    nr = min(chunk, nb - r0)
                    rows = Block(n=nr, ld=self.P.dim, x=&self.gx[r0, 0], v=NULL, s=NULL)
                    self._distance_rows(&rows, &net_cols, &tile[r0, 0], tile.shape[1])
                    for b in range(r0, r0 + nr):
                        n_enter[b] = self._net_pass(batch[b], &tile[b, 0], &net[0], nc,
                                                    &enter[b, 0], &best_d[b], &best_q[b])
                        evals[b] = self._descend(b, batch[b], fl, fd, fn, &E, NULL)
                # end: prange
            reraise(&stop)
            self.traversal_evals += int(np.sum(evals)) + nb * nc
            return
        # A. each block of rows: its tile against the net, then each point's best cover so far
        #    and the list of net nodes it must enter
        n_items = (nb + BLOCK_ROWS - 1) // BLOCK_ROWS
        with nogil:
            for c in prange(n_items, num_threads=threads, schedule='dynamic'):
                r0 = c * BLOCK_ROWS
                nr = min(<intp_t>BLOCK_ROWS, nb - r0)
                if nc > 0:
                    rows = Block(n=nr, ld=self.P.dim, x=&self.gx[r0, 0], v=&self.gv[r0, 0],
                                 s=&self.gs[r0])
                    self._distance_rows(&rows, &net_cols, &tile[r0, 0], tile.shape[1])
                for b in range(r0, r0 + nr):
                    n_enter[b] = self._net_pass(batch[b], &tile[b, 0], &net[0], nc,
                                                &enter[b, 0], &best_d[b], &best_q[b])
        self.t_net += monotonic_seconds() - t0
        self.kernel_tiles += n_items if nc > 0 else 0
        self.kernel_elements += nb * nc
        # B. group by net node: who enters it (its rows in the second tile), and its children
        cdef intp_t[::1] members_ptr = np.zeros(nc + 1, dtype=np.intp)
        cdef intp_t[::1] kids_ptr = np.zeros(nc + 1, dtype=np.intp)
        cdef intp_t[::1] tile2_off = np.zeros(nc + 1, dtype=np.intp)
        cdef intp_t total_members = 0, max_kids = 0
        with nogil:
            for b in range(nb):
                for t in range(n_enter[b]):
                    k = enter[b, t]
                    row_of[b, t] = <int32_t>members_ptr[k + 1]
                    members_ptr[k + 1] += 1
            for k in range(nc):
                kk = 0
                if members_ptr[k + 1] > 0:
                    kk = self.kid_count[net[k]]
                max_kids = max(max_kids, kk)
                kids_ptr[k + 1] = kids_ptr[k] + kk
                tile2_off[k + 1] = tile2_off[k] + members_ptr[k + 1] * kk
                members_ptr[k + 1] += members_ptr[k]
            total_members = members_ptr[nc]
        cdef intp_t[::1] members = np.empty(max(total_members, 1), dtype=np.intp)
        cdef intp_t[::1] kids = np.empty(max(kids_ptr[nc], 1), dtype=np.intp)
        cdef float64_t[::1] tile2 = np.empty(max(tile2_off[nc], 1))
        with nogil:
            for b in range(nb):
                for t in range(n_enter[b]):
                    k = enter[b, t]
                    members[members_ptr[k] + row_of[b, t]] = b
            for k in range(nc):
                kk = kids_ptr[k]
                for j in range(kids_ptr[k + 1] - kk):
                    kids[kk + j] = self.kids[self.kid_start[net[k]] + j].node
        # C. one tile per entered net node: its visitors x its children (BLAS), in parallel
        cdef Children C = Children(nc=nc, nb=nb, max_kids=max_kids, members_ptr=&members_ptr[0],
                                   members=&members[0], kids_ptr=&kids_ptr[0], kids=&kids[0],
                                   tile2_off=&tile2_off[0], tile2=&tile2[0])
        cdef float64_t t1 = monotonic_seconds()
        if tile2_off[nc] > 0:
            if self._children_tiles(&C, threads_for(num_threads,
                                                    tile2_off[nc] * self.pair_cost)):
                raise MemoryError("could not allocate the children-tile workspaces")
        self.t_kids += monotonic_seconds() - t1
        self.kernel_elements += tile2_off[nc]
        # D. each point descends on its own below that, one pair at a time
        with nogil, parallel(num_threads=threads):
            fl = self.front_l + threadid() * n
            fd = self.front_d + threadid() * n
            fn = self.front_n + threadid() * n
            for b in prange(nb, schedule='dynamic', chunksize=chunk):
                if interrupted(&stop):
                    continue
                evals[b] = self._descend(b, batch[b], fl, fd, fn, &E, &C)
        reraise(&stop)
        self.traversal_evals += int(np.sum(evals)) + nb * nc + tile2_off[nc]

    cdef int _children_tiles(self, const Children* C, int num_threads) noexcept nogil:
        """C.tile2[off_k + r * n_kids + j] = d(visitor r of net node k, child j of k).

        Returns 0, or 1 if a thread could not allocate its workspace (_workspace.pxd; tile2
        is then incomplete and must not be read)."""
        cdef int failed = 0
        cdef intp_t k, r, j, t, nm, nk, dim = self.P.dim, m = self.P.m, b, c
        cdef intp_t mw = max(m, 1)
        cdef size_t f = sizeof(float64_t)
        cdef size_t size = (span(C.nb * dim * f) + span(C.nb * mw * f) + span(C.nb * f) +
                            span(C.max_kids * dim * f) + span(C.max_kids * mw * f) +
                            span(C.max_kids * f))
        cdef char* work
        cdef char* at
        cdef float64_t* qx
        cdef float64_t* qv
        cdef float64_t* qs
        cdef float64_t* kxt
        cdef float64_t* kv
        cdef float64_t* ks
        cdef Block rows, cols
        with parallel(num_threads=num_threads):
            work = workspace_new(size, &failed)
            at = work
            qx = <float64_t*>carve(&at, C.nb * dim * f)
            qv = <float64_t*>carve(&at, C.nb * mw * f)
            qs = <float64_t*>carve(&at, C.nb * f)
            kxt = <float64_t*>carve(&at, C.max_kids * dim * f)
            kv = <float64_t*>carve(&at, C.max_kids * mw * f)
            ks = <float64_t*>carve(&at, C.max_kids * f)
            for k in prange(C.nc, schedule='dynamic', chunksize=16):
                nm = C.members_ptr[k + 1] - C.members_ptr[k]
                nk = C.kids_ptr[k + 1] - C.kids_ptr[k]
                if work == NULL or nm == 0 or nk == 0:
                    continue
                for r in range(nm):            # the visitors' rows, from the batch workspace
                    b = C.members[C.members_ptr[k] + r]
                    for t in range(dim):
                        qx[r * dim + t] = self.gx[b, t]
                    for t in range(m):
                        qv[r * m + t] = self.gv[b, t]
                    qs[r] = self.gs[b]
                for j in range(nk):            # the children's rows
                    c = C.kids[C.kids_ptr[k] + j]
                    for t in range(dim):
                        kxt[t * nk + j] = self.P.x[c * dim + t]
                    for t in range(m):
                        kv[j * m + t] = self.P.v[c * m + t]
                    ks[j] = self.P.s[c] if self.P.residual else 0.0
                rows = Block(n=nm, ld=dim, x=qx, v=qv, s=qs)
                cols = Block(n=nk, ld=nk, x=kxt, v=kv, s=ks)
                self._distance_rows(&rows, &cols, C.tile2 + C.tile2_off[k], nk)
            # end: prange
            free(work)
        return failed

    cdef intp_t _net_pass(self, intp_t p, const float64_t* net_d, const intp_t* net,
                          intp_t nc, int32_t* enter, float64_t* out_d,
                          intp_t* out_q) noexcept nogil:
        """Score the net from the tile: the best cover so far, and the net positions to enter
        (written to enter[0..count), ascending); returns count."""
        cdef intp_t k, count = 0
        cdef float64_t best_d = sqrt(pair_key(&self.P, p, self.root))
        cdef intp_t best_q = self.root
        for k in range(nc):
            if self._visit(&self.kids[self.kid_slot[net[k]]], net_d[k], &best_d, &best_q):
                enter[count] = <int32_t>k
                count += 1
        out_d[0] = best_d
        out_q[0] = best_q
        return count

    cdef inline bint _visit(self, const Kid* c, float64_t dc, float64_t* best_d,
                            intp_t* best_q) noexcept nogil:
        """Offer child c at distance dc; True if its subtree may hold a better cover.

        A proper descendant w of c is within R(c) of c (its covering radius, kept exact during
        the build) and covers p only if d(p, w) <= 2^l(w) <= 2^(l(c)-1); so c is entered only
        if d(p, c) <= R(c) + 2^(l(c)-1) and d(p, c) - R(c) can beat the best so far. slack
        absorbs rounding and can only widen the search.
        """
        if dc <= c.cover and closer(dc, c.node, best_d[0], best_q[0]):
            best_d[0] = dc
            best_q[0] = c.node
        return c.count > 0 and dc - c.radius <= min(0.5 * c.cover, best_d[0]) + self.slack

    cdef inline void _prefetch_run(self, int64_t start) noexcept nogil:
        """Start loading a pushed node's children run (entries and rows) for its pop."""
        prefetch(self.kids + start)
        if self.kid_x != NULL:
            prefetch(self.kid_x + start * self.P.dim)

    cdef int64_t _descend(self, intp_t b, intp_t p, float64_t* fl, float64_t* fd, intp_t* fn,
                          const Entered* E, const Children* C) noexcept nogil:
        """Best-first search below the net for the nearest covering node of batch row b
        (point p), starting from the best cover the net gave; returns the pair evaluations it
        made (the children of the entered net nodes come from their tiles; C NULL: none).

        Subtrees are entered in order of their lower bound d(p, c) - R(c), so the best cover
        falls fast and the search stops once no bound can beat it; a child whose parent
        distance already rules it out (|d(p, u) - pd(c)| <= d(p, c), triangle inequality) is
        not evaluated. The answer (nearest by (distance, index)) does not depend on the order.
        The frontier holds children's slots in the pool.
        """
        cdef intp_t size = 0, k, j, nk, t, dim = self.P.dim
        cdef int64_t evals = 0, slot, start
        cdef float64_t du, dc, g, slack = self.slack
        cdef const float64_t* row
        cdef const float64_t* xp = self.P.x + p * dim
        cdef const Kid* kid
        cdef const intp_t* net = E.net
        cdef const int32_t* enter = E.enter + b * E.ld
        cdef const float64_t* net_d = E.net_d + b * E.ld
        cdef intp_t n_enter = E.n_enter[b]
        cdef float64_t* best_d = E.best_d + b
        cdef intp_t* best_q = E.best_q + b
        if C == NULL:                       # no children tiles: enter the net nodes
            for t in range(n_enter):
                k = enter[t]
                slot = self.kid_slot[net[k]]
                self._prefetch_run(self.kids[slot].start)
                frontier_push(fl, fd, fn, &size, net_d[k] - self.kids[slot].radius, net_d[k],
                              slot)
            n_enter = 0
        for t in range(n_enter):
            k = enter[t]
            nk = C.kids_ptr[k + 1] - C.kids_ptr[k]
            row = C.tile2 + C.tile2_off[k] + E.row_of[b * E.ld + t] * nk
            start = self.kid_start[net[k]]
            for j in range(nk):             # same order as the tile's columns
                dc = row[j]
                if self._visit(&self.kids[start + j], dc, best_d, best_q):
                    self._prefetch_run(self.kids[start + j].start)
                    frontier_push(fl, fd, fn, &size, dc - self.kids[start + j].radius, dc,
                                  start + j)
        # the best cover so far in locals (registers), written back once at the end
        cdef float64_t bd = best_d[0]
        cdef intp_t bq = best_q[0]
        cdef const Kid* kids = self.kids
        cdef const float64_t* kid_x = self.kid_x
        while size > 0:
            if fl[0] > bd + slack:
                break                       # no subtree left can hold a better cover
            du = fd[0]
            slot = fn[0]
            frontier_pop(fl, fd, fn, &size)
            start = kids[slot].start
            kid = kids + start
            for j in range(kids[slot].count):
                # skip the child, unevaluated, when |d(p, u) - pd(c)| <= d(p, c) already shows
                # that it cannot cover p better and its subtree cannot hold a better cover
                g = fabs(du - kid[j].pdist)
                if g > min(kid[j].cover, bd) + slack and (
                        kid[j].count == 0 or
                        g - kid[j].radius > min(0.5 * kid[j].cover, bd) + slack):
                    continue
                if kid_x != NULL:           # Euclidean: the slot's own copy of the row
                    dc = sqrt(sqdist(xp, kid_x + (start + j) * dim, dim))
                else:
                    dc = sqrt(pair_key(&self.P, p, kid[j].node))
                evals += 1
                if self._visit(&kid[j], dc, &bd, &bq):
                    self._prefetch_run(kid[j].start)
                    frontier_push(fl, fd, fn, &size, dc - kid[j].radius, dc, start + j)
        best_d[0] = bd
        best_q[0] = bq
        return evals

    # -- gathering rows into contiguous tile operands -------------------------------------------

    cdef void _gather_batch(self, const intp_t[::1] batch):
        """Copy the batch's rows into the preallocated workspaces gx, gxt, gv, gs."""
        cdef intp_t nb = batch.shape[0], a, t, dim = self.P.dim, m = self.P.m
        cdef float64_t x
        with nogil:
            for a in range(nb):
                for t in range(dim):
                    x = self.P.x[batch[a] * dim + t]
                    self.gx[a, t] = x
                    self.gxt[t, a] = x
                if self.P.residual:
                    for t in range(m):
                        self.gv[a, t] = self.P.v[batch[a] * m + t]
                    self.gs[a] = self.P.s[batch[a]]

    def _reserve_net(self, intp_t capacity):
        """Grow the net's row panels (and the batch x net tile) to hold `capacity` nodes."""
        cdef intp_t cap = max(capacity, 1), c = self.net_count, b = max(self.max_batch, 1)
        net = np.empty(cap, dtype=np.intp)
        xt = np.empty((self.P.dim, cap))
        v = np.empty((cap, max(self.P.m, 1)))
        s = np.zeros(cap)
        if c:
            net[:c] = self.net[:c]
            xt[:, :c] = self.net_xt[:, :c]
            v[:c] = self.net_v[:c]
            s[:c] = self.net_s[:c]
        self.net, self.net_xt, self.net_v, self.net_s = net, xt, v, s
        self.net_tile = np.empty((b, cap))
        self.net_enter = np.empty((b, cap), dtype=np.int32)
        self.net_row = np.empty((b, cap), dtype=np.int32)

    def extend_net(self, const intp_t[::1] batch):
        """Append the batch's new children of the root to the net, in batch order."""
        cdef intp_t a, p, t, c
        for a in range(batch.shape[0]):
            p = batch[a]
            if self.parent[p] != self.root or self.alias_of[p] != NO_NODE:
                continue
            if self.net_count == self.net.shape[0]:
                self._reserve_net(2 * self.net_count)
            c = self.net_count
            self.net[c] = p
            for t in range(self.P.dim):
                self.net_xt[t, c] = self.P.x[p * self.P.dim + t]
            if self.P.residual:
                for t in range(self.P.m):
                    self.net_v[c, t] = self.P.v[p * self.P.m + t]
                self.net_s[c] = self.P.s[p]
            self.net_count += 1

    cdef void _distance_rows(self, const Block* q, const Block* c, float64_t* out,
                             intp_t ldo) noexcept nogil:
        """out[r, j] = d(query r, column j): one tile (BLAS for the residual part), then sqrt."""
        cdef intp_t r, j
        cdef float64_t* row
        if self.P.residual:
            residual_cov_tile(self.P.spec, q, c, self.P.dim, self.P.m, out, ldo)
            for r in range(q.n):
                row = out + r * ldo
                for j in range(c.n):
                    row[j] = sqrt(residual_key(row[j], q.s[r], c.s[j]))
        else:
            sqdist_direct_tile(q.x, q.n, c.x, c.ld, c.n, self.P.dim, out, ldo)
            for r in range(q.n):
                row = out + r * ldo
                for j in range(c.n):
                    row[j] = sqrt(row[j])

    # -- stage 2: the pairwise block ------------------------------------------------------------

    def pairwise(self, const intp_t[::1] batch, float64_t[:, ::1] block, int num_threads):
        """block[a, b] = d(batch[a], batch[b]), computed once per batch with tiles.

        The batch rows were gathered by traverse() and are still in the workspaces.
        """
        cdef intp_t nb = batch.shape[0], a, c, r0, nr, n_chunks, tr, tc, a1, c1
        if nb == 0:
            return
        n_chunks = (nb + BLOCK_ROWS - 1) // BLOCK_ROWS
        cdef intp_t nt = (nb + MIRROR_TILE - 1) // MIRROR_TILE
        cdef const float64_t[:, ::1] xct = self.gxt
        cdef const float64_t[:, ::1] vc = self.gv
        cdef const float64_t[::1] sc = self.gs
        cdef Block rows, cols
        cdef int threads = threads_for(num_threads, 0.5 * nb * nb * self.pair_cost)
        with nogil, parallel(num_threads=threads):
            for c in prange(n_chunks, schedule='dynamic'):
                r0 = c * BLOCK_ROWS
                nr = min(<intp_t>BLOCK_ROWS, nb - r0)
                # only columns >= r0: the rest is mirrored below
                rows = Block(n=nr, ld=self.P.dim, x=&self.gx[r0, 0], v=&self.gv[r0, 0],
                             s=&self.gs[r0])
                cols = Block(n=nb - r0, ld=xct.shape[1], x=&xct[0, r0], v=&vc[r0, 0],
                             s=&sc[r0])
                self._distance_rows(&rows, &cols, &block[r0, r0], nb)
                for a in range(r0, r0 + nr):
                    block[a, a] = 0.0          # a point is at distance 0 from itself
            # end: prange (its barrier: the upper triangle is complete)
            # one value per pair: the upper triangle, mirrored (BLAS may round (a, b) and
            # (b, a) differently, and the conflict graph must be symmetric), in square tiles
            # so that the column reads stay in cache (a plain loop was most of this stage)
            for tr in prange(nt, schedule='dynamic'):
                c1 = min(nb, (tr + 1) * MIRROR_TILE)
                for tc in range(tr + 1):
                    a1 = min(nb, (tc + 1) * MIRROR_TILE)
                    for c in range(tr * MIRROR_TILE, c1):
                        for a in range(tc * MIRROR_TILE, min(a1, c)):
                            block[c, a] = block[a, c]
            # end: prange
        self.block_evals += nb * (nb - 1) // 2
        self.kernel_tiles += n_chunks if self.P.residual else 0
        self.kernel_elements += nb * (nb + BLOCK_ROWS) // 2 if self.P.residual else 0

    # -- stage 3: conflict graph, MIS, attach ---------------------------------------------------

    def resolve(self, const intp_t[::1] batch, const float64_t[:, ::1] block,
                float64_t[::1] best_d, intp_t[::1] best_q, int num_threads):
        """Insert the batch: rounds of conflict graph + MIS + attach, reading only the block."""
        cdef intp_t nb = batch.shape[0]
        if block.shape[0] != nb or block.shape[1] != nb:
            raise ValueError(f"the pairwise block must be {nb} x {nb} (the batch), got "
                             f"{block.shape[0]} x {block.shape[1]}: compute it first")
        if nb == 0:
            return
        with nogil:
            self._resolve(&batch[0], nb, &block[0, 0], &best_d[0], &best_q[0], num_threads)
        if self.out_of_memory:
            raise MemoryError("could not grow the children lists")

    cdef void _resolve(self, const intp_t* batch, intp_t nb, const float64_t* block,
                       float64_t* best_d, intp_t* best_q, int num_threads) noexcept nogil:
        cdef intp_t n_pending = 0, a, b, j, k, nl, p, q, e, n_new
        cdef int i
        cdef float64_t radius, d, t0
        cdef intp_t* pending = &self.pending[0]
        cdef intp_t* in_round = &self.in_round[0]
        cdef intp_t* chosen = &self.chosen[0]
        cdef intp_t* keep = &self.keep[0]
        cdef int threads
        cdef intp_t* adj_ptr = &self.adj_ptr[0]
        cdef intp_t* adj = &self.adj[0]
        cdef int32_t* lev = &self.lev[0]
        for a in range(nb):
            if self._settle(a, batch, best_d, best_q, lev):
                pending[n_pending] = a
                n_pending += 1
        while n_pending > 0:
            self.rounds += 1
            t0 = monotonic_seconds()
            i = lev[pending[0]]
            for j in range(n_pending):
                i = max(i, lev[pending[j]])
            radius = ldexp(1.0, i)
            nl = 0
            for j in range(n_pending):            # batch order = priority
                if lev[pending[j]] == i:
                    in_round[nl] = pending[j]
                    nl += 1
            # conflict graph on the round, then a greedy MIS by priority; both see the block
            # and the round's members, nothing of the metric
            self.conflict_edges += conflict_graph(block, nb, in_round, nl, radius, adj_ptr, adj,
                                                  threads_for(num_threads, nl * nl))
            self.t_conflict += monotonic_seconds() - t0
            t0 = monotonic_seconds()
            greedy_mis(nl, adj_ptr, adj, chosen)
            self.t_mis += monotonic_seconds() - t0
            # attach the MIS at level i; pending points re-check the new nodes only
            t0 = monotonic_seconds()
            n_new = 0
            for j in range(nl):
                if chosen[j]:
                    a = in_round[j]
                    in_round[n_new] = a     # compacted in place: the round's new nodes
                    n_new += 1
                    p = batch[a]
                    q = best_q[a]
                    self.level[p] = i
                    self.parent[p] = q
                    self.pdist[p] = best_d[a]
                    if self._add_child(q, p, best_d[a], radius):
                        self.out_of_memory = 1
                    self.inserted[self.n_inserted] = p
                    self.n_inserted += 1
                    lev[a] = INSERTED
            # each pending point reads its own block row and writes only its own entries, so
            # the re-check runs in parallel (serially when too small to pay for the threads);
            # the pending list is then compacted in order
            threads = threads_for(num_threads, n_pending * n_new)
            for j in prange(n_pending, num_threads=threads, schedule='static'):
                b = pending[j]
                keep[j] = 0
                if lev[b] == INSERTED:
                    continue
                for k in range(n_new):
                    a = in_round[k]
                    d = block[b * nb + a]
                    if d <= radius and closer(d, batch[a], best_d[b], best_q[b]):
                        best_d[b] = d
                        best_q[b] = batch[a]
                keep[j] = self._settle(b, batch, best_d, best_q, lev)
            e = 0
            for j in range(n_pending):
                if keep[j]:
                    pending[e] = pending[j]
                    e += 1
            n_pending = e
            self.t_attach += monotonic_seconds() - t0

    cdef inline bint _settle(self, intp_t a, const intp_t* batch, const float64_t* best_d,
                             const intp_t* best_q, int32_t* lev) noexcept nogil:
        """Batch point a becomes an alias (d* = 0) or waits at level ceil(log2 d*) - 1;
        returns True when it is still pending."""
        if best_d[a] == 0.0:
            self.alias_of[batch[a]] = best_q[a]
            return False
        lev[a] = level_below(best_d[a])
        return True

    def raise_radii(self, const intp_t[::1] batch, int num_threads):
        """Keep each node's covering radius exact as the batch joins the tree.

        For every point of the batch (node or alias), the distances to all its ancestors are
        computed in parallel, then folded into the radii in batch order.
        """
        cdef intp_t nb = batch.shape[0], b, a, t, h, p
        cdef int64_t total = 0
        if nb == 0:
            return
        h = 0
        for b in range(nb):                      # chain lengths, to size the buffer
            t = 0
            a = self._first_above(batch[b])
            while a != NO_NODE:
                t += 1
                a = self.parent[a]
            total += t
            h = max(h, t)
        cdef float64_t[:, ::1] dist = np.zeros((nb, max(h, 1)))
        cdef int threads = threads_for(num_threads, total * self.pair_cost)
        with nogil:
            for b in prange(nb, num_threads=threads, schedule='dynamic', chunksize=8):
                p = batch[b]
                a = self._first_above(p)
                t = 0
                while a != NO_NODE:
                    dist[b, t] = sqrt(pair_key(&self.P, p, a))
                    t = t + 1
                    a = self.parent[a]
            for b in range(nb):
                a = self._first_above(batch[b])
                t = 0
                while a != NO_NODE:
                    if dist[b, t] > self.radius_[a]:
                        self.radius_[a] = dist[b, t]
                        if self.kid_slot[a] >= 0:
                            self.kids[self.kid_slot[a]].radius = dist[b, t]
                    t = t + 1
                    a = self.parent[a]
        self.radius_evals += total

    cdef inline intp_t _first_above(self, intp_t p) noexcept nogil:
        """The first node whose subtree holds p: its node for an alias, else its parent."""
        return self.alias_of[p] if self.alias_of[p] != NO_NODE else self.parent[p]

    # -- results --------------------------------------------------------------------------------

    def arrays_out(self):
        """(level, parent, parent_distance, alias_of, insertion_order, radius) as arrays."""
        return (np.asarray(self.level).astype(np.int64), np.asarray(self.parent).astype(np.int64),
                np.asarray(self.pdist).copy(), np.asarray(self.alias_of).astype(np.int64),
                np.asarray(self.inserted)[: self.n_inserted].astype(np.int64),
                np.asarray(self.radius_).copy())


def pair_distances(Metric metric, const int64_t[::1] a, const int64_t[::1] b,
                   int num_threads=1):
    """d(a[r], b[r]) for paired index arrays, with the same float64 evaluation as the build."""
    cdef const Points* P = &metric.P
    cdef intp_t nr = a.shape[0], r
    out = np.zeros(nr)
    cdef float64_t[::1] o = out
    with nogil:
        for r in prange(nr, num_threads=num_threads, schedule='static'):
            o[r] = sqrt(pair_key(P, a[r], b[r]))
    return out
