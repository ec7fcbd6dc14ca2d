# Exact maximin ordering (farthest-first traversal) on a tree: the compressed cover tree (the
# residual metric, or a tree the caller built), or for coordinates a k-d ball tree of this
# module's own (kd_layout, at the end).
#
# State: dmin[x], the distance from x to the chosen set (-1 once x is chosen); per node u,
# sub[u], the largest dmin in u's subtree, and top[u], the point holding it (ties by the
# smallest row index). Each step chooses top[root] (r = its dmin) and lowers dmin[x] to
# d(c, x) where that is smaller. Only points with d(c, x) < dmin[x] <= r can change, so the
# update is a range search from c over the tree that skips a subtree u when no point in it can
# change: the lower bound d(c, u) - R(u) (or, before evaluating u, |d(c, parent) - pd(u)| -
# R(u)) exceeds sub[u] + slack. sub and top are recomputed on the way back up from every
# visited node (a skipped subtree's dmin values did not change), so they stay exact: regions
# near chosen points drop out of later searches altogether, and the root's top is the next
# centre, with no heap to keep. (The search always reaches c itself, whose dmin was sub of
# every node above it, so its removal reaches the root.) Once sub[root] is 0, every point left
# is a duplicate of a chosen one, and they follow by row index. The walk is recursive, as deep
# as the tree is high.
#
# Layout: the loop works on labels, not rows. The tree's nodes are numbered breadth-first (the
# root is 0), so the children of a node are consecutive labels, and each level's nodes lie in
# the order of their ancestors: a search reads neighbouring memory, not n scattered rows. The
# aliases (points evaluated whenever their node is visited: a cover tree's rows at distance 0
# from a node, a k-d leaf's other points) come after the nodes, each node's consecutively.
# Euclidean coordinates are copied in label order; residual rows are reached through the
# label -> row map (V is too big to copy). Ties still go by row index (label -> row).
#
# Exactness: every pair is evaluated by one routine (dist), the centre always first, so the
# distance that decides a point's dmin is one reproducible float64 number, exact duplicates
# tie exactly, and the order equals the O(n^2) farthest-first loop run with that routine.
# The slack (the tree's) absorbs rounding in the triangle-inequality bounds; it can only
# widen a search.
#
# Cost: the residual metric is flat at the top (its pairs are 0.6-1 apart), so the root has
# thousands of children, nearly all of which every step must evaluate; that is most of the
# work. Sequential steps therefore evaluate the root's children for the next few centres
# (predicted by next_points) in one pass (fill_ahead), reading each child's V row once for
# all of them.
#
# Parallelism: a big step (the first ones, when r is near the diameter) expands the top of
# the tree level by level, evaluating each level's children in a prange, then walks the live
# subtrees on threads (their dmin entries are disjoint); sub and top of the expanded nodes
# are recomputed afterwards. The root's top is the unique maximum of a strict total order on
# (dmin, row index), so the order depends neither on the thread count nor on which thread
# updated what. Small steps run on the calling thread alone: a parallel region per step would
# cost more than the step.
#
# Slices: the loop's state lives in a Farthest object; run() advances it for a given time and
# returns, so the caller can report progress and honour Ctrl-C between slices. The state is
# carried whole from one slice to the next, so the order does not depend on the slicing.

from cython.parallel cimport prange, parallel, threadid
from cpython.exc cimport PyErr_CheckSignals
from libc.math cimport sqrt, fabs, INFINITY

import numpy as np

from residual._typedefs cimport float64_t, intp_t, int64_t
from residual._tiles cimport Metric, Points, closer, pair_key, sqdist
from residual._interrupt cimport monotonic_seconds
from residual._split cimport split_at, swap_rows


cdef struct Data:
    Points P
    const int64_t* row       # label -> the metric's row, or NULL: rows stored in label order


cdef struct Tree:
    # children of node u: labels children_ptr[u] .. children_ptr[u + 1] - 1; aliases likewise
    const int64_t* children_ptr
    const int64_t* alias_ptr
    const float64_t* radius
    const float64_t* pdist
    float64_t slack


cdef struct Walk:
    # one range search from centre c over some subtrees, by one thread
    const Data* D
    const Tree* T
    const int64_t* row       # label -> row index (ties)
    float64_t* dmin
    float64_t* sub
    intp_t* top
    intp_t c
    intp_t updates           # points whose dmin went down
    int64_t evals
    const float64_t* netrow  # d(c, child j of the root) for every j, evaluated ahead, or NULL
    int64_t looked           # entries of netrow used (evaluations the step did not pay for)
    char pad[128]            # keeps the threads' counters off each other's cache lines


cdef inline float64_t dist(const Data* D, intp_t c, intp_t x) noexcept nogil:
    """d(c, x) for the centre c (labels), always with the centre first.

    pair_key is not bit-symmetric (it scales |C| by s_c, then by s_x), so the argument order
    is fixed: the pair (c, x) that decides x's distance to the chosen set is evaluated once,
    in c's step, always the same way, and exact duplicates x, y of each other (s_x = s_y, the
    same C) get bit-identical distances from every centre, so their ties go by index.
    NumPy: ``sqrt(key(c, x))``.
    """
    if c == x:
        return 0.0
    if D.row != NULL:
        return sqrt(pair_key(&D.P, D.row[c], D.row[x]))
    return sqrt(pair_key(&D.P, c, x))


cdef inline float64_t offer(Walk* W, intp_t x, float64_t dx) noexcept nogil:
    """Lower dmin[x] to dx if smaller (chosen points hold -1); return the new dmin[x]."""
    if dx < W.dmin[x]:
        W.dmin[x] = dx
        W.updates += 1
    return W.dmin[x]


cdef inline void keep_best(const Walk* W, float64_t s, intp_t x, float64_t* best,
                           intp_t* at) noexcept nogil:
    """(best, at) becomes (s, x) if x comes first in the farthest-first order: farther from
    the chosen set, ties by the smaller row index."""
    if s > best[0] or (s == best[0] and W.row[x] < W.row[at[0]]):
        best[0] = s
        at[0] = x


cdef inline bint skip(const Tree* T, const float64_t* sub, intp_t w,
                      float64_t lower) noexcept nogil:
    """True if no point under w can change: none unchosen with dmin > 0, or all too far."""
    return sub[w] <= 0.0 or lower - T.radius[w] > sub[w] + T.slack


cdef void visit(Walk* W, intp_t u, float64_t du) noexcept nogil:
    """Update dmin in u's subtree from the centre (du = d(c, u)); recompute sub[u], top[u]."""
    cdef const Tree* T = W.T
    cdef intp_t a, w, at = u
    cdef float64_t best, dw
    best = offer(W, u, du)
    for a in range(T.alias_ptr[u], T.alias_ptr[u + 1]):
        W.evals += a != W.c
        keep_best(W, offer(W, a, dist(W.D, W.c, a)), a, &best, &at)
    for w in range(T.children_ptr[u], T.children_ptr[u + 1]):
        if not skip(T, W.sub, w, fabs(du - T.pdist[w])):
            if u == 0 and W.netrow != NULL:
                dw = W.netrow[w - T.children_ptr[0]]     # counted when it was evaluated
                W.looked += 1
            else:
                dw = dist(W.D, W.c, w)
                W.evals += w != W.c
            if not skip(T, W.sub, w, dw):
                visit(W, w, dw)
        keep_best(W, W.sub[w], W.top[w], &best, &at)
    W.sub[u] = best
    W.top[u] = at


# -- the parallel search and the scan ------------------------------------------------------------

cdef struct Work:
    # buffers of the parallel search, each n long (walks: one per thread)
    intp_t* frontier         # the nodes of the level being expanded, then the subtrees to walk
    float64_t* fdist         # their distances to the centre
    intp_t* cand             # the next level's children that survive the parent bound
    float64_t* cdist         # their distances to the centre
    intp_t* top              # the expanded nodes, level by level
    Walk* walks
    int num_threads
    intp_t nfront            # expand until this many subtrees are live


cdef int64_t search(Walk* W, intp_t c, Work* K) noexcept nogil:
    """One step's range search from c; returns the distance evaluations.

    K NULL: a depth-first walk from the root on this thread. Otherwise the top of the tree is
    expanded level by level, each level's children evaluated in parallel, until nfront
    subtrees are live; those are walked in parallel and sub and top of the expanded nodes
    are then recomputed bottom-up.
    """
    cdef float64_t d0 = dist(W.D, c, 0)
    W.c = c
    W.evals = c != 0
    if skip(W.T, W.sub, 0, d0):
        return W.evals
    if K == NULL:
        visit(W, 0, d0)
        return W.evals
    return parallel_search(W, c, d0, K)


cdef int64_t parallel_search(Walk* W, intp_t c, float64_t d0, Work* K) noexcept nogil:
    """Expand the top of the tree level by level, then walk the live subtrees on threads."""
    cdef const Tree* T = W.T
    cdef intp_t nf = 1, nc, ntop = 0, u, t, w, i, a, tid
    cdef float64_t du
    K.frontier[0] = 0
    K.fdist[0] = d0
    while 0 < nf < K.nfront:
        nc = 0
        for i in range(nf):
            u = K.frontier[i]
            du = K.fdist[i]
            K.top[ntop] = u
            ntop += 1
            for a in range(T.alias_ptr[u], T.alias_ptr[u + 1]):
                W.evals += a != c
                offer(W, a, dist(W.D, c, a))
            offer(W, u, du)
            for w in range(T.children_ptr[u], T.children_ptr[u + 1]):
                if not skip(T, W.sub, w, fabs(du - T.pdist[w])):
                    K.cand[nc] = w
                    nc += 1
        # the wide part of the tree (the residual metric's net): one distance per child
        if nc >= 64:
            for i in prange(nc, num_threads=K.num_threads, schedule='static'):
                K.cdist[i] = dist(W.D, c, K.cand[i])
        else:
            for i in range(nc):
                K.cdist[i] = dist(W.D, c, K.cand[i])
        nf = 0
        for i in range(nc):
            w = K.cand[i]
            W.evals += w != c
            if not skip(T, W.sub, w, K.cdist[i]):
                K.frontier[nf] = w
                K.fdist[nf] = K.cdist[i]
                nf += 1
    for i in range(K.num_threads):
        K.walks[i] = W[0]
        K.walks[i].updates = 0
        K.walks[i].evals = 0
    with parallel(num_threads=K.num_threads):
        tid = threadid()
        for i in prange(nf, schedule='dynamic', chunksize=1):
            visit(&K.walks[tid], K.frontier[i], K.fdist[i])
        # end: prange
    for i in range(K.num_threads):
        W.updates += K.walks[i].updates
        W.evals += K.walks[i].evals
    # sub of the expanded nodes, children before parents (reverse breadth-first order)
    for i in range(ntop - 1, -1, -1):
        restore_sub(W, K.top[i])
    return W.evals


cdef inline void restore_sub(Walk* W, intp_t u) noexcept nogil:
    """sub[u] and top[u] from u's own dmin, its aliases' and its children's sub and top."""
    cdef const Tree* T = W.T
    cdef intp_t t, at = u
    cdef float64_t best = W.dmin[u]
    for t in range(T.alias_ptr[u], T.alias_ptr[u + 1]):
        keep_best(W, W.dmin[t], t, &best, &at)
    for t in range(T.children_ptr[u], T.children_ptr[u + 1]):
        keep_best(W, W.sub[t], W.top[t], &best, &at)
    W.sub[u] = best
    W.top[u] = at


# -- evaluating the root's children for the next few centres at once -----------------------------
#
# Where the root is wide (the residual metric's net: thousands of children, most of which every
# step must evaluate), the children's V rows are the bulk of the memory traffic. The centres
# of the next steps are, nearly always, the next points of the order as it stands (found
# best-first over sub and top, which bound their subtrees from above): their distances to all
# the root's children are evaluated together, child by child, so each child's row is read
# once for up to LOOKAHEAD centres. A pair's value does not depend on when it is evaluated
# (same routine, same argument order), so the order does not change; a centre whose row was
# dropped (a refill came first) is simply evaluated again.

DEF LOOKAHEAD = 64
#: Fewest pairs for which fill_ahead starts threads (fewer: the region costs more than it saves).
DEF AHEAD_PARALLEL_PAIRS = 4096


cdef struct Item:
    # an entry of the best-first queue: a point (u = -1) or a node u, keyed by (d, row of p)
    float64_t d
    intp_t u
    intp_t p


cdef struct Ahead:
    intp_t net0              # the root's children: labels net0 .. net0 + nn - 1
    intp_t nn
    float64_t* rows          # LOOKAHEAD x nn
    intp_t* owner            # the centre of each row
    intp_t* slot             # per point: its row, or -1
    intp_t nrows
    Item* queue              # scratch: the best-first queue (each node and point once: 2 n)
    intp_t* live             # scratch: the children evaluated (nn)


cdef inline bint item_above(const int64_t* row, Item a, Item b) noexcept nogil:
    """a before b in the queue: farther first, ties by the smaller row."""
    return closer(-a.d, row[a.p], -b.d, row[b.p])


cdef void item_push(const int64_t* row, Item* q, intp_t* nq, float64_t d, intp_t u,
                    intp_t p) noexcept nogil:
    """Push (d, u, p) on the binary max-heap q[:nq]."""
    cdef intp_t i = nq[0], up
    cdef Item x
    x.d, x.u, x.p = d, u, p
    nq[0] += 1
    while i > 0:
        up = (i - 1) // 2
        if not item_above(row, x, q[up]):
            break
        q[i] = q[up]
        i = up
    q[i] = x


cdef Item item_pop(const int64_t* row, Item* q, intp_t* nq) noexcept nogil:
    """Remove and return the top of q[:nq]."""
    cdef Item first = q[0], x
    cdef intp_t i = 0, c
    nq[0] -= 1
    x = q[nq[0]]
    while True:
        c = 2 * i + 1
        if c >= nq[0]:
            break
        if c + 1 < nq[0] and item_above(row, q[c + 1], q[c]):
            c += 1
        if not item_above(row, q[c], x):
            break
        q[i] = q[c]
        i = c
    q[i] = x
    return first


cdef intp_t next_points(const Walk* W, intp_t* out, intp_t k, Item* q) noexcept nogil:
    """The first k unchosen points at positive distance in farthest-first order as it stands
    (the next centres, unless their searches lower some): best-first over the tree, a node
    keyed by (sub, top), which no point below it exceeds."""
    cdef const Tree* T = W.T
    cdef intp_t nq = 0, got = 0, u, t
    cdef Item it
    if W.sub[0] > 0.0:
        item_push(W.row, q, &nq, W.sub[0], 0, W.top[0])
    while got < k and nq > 0:
        it = item_pop(W.row, q, &nq)
        if it.u < 0:
            out[got] = it.p
            got += 1
            continue
        u = it.u
        if W.dmin[u] > 0.0:
            item_push(W.row, q, &nq, W.dmin[u], -1, u)
        for t in range(T.alias_ptr[u], T.alias_ptr[u + 1]):
            if W.dmin[t] > 0.0:
                item_push(W.row, q, &nq, W.dmin[t], -1, t)
        for t in range(T.children_ptr[u], T.children_ptr[u + 1]):
            if W.sub[t] > 0.0:
                item_push(W.row, q, &nq, W.sub[t], t, W.top[t])
    return got


cdef int64_t fill_ahead(const Walk* W, Ahead* A, intp_t c, int num_threads) noexcept nogil:
    """Rows for c (chosen: its dmin is -1) and the next centres; returns the evaluations.

    Children with sub <= 0 (nothing below them can change, now or later: sub only goes
    down) are left out; the search skips them before it would read their entry.
    """
    cdef intp_t k, j, jj, nb, nlive = 0
    cdef int64_t evals = 0
    for k in range(A.nrows):
        A.slot[A.owner[k]] = -1
    A.owner[0] = c
    nb = 1 + next_points(W, A.owner + 1, LOOKAHEAD - 1, A.queue)
    for k in range(nb):
        A.slot[A.owner[k]] = k
    A.nrows = nb
    for j in range(A.nn):
        if W.sub[A.net0 + j] > 0.0:
            A.live[nlive] = j
            nlive += 1
    # child by child: its row is read once for all nb centres
    if nlive * nb >= AHEAD_PARALLEL_PAIRS:
        for jj in prange(nlive, num_threads=num_threads, schedule='static'):
            j = A.live[jj]
            for k in range(nb):
                A.rows[k * A.nn + j] = dist(W.D, A.owner[k], A.net0 + j)
    else:
        for jj in range(nlive):
            j = A.live[jj]
            for k in range(nb):
                A.rows[k * A.nn + j] = dist(W.D, A.owner[k], A.net0 + j)
    for k in range(nb):
        for jj in range(nlive):
            evals += A.owner[k] != A.net0 + A.live[jj]
    return evals


# -- the farthest-first loop ---------------------------------------------------------------------

cdef class Farthest:
    """The farthest-first loop over a relabelled tree, advanced in slices by run().

    Parameters (all arrays already checked and in label order, see ordering.Layout)
    ----------
    metric : Metric
        The tree's metric, its rows in label order for Euclidean.
    layout : ordering.Layout
        label -> row index, the CSR ranges of children and aliases (labels), covering radii
        and parent distances, the tree's slack, and every node, each after its children.
    start : int
        Label of the first point.
    order, out_dist, step_evals : ndarray
        Filled as the steps run: the row chosen at each step, its distance to the earlier
        ones, the distance evaluations of each step (zeros on entry).
    num_threads : int
    limits : tuple
        ``(parallel_min_evals, ahead_min_children, scan_min_evals)``: a step runs its search
        or scan on num_threads threads when the step before it reached at least
        parallel_min_evals points (its evaluations, or for a scan the points within r of its
        centre: a cheap predictor of this step's work); sequential steps evaluate the root's
        children ahead for the next centres when the root has at least ahead_min_children
        children; a step scans all points when the step before it reached at least
        scan_min_evals. The answer depends on none of these.
    """
    cdef Data D
    cdef Tree T
    cdef Walk W
    cdef Work K
    cdef Work* par
    cdef Ahead A
    cdef bint ahead
    cdef int num_threads
    cdef intp_t n, start, parallel_min, scan_min, nbottom, next_row
    cdef readonly intp_t done
    cdef int64_t evals, parallel_steps, scan_steps, reach, fill
    cdef const int64_t* bottom_up
    cdef intp_t* label           # row -> label
    cdef const intp_t* by_row    # the same where rows are not stored in label order, or NULL
    cdef float64_t* buf
    cdef int64_t* order
    cdef float64_t* out_dist
    cdef int64_t* step_evals
    cdef object keep             # the arrays the pointers above point into

    def __init__(self, Metric metric, layout, intp_t start, int64_t[::1] order,
                 float64_t[::1] out_dist, int64_t[::1] step_evals, int num_threads,
                 tuple limits):
        cdef bint residual = metric.P.residual
        cdef const int64_t[::1] row = layout.row
        cdef const int64_t[::1] children_ptr = layout.children_ptr
        cdef const int64_t[::1] alias_ptr = layout.alias_ptr
        cdef const float64_t[::1] radius = layout.radius
        cdef const float64_t[::1] pdist = layout.pdist
        cdef const int64_t[::1] bottom_up = layout.bottom_up
        cdef intp_t n = row.shape[0], nn, j
        self.D.P = metric.P
        self.D.row = &row[0] if residual else NULL
        self.T.children_ptr = &children_ptr[0]
        self.T.alias_ptr = &alias_ptr[0]
        self.T.radius = &radius[0]
        self.T.pdist = &pdist[0]
        self.T.slack = layout.slack
        self.n, self.start, self.num_threads = n, start, num_threads
        self.parallel_min, ahead_min, self.scan_min = limits
        self.bottom_up = &bottom_up[0]
        self.nbottom = bottom_up.shape[0]
        self.order, self.out_dist, self.step_evals = &order[0], &out_dist[0], &step_evals[0]
        dmin_a = np.full(n, INFINITY)
        sub_a = np.full(n, INFINITY)       # nothing is known yet: no subtree may be skipped
        top_a = np.zeros(n, dtype=np.intp)
        label_a = np.empty(n, dtype=np.intp)
        work_i = np.empty((3, n), dtype=np.intp)
        work_d = np.empty((3, n))
        walks_a = np.empty(max(num_threads, 1) * sizeof(Walk), dtype=np.uint8)
        nn = children_ptr[1] - children_ptr[0]
        self.ahead = nn >= ahead_min and nn > 0      # only a wide root is worth it
        rows_a = np.empty(LOOKAHEAD * nn if self.ahead else 1)
        ahead_a = np.full(n + LOOKAHEAD + nn, -1, dtype=np.intp)       # slot, owner, live
        queue_a = np.empty((2 * n + 1 if self.ahead else 1) * sizeof(Item), dtype=np.uint8)
        self.keep = (metric, layout, order, out_dist, step_evals, dmin_a, sub_a, top_a,
                     label_a, work_i, work_d, walks_a, rows_a, ahead_a, queue_a)
        cdef float64_t[::1] dmin = dmin_a
        cdef float64_t[::1] sub = sub_a
        cdef intp_t[::1] top = top_a
        cdef intp_t[::1] lab = label_a
        cdef intp_t[:, ::1] wi = work_i
        cdef float64_t[:, ::1] wd = work_d
        cdef unsigned char[::1] wk = walks_a
        cdef float64_t[::1] rows = rows_a
        cdef intp_t[::1] ai = ahead_a
        cdef unsigned char[::1] qu = queue_a
        for j in range(n):
            lab[row[j]] = j
        self.label = &lab[0]
        self.by_row = self.label if residual else NULL
        self.next_row = 0
        self.buf = &wd[2, 0]
        self.W.D = &self.D
        self.W.T = &self.T
        self.W.row = &row[0]
        self.W.dmin = &dmin[0]
        self.W.sub = &sub[0]
        self.W.top = &top[0]
        self.W.updates = 0
        self.W.netrow = NULL
        self.A.net0 = children_ptr[0]
        self.A.nn = nn
        self.A.rows = &rows[0]
        self.A.slot, self.A.owner, self.A.live = &ai[0], &ai[n], &ai[n + LOOKAHEAD]
        self.A.queue = <Item*>&qu[0]
        self.A.nrows = 0
        self.K.frontier, self.K.cand, self.K.top = &wi[0, 0], &wi[1, 0], &wi[2, 0]
        self.K.fdist, self.K.cdist = &wd[0, 0], &wd[1, 0]
        self.K.walks = <Walk*>&wk[0]
        self.K.num_threads = num_threads
        self.K.nfront = 8 * num_threads
        self.par = &self.K if num_threads > 1 else NULL
        self.done = 0

    def run(self, float64_t seconds):
        """Place points for about `seconds` (at least one step), or until all are placed;
        returns how many are placed. Raises KeyboardInterrupt (or what a signal handler
        raised) if a signal came meanwhile."""
        cdef float64_t t_end = monotonic_seconds() + seconds
        with nogil:
            if self.done == 0:
                self.first()
            while self.done < self.n:
                self.step()
                if monotonic_seconds() >= t_end:
                    break
        PyErr_CheckSignals()
        return self.done

    def counters(self):
        return {"distance_evaluations": int(self.evals), "updates": int(self.W.updates),
                "parallel_steps": int(self.parallel_steps),
                "scan_steps": int(self.scan_steps)}

    cdef inline int threads_for(self, int64_t reach) noexcept nogil:
        """The threads for a step predicted to reach `reach` points."""
        return self.num_threads if reach >= self.parallel_min else 1

    cdef int64_t scan(self, Walk* W, intp_t c, float64_t r, int num_threads,
                      int64_t* inball) noexcept nogil:
        """One step by a plain scan of the points; returns the distance evaluations and, in
        inball, how many points lie within r of c (what a tree search must reach at least).

        For steps that reach most of the tree anyway (r near the diameter); on num_threads
        threads, or on this one if num_threads is 1. Points go in storage order (by_row: row ->
        label where the rows are not stored in label order, else NULL), so the rows stream
        from memory. The distances come from the same routine, so the updates are the tree
        search's. sub and top are then rebuilt for every node, children first (bottom_up: every
        node, each after all of its children).
        """
        cdef intp_t x, i, q
        cdef float64_t* buf = self.buf
        cdef const intp_t* by_row = self.by_row
        W.c = c
        W.evals = 0
        inball[0] = 0
        if num_threads > 1:
            for q in prange(W.D.P.n, num_threads=num_threads, schedule='static'):
                x = q if by_row == NULL else by_row[q]
                if W.dmin[x] > 0.0:             # chosen points (-1) and points at 0 cannot change
                    buf[x] = dist(W.D, c, x)
        else:
            for q in range(W.D.P.n):
                x = q if by_row == NULL else by_row[q]
                if W.dmin[x] > 0.0:
                    buf[x] = dist(W.D, c, x)
        for x in range(W.D.P.n):
            if W.dmin[x] > 0.0:
                W.evals += 1
                inball[0] += buf[x] <= r
                offer(W, x, buf[x])
        for i in range(self.nbottom):
            restore_sub(W, self.bottom_up[i])
        return W.evals

    cdef void first(self) noexcept nogil:
        """The first centre: every point is at distance inf, so the search reaches all."""
        self.order[0] = self.W.row[self.start]
        self.out_dist[0] = INFINITY
        self.W.dmin[self.start] = -1.0
        self.evals = self.scan(&self.W, self.start, INFINITY, self.threads_for(self.n),
                               &self.reach)
        self.step_evals[0] = self.evals
        self.done = 1

    cdef void step(self) noexcept nogil:
        """Choose the next centre and lower the others' distances to the chosen set."""
        cdef Walk* W = &self.W
        cdef intp_t t = self.done, c
        cdef float64_t r = W.sub[0]
        cdef int64_t last, inball = 0
        if r <= 0.0:
            # every point left is at distance 0 from a chosen one: they come by row index
            while W.dmin[self.label[self.next_row]] < 0.0:
                self.next_row += 1
            c = self.label[self.next_row]
            r = 0.0
        else:
            c = W.top[0]
        self.order[t] = W.row[c]
        self.out_dist[t] = r
        W.dmin[c] = -1.0
        self.done = t + 1
        if r <= 0.0 or self.done == self.n:
            return                # nothing can get closer than 0, or nothing is left
        W.looked = 0
        if self.reach >= self.scan_min:
            self.scan_steps += 1
            last = self.scan(W, c, r, self.threads_for(self.reach), &inball)
        elif self.par != NULL and self.reach >= self.parallel_min:
            self.parallel_steps += 1
            last = search(W, c, self.par)
        elif self.ahead:
            if self.A.slot[c] < 0:
                self.fill = fill_ahead(W, &self.A, c, self.num_threads)
            W.netrow = self.A.rows + self.A.slot[c] * self.A.nn
            last = search(W, c, NULL)
            W.netrow = NULL
            self.A.slot[c] = -1
        else:
            last = search(W, c, NULL)
        # the next step's reach is predicted by this one's: the pairs its search needed
        # (evaluated ahead or not, the batch's other rows left out), or for a scan, which
        # evaluates every point, the points within r of its centre (a search reaches
        # at least those)
        self.reach = inball if self.reach >= self.scan_min else last + W.looked
        last += self.fill
        self.fill = 0
        self.evals += last
        self.step_evals[t] = last


# -- a tree of its own for Euclidean points: a ball tree on k-d splits ---------------------------
#
# The loop needs, of its tree, only that every node is a point, that a node's radius bounds
# the distance from it to everything below it (aliases included), and that children and
# aliases are consecutive labels. For coordinates a k-d split builds such a tree in
# O(n log n) with no pairwise search, far faster than the cover tree: each node's range of
# points is split at the median of its widest coordinate, the point nearest the middle of
# the range's box becomes the node, and small ranges become leaves whose other points are
# aliases (evaluated whenever the leaf is visited). Nodes are labelled breadth-first.

def kd_layout(const float64_t[:, ::1] x, intp_t leaf_size):
    """The k-d ball tree of the rows of x, as ordering.Layout's fields less the slack, plus
    the distance evaluations its radii took: ``(row, children_ptr, alias_ptr, radius,
    pdist, bottom_up, evals)``."""
    cdef intp_t n = x.shape[0], dim = x.shape[1], j, lo, hi, mid, a, b, t, best, axis
    cdef intp_t nnodes = 1, nal = 0
    cdef int64_t evals = 0
    cdef float64_t d, dbest, ext, wide
    cdef float64_t* px
    idx_a = np.arange(n, dtype=np.intp)
    xs_a = np.array(x)                 # the coordinates, moved along with idx
    # per node label: its range of idx (its subtree's points); at most n nodes
    lo_a = np.empty(n, dtype=np.intp)
    hi_a = np.empty(n, dtype=np.intp)
    par_a = np.zeros(n, dtype=np.intp)
    row_a = np.empty(n, dtype=np.int64)
    cptr_a = np.empty(n + 1, dtype=np.int64)
    aptr_a = np.empty(n + 1, dtype=np.int64)
    radius_a = np.zeros(n)
    pdist_a = np.zeros(n)
    box_a = np.empty((2, dim))
    cdef intp_t[::1] idx = idx_a
    cdef intp_t[::1] rlo = lo_a
    cdef intp_t[::1] rhi = hi_a
    cdef intp_t[::1] par = par_a
    cdef int64_t[::1] row = row_a
    cdef int64_t[::1] cptr = cptr_a
    cdef int64_t[::1] aptr = aptr_a
    cdef float64_t[::1] radius = radius_a
    cdef float64_t[::1] pdist = pdist_a
    cdef float64_t[:, ::1] box = box_a
    cdef float64_t[:, ::1] xs = xs_a
    px = &xs[0, 0]
    with nogil:
        rlo[0] = 0
        rhi[0] = n
        j = 0
        while j < nnodes:              # the queue of nodes is the breadth-first order
            lo = rlo[j]
            hi = rhi[j]
            for a in range(dim):
                box[0, a] = INFINITY
                box[1, a] = -INFINITY
            for t in range(lo, hi):
                for a in range(dim):
                    d = px[t * dim + a]
                    box[0, a] = d if d < box[0, a] else box[0, a]
                    box[1, a] = d if d > box[1, a] else box[1, a]
            axis = 0
            wide = -1.0
            for a in range(dim):
                ext = box[1, a] - box[0, a]
                if ext > wide:
                    wide = ext
                    axis = a
                box[0, a] = 0.5 * (box[0, a] + box[1, a])        # the box's middle
            best = lo
            dbest = INFINITY
            for t in range(lo, hi):
                d = sqdist(&box[0, 0], px + t * dim, dim)
                if d < dbest:
                    dbest = d
                    best = t
            swap_rows(&idx[0], px, dim, lo, best)
            row[j] = idx[lo]
            if j > 0:                        # a node's point stays first in its range
                pdist[j] = sqrt(sqdist(px + rlo[par[j]] * dim, px + lo * dim, dim))
                evals += 1
            for t in range(lo + 1, hi):      # the exact covering radius
                d = sqrt(sqdist(px + lo * dim, px + t * dim, dim))
                radius[j] = d if d > radius[j] else radius[j]
            evals += hi - lo - 1
            cptr[j] = nnodes
            if hi - lo > leaf_size and hi - lo >= 3:     # two non-empty children
                mid = (lo + 1 + hi) // 2
                split_at(&idx[0], px, dim, lo + 1, hi, mid, axis)
                rlo[nnodes] = lo + 1
                rhi[nnodes] = mid
                rlo[nnodes + 1] = mid
                rhi[nnodes + 1] = hi
                par[nnodes] = j
                par[nnodes + 1] = j
                nnodes += 2
            j += 1
        cptr[nnodes] = nnodes
        # the leaves' other points become aliases, after the nodes, leaf by leaf
        for j in range(nnodes):
            aptr[j] = nnodes + nal
            if cptr[j + 1] == cptr[j]:
                for t in range(rlo[j] + 1, rhi[j]):
                    row[nnodes + nal] = idx[t]
                    nal += 1
        for j in range(nnodes, n + 1):
            cptr[j] = nnodes
            aptr[j] = n
    return row_a, cptr_a, aptr_a, radius_a, pdist_a, np.arange(nnodes - 1, -1, -1), evals
