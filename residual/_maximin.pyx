# Exact maximin ordering (farthest-first traversal) on the compressed cover tree.
#
# State: dmin[x], the distance from x to the chosen set (-1 once x is chosen), and an indexed
# max-heap of the unchosen points keyed by (dmin descending, index ascending). Each step pops
# the top c (r = dmin[c]) and lowers dmin[x] to d(c, x) where that is smaller. Only points with
# d(c, x) < dmin[x] <= r can change, so the update is a range search from c over the tree that
# skips a subtree u when no point in it can change: the lower bound d(c, u) - R(u) (or, before
# evaluating u, |d(c, parent) - pd(u)| - R(u)) exceeds sub[u] + slack, where sub[u] bounds the
# largest dmin in u's subtree from above. sub is recomputed on the way back up from every
# visited node (a skipped subtree's dmin values did not change), which makes it far tighter
# than r: regions near chosen points drop out of later searches altogether. The walk is
# recursive, as deep as the tree is high.
#
# Exactness: every pair is evaluated by one routine (dist), the centre always first, so the
# distance that decides a point's dmin is one reproducible float64 number, exact duplicates
# tie exactly, and the order equals the O(n^2) farthest-first loop run with that routine.
# The slack (the tree's) absorbs rounding in the triangle-inequality bounds; it can only
# widen a search.
#
# Cost: the residual metric is flat at the top (DESIGN.md section 4), so the root has
# thousands of children, nearly all of which every step must evaluate; that is most of the
# work. Sequential steps therefore evaluate the root's children for the next few centres the
# heap predicts in one pass (fill_ahead), reading each child's V row once for all of them.
#
# Parallelism: a big step (the first ones, when r is near the diameter) expands the top of
# the tree level by level, evaluating each level's children in a prange, then walks the live
# subtrees on threads (their dmin entries are disjoint); the heap is updated afterwards. The
# heap's top is the unique maximum of a strict total order on (dmin, index), so the order
# depends neither on the thread count nor on which thread updated what.

from cython.parallel cimport prange, parallel, threadid
from libc.math cimport sqrt, fabs, INFINITY
from libc.stdlib cimport qsort

import numpy as np

from residual._typedefs cimport float64_t, intp_t, int64_t
from residual._tiles cimport Points, fill_points, pair_key


cdef struct Tree:
    intp_t root
    const int64_t* children_ptr
    const int64_t* children
    const int64_t* alias_ptr
    const int64_t* aliases
    const float64_t* radius
    const float64_t* pdist
    float64_t slack


cdef struct Walk:
    # one range search from centre c over some subtrees, by one thread
    const Points* P
    const Tree* T
    float64_t* dmin
    float64_t* sub
    intp_t c
    intp_t* changed          # points whose dmin went down (for the heap afterwards)
    intp_t nchanged
    int64_t evals
    const float64_t* netrow  # d(c, child j of the root) for every j, evaluated ahead, or NULL
    int64_t looked           # entries of netrow used (evaluations the step did not pay for)
    char pad[128]            # keeps the threads' counters off each other's cache lines


cdef inline float64_t dist(const Points* P, intp_t c, intp_t x) noexcept nogil:
    """d(c, x) for the centre c, always with the centre first.

    pair_key is not bit-symmetric (it scales |C| by s_c, then by s_x), so the argument order
    is fixed: the pair (c, x) that decides x's distance to the chosen set is evaluated once,
    in c's step, always the same way, and exact duplicates x, y of each other (s_x = s_y, the
    same C) get bit-identical distances from every centre, so their ties go by index.
    NumPy: ``sqrt(key(c, x))``.
    """
    if c == x:
        return 0.0
    return sqrt(pair_key(P, c, x))


cdef inline float64_t offer(Walk* W, intp_t x, float64_t dx) noexcept nogil:
    """Lower dmin[x] to dx if smaller (chosen points hold -1); return the new dmin[x]."""
    if dx < W.dmin[x]:
        W.dmin[x] = dx
        W.changed[W.nchanged] = x
        W.nchanged += 1
    return W.dmin[x]


cdef inline bint skip(const Tree* T, const float64_t* sub, intp_t w,
                      float64_t lower) noexcept nogil:
    """True if no point under w can change: none unchosen with dmin > 0, or all too far."""
    return sub[w] <= 0.0 or lower - T.radius[w] > sub[w] + T.slack


cdef float64_t visit(Walk* W, intp_t u, float64_t du) noexcept nogil:
    """Update dmin in u's subtree from the centre (du = d(c, u)); return and store sub[u]."""
    cdef const Tree* T = W.T
    cdef intp_t t, a, w
    cdef float64_t best, dw, s
    best = offer(W, u, du)
    for t in range(T.alias_ptr[u], T.alias_ptr[u + 1]):
        a = T.aliases[t]
        W.evals += a != W.c
        s = offer(W, a, dist(W.P, W.c, a))
        best = s if s > best else best
    for t in range(T.children_ptr[u], T.children_ptr[u + 1]):
        w = T.children[t]
        if skip(T, W.sub, w, fabs(du - T.pdist[w])):
            s = W.sub[w]
        else:
            if u == T.root and W.netrow != NULL:
                dw = W.netrow[t - T.children_ptr[u]]     # counted when it was evaluated
                W.looked += 1
            else:
                dw = dist(W.P, W.c, w)
                W.evals += w != W.c
            s = W.sub[w] if skip(T, W.sub, w, dw) else visit(W, w, dw)
        best = s if s > best else best
    W.sub[u] = best
    return best


# -- indexed max-heap of the unchosen points, ordered by (dmin desc, index asc) -----------------

cdef inline bint above(const float64_t* d, intp_t a, intp_t b) noexcept nogil:
    """a comes before b: farther from the chosen set, ties by the smaller index."""
    return d[a] > d[b] or (d[a] == d[b] and a < b)


cdef void sift_down(const float64_t* d, intp_t* h, intp_t* pos, intp_t size,
                    intp_t p) noexcept nogil:
    """Restore the heap below position p (after h[p]'s key went down)."""
    cdef intp_t x = h[p], c
    while True:
        c = 2 * p + 1
        if c >= size:
            break
        if c + 1 < size and above(d, h[c + 1], h[c]):
            c += 1
        if not above(d, h[c], x):
            break
        h[p] = h[c]
        pos[h[p]] = p
        p = c
    h[p] = x
    pos[x] = p


cdef intp_t heap_pop(const float64_t* d, intp_t* h, intp_t* pos, intp_t* size) noexcept nogil:
    """Remove and return the top."""
    cdef intp_t top = h[0]
    size[0] -= 1
    if size[0] > 0:
        h[0] = h[size[0]]
        pos[h[0]] = 0
        sift_down(d, h, pos, size[0], 0)
    pos[top] = -1
    return top


cdef int _descending(const void* a, const void* b) noexcept nogil:
    cdef intp_t x = (<const intp_t*>a)[0], y = (<const intp_t*>b)[0]
    return (x < y) - (x > y)


cdef void reheap(const float64_t* d, intp_t* h, intp_t* pos, intp_t size, intp_t* changed,
                 intp_t nchanged) noexcept nogil:
    """Restore the heap after the keys of the points in changed went down.

    Several lowered keys at once must be sifted deepest position first (as in heapify): a
    shallower one sifted first can settle above a deeper one that later rises past it.
    changed is overwritten with the positions.
    """
    cdef intp_t i
    for i in range(nchanged):
        changed[i] = pos[changed[i]]
    qsort(changed, nchanged, sizeof(intp_t), _descending)
    for i in range(nchanged):
        sift_down(d, h, pos, size, changed[i])


# -- the farthest-first loop ---------------------------------------------------------------------

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
    subtrees are live; those are walked in parallel and sub of the expanded nodes is then
    recomputed bottom-up.
    """
    cdef const Tree* T = W.T
    cdef float64_t d0 = dist(W.P, c, T.root)
    W.c = c
    W.evals = T.root != c
    W.nchanged = 0
    if skip(T, W.sub, T.root, d0):
        return W.evals
    if K == NULL:
        visit(W, T.root, d0)
        return W.evals
    return parallel_search(W, c, d0, K)


cdef int64_t parallel_search(Walk* W, intp_t c, float64_t d0, Work* K) noexcept nogil:
    """Expand the top of the tree level by level, then walk the live subtrees on threads."""
    cdef const Tree* T = W.T
    cdef intp_t nf = 1, nc, ntop = 0, u, t, w, i, a, tid
    cdef float64_t du, best, s
    K.frontier[0] = T.root
    K.fdist[0] = d0
    while 0 < nf < K.nfront:
        nc = 0
        for i in range(nf):
            u = K.frontier[i]
            du = K.fdist[i]
            K.top[ntop] = u
            ntop += 1
            for t in range(T.alias_ptr[u], T.alias_ptr[u + 1]):
                a = T.aliases[t]
                W.evals += a != c
                offer(W, a, dist(W.P, c, a))
            offer(W, u, du)
            for t in range(T.children_ptr[u], T.children_ptr[u + 1]):
                w = T.children[t]
                if not skip(T, W.sub, w, fabs(du - T.pdist[w])):
                    K.cand[nc] = w
                    nc += 1
        # the wide part of the tree (the residual metric's net): one distance per child
        if nc >= 64:
            for i in prange(nc, num_threads=K.num_threads, schedule='static'):
                K.cdist[i] = dist(W.P, c, K.cand[i])
        else:
            for i in range(nc):
                K.cdist[i] = dist(W.P, c, K.cand[i])
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
        K.walks[i].changed = W.changed + W.nchanged + i * (W.P.n + 1)
        K.walks[i].nchanged = 0
        K.walks[i].evals = 0
    with parallel(num_threads=K.num_threads):
        tid = threadid()
        for i in prange(nf, schedule='dynamic', chunksize=1):
            visit(&K.walks[tid], K.frontier[i], K.fdist[i])
        # end: prange
    for i in range(K.num_threads):
        # gather the threads' changed lists after the sequential ones
        for t in range(K.walks[i].nchanged):
            W.changed[W.nchanged] = K.walks[i].changed[t]
            W.nchanged += 1
        W.evals += K.walks[i].evals
    # sub of the expanded nodes, children before parents (reverse breadth-first order)
    for i in range(ntop - 1, -1, -1):
        restore_sub(W, K.top[i])
    return W.evals


cdef inline void restore_sub(Walk* W, intp_t u) noexcept nogil:
    """sub[u] from u's own dmin, its aliases' and its children's sub."""
    cdef const Tree* T = W.T
    cdef intp_t t
    cdef float64_t best = W.dmin[u], s
    for t in range(T.alias_ptr[u], T.alias_ptr[u + 1]):
        s = W.dmin[T.aliases[t]]
        best = s if s > best else best
    for t in range(T.children_ptr[u], T.children_ptr[u + 1]):
        s = W.sub[T.children[t]]
        best = s if s > best else best
    W.sub[u] = best


cdef int64_t scan(Walk* W, intp_t c, float64_t r, float64_t* buf, const int64_t* bottom_up,
                  intp_t nnodes, int num_threads, int64_t* inball) noexcept nogil:
    """One step by a plain scan of the points; returns the distance evaluations and, in
    inball, how many points lie within r of c (what a tree search must reach at least).

    For steps that reach most of the tree anyway (r near the diameter): the rows are read in
    storage order, not the tree's. The distances come from the same routine, so the updates
    are the tree search's. sub is then rebuilt for every node, children first (bottom_up:
    the nodes by ascending level; a child's level is below its parent's).
    """
    cdef intp_t x, i
    W.c = c
    W.evals = 0
    W.nchanged = 0
    inball[0] = 0
    for x in prange(W.P.n, num_threads=num_threads, schedule='static'):
        if W.dmin[x] > 0.0:                 # chosen points (-1) and points at 0 cannot change
            buf[x] = dist(W.P, c, x)
    for x in range(W.P.n):
        if W.dmin[x] > 0.0:
            W.evals += 1
            inball[0] += buf[x] <= r
            offer(W, x, buf[x])
    for i in range(nnodes):
        restore_sub(W, bottom_up[i])
    return W.evals


# -- evaluating the root's children for the next few centres at once -----------------------------
#
# Where the root is wide (the residual metric's net: thousands of children, most of which every
# step must evaluate), the children's V rows are the bulk of the memory traffic. The centres
# of the next steps are, nearly always, the current top of the heap: their distances to all
# the root's children are evaluated together, child by child, so each child's row is read
# once for up to LOOKAHEAD centres. A pair's value does not depend on when it is evaluated
# (same routine, same argument order), so the order does not change; a centre whose row was
# dropped (a refill came first) is simply evaluated again.

DEF LOOKAHEAD = 64


cdef struct Ahead:
    const int64_t* net       # the root's children
    intp_t nn
    float64_t* rows          # LOOKAHEAD x nn
    intp_t* owner            # the centre of each row
    intp_t* slot             # per point: its row, or -1
    intp_t nrows
    intp_t* cand             # scratch: heap positions (2 LOOKAHEAD + 1)
    intp_t* live             # scratch: the children evaluated (nn)


cdef intp_t top_of_heap(const float64_t* d, const intp_t* h, intp_t size, intp_t* out,
                        intp_t k, intp_t* cand) noexcept nogil:
    """The k first points of the heap in pop order (best-first over heap positions)."""
    cdef intp_t nc = 1, got = 0, i, b, p
    if size == 0:
        return 0
    cand[0] = 0
    while got < k and nc > 0:
        b = 0
        for i in range(1, nc):
            if above(d, h[cand[i]], h[cand[b]]):
                b = i
        p = cand[b]
        out[got] = h[p]
        got += 1
        cand[b] = cand[nc - 1]
        nc -= 1
        for i in range(2 * p + 1, 2 * p + 3):
            if i < size:
                cand[nc] = i
                nc += 1
    return got


cdef int64_t fill_ahead(const Points* P, Ahead* A, intp_t c, const float64_t* d,
                        const intp_t* h, intp_t size, const float64_t* sub,
                        int num_threads) noexcept nogil:
    """Rows for c and the next centres the heap predicts; returns the evaluations.

    Children with sub <= 0 (nothing below them can change, now or later: sub only goes
    down) are left out; the search skips them before it would read their entry.
    """
    cdef intp_t k, j, jj, nb, nlive = 0
    cdef int64_t evals = 0
    for k in range(A.nrows):
        A.slot[A.owner[k]] = -1
    A.owner[0] = c
    nb = 1 + top_of_heap(d, h, size, A.owner + 1, LOOKAHEAD - 1, A.cand)
    for k in range(nb):
        A.slot[A.owner[k]] = k
    A.nrows = nb
    for j in range(A.nn):
        if sub[A.net[j]] > 0.0:
            A.live[nlive] = j
            nlive += 1
    # child by child: its row is read once for all nb centres
    for jj in prange(nlive, num_threads=num_threads, schedule='static'):
        j = A.live[jj]
        for k in range(nb):
            A.rows[k * A.nn + j] = dist(P, A.owner[k], A.net[j])
    for k in range(nb):
        for jj in range(nlive):
            evals += A.owner[k] != A.net[A.live[jj]]
    return evals


def maximin(bint residual, int kind, float64_t variance,
            const float64_t[:, ::1] x, v, s,
            intp_t root, const int64_t[::1] children_ptr, const int64_t[::1] children,
            const int64_t[::1] alias_ptr, const int64_t[::1] aliases,
            const float64_t[::1] radius, const float64_t[::1] pdist, float64_t slack,
            intp_t start, int64_t[::1] order, float64_t[::1] out_dist,
            int num_threads, intp_t parallel_min_evals, intp_t ahead_min_children,
            intp_t scan_min_evals, const int64_t[::1] bottom_up, int64_t[::1] step_evals):
    """Farthest-first order from start; fills order, out_dist and step_evals (the distance
    evaluations of each step); returns the counters.

    A step runs its search on num_threads threads when the step before it reached at
    least parallel_min_evals points (its evaluations, or for a scan the points within r of
    its centre: a cheap predictor of this step's work). Sequential
    steps evaluate the root's children ahead for the next centres (fill_ahead) when the root
    has at least ahead_min_children children. A step scans all points instead of searching
    the tree when the step before it reached at least scan_min_evals points (bottom_up: the
    tree's nodes by ascending level). The answer depends on none of these.
    """
    cdef Points P
    cdef Tree T
    cdef Walk W
    cdef Work K
    cdef Work* par = NULL
    cdef intp_t n = x.shape[0], t, c, size, i
    cdef int64_t evals = 0, last = 0, updates = 0, parallel_steps = 0, fill = 0
    cdef int64_t scan_steps = 0, reach = 0, inball = 0
    cdef Ahead A
    cdef bint ahead
    cdef intp_t nn
    cdef float64_t r
    fill_points(&P, residual, kind, variance, x, v, s)
    _tree(&T, root, children_ptr, children, alias_ptr, aliases, radius, pdist, slack)
    dmin_a = np.full(n, INFINITY)
    sub_a = np.full(n, INFINITY)       # nothing is known yet: no subtree may be skipped
    heap_a = np.arange(n, dtype=np.intp)
    pos_a = np.arange(n, dtype=np.intp)
    # sequential changes, then one list per thread (each at most n + 1 long)
    changed_a = np.empty((num_threads + 1) * (n + 1), dtype=np.intp)
    work_i = np.empty((3, n), dtype=np.intp)
    work_d = np.empty((3, n))
    walks_a = np.empty(max(num_threads, 1) * sizeof(Walk), dtype=np.uint8)
    nn = children_ptr[root + 1] - children_ptr[root]
    ahead = nn >= ahead_min_children and nn > 0      # only a wide root is worth it
    rows_a = np.empty(LOOKAHEAD * nn if ahead else 1)
    ahead_i = np.full(n + 3 * LOOKAHEAD + 1 + nn, -1, dtype=np.intp)  # slot owner cand live
    cdef float64_t[::1] dmin = dmin_a
    cdef float64_t[::1] sub = sub_a
    cdef intp_t[::1] heap = heap_a
    cdef intp_t[::1] pos = pos_a
    cdef intp_t[::1] changed = changed_a
    cdef intp_t[:, ::1] wi = work_i
    cdef float64_t[:, ::1] wd = work_d
    cdef unsigned char[::1] wk = walks_a
    cdef float64_t[::1] rows = rows_a
    cdef intp_t[::1] ai = ahead_i
    W.P = &P
    W.T = &T
    W.dmin = &dmin[0]
    W.sub = &sub[0]
    W.changed = &changed[0]
    W.netrow = NULL
    A.net = &children[children_ptr[root]] if nn else NULL
    A.nn = nn
    A.rows = &rows[0]
    A.slot, A.owner, A.cand = &ai[0], &ai[n], &ai[n + LOOKAHEAD]
    A.live = &ai[n + 3 * LOOKAHEAD + 1]
    A.nrows = 0
    K.frontier, K.cand, K.top = &wi[0, 0], &wi[1, 0], &wi[2, 0]
    K.fdist, K.cdist = &wd[0, 0], &wd[1, 0]
    K.walks = <Walk*>&wk[0]
    K.num_threads = num_threads
    K.nfront = 8 * num_threads
    if num_threads > 1:
        par = &K
    with nogil:
        # the first centre: every point is at distance inf, so the search reaches all
        order[0] = start
        out_dist[0] = INFINITY
        dmin[start] = -1.0
        evals = scan(&W, start, INFINITY, &wd[2, 0], &bottom_up[0], bottom_up.shape[0],
                     num_threads, &reach)
        last = step_evals[0] = evals
        # heap of the others (start is swapped to the end and left out)
        heap[start] = n - 1
        heap[n - 1] = start
        pos[n - 1] = start
        pos[start] = n - 1
        size = n - 1
        i = size // 2
        while i > 0:
            i -= 1
            sift_down(&dmin[0], &heap[0], &pos[0], size, i)
        for t in range(1, n):
            c = heap_pop(&dmin[0], &heap[0], &pos[0], &size)
            r = dmin[c]
            order[t] = c
            out_dist[t] = r
            dmin[c] = -1.0
            if r <= 0.0 or size == 0:
                continue          # nothing can get closer than 0, or nothing is left
            W.looked = 0
            if reach >= scan_min_evals:
                scan_steps += 1
                last = scan(&W, c, r, &wd[2, 0], &bottom_up[0], bottom_up.shape[0],
                            num_threads, &inball)
            elif par != NULL and reach >= parallel_min_evals:
                parallel_steps += 1
                last = search(&W, c, par)
            elif ahead:
                if A.slot[c] < 0:
                    fill = fill_ahead(&P, &A, c, &dmin[0], &heap[0], size, &sub[0],
                                      num_threads)
                W.netrow = A.rows + A.slot[c] * nn
                last = search(&W, c, NULL)
                W.netrow = NULL
                A.slot[c] = -1
            else:
                last = search(&W, c, NULL)
            # the next step's reach is predicted by this one's: the pairs its search needed
            # (evaluated ahead or not, the batch's other rows left out), or for a scan, which
            # evaluates every point, the points within r of its centre (a search reaches
            # at least those)
            reach = inball if reach >= scan_min_evals else last + W.looked
            last += fill
            fill = 0
            evals += last
            step_evals[t] = last
            updates += W.nchanged
            reheap(&dmin[0], &heap[0], &pos[0], size, W.changed, W.nchanged)
    return {"distance_evaluations": int(evals), "updates": int(updates),
            "parallel_steps": int(parallel_steps), "scan_steps": int(scan_steps)}


cdef void _tree(Tree* T, intp_t root, const int64_t[::1] children_ptr,
                const int64_t[::1] children, const int64_t[::1] alias_ptr,
                const int64_t[::1] aliases, const float64_t[::1] radius,
                const float64_t[::1] pdist, float64_t slack):
    T.root = root
    T.children_ptr = &children_ptr[0]
    T.children = &children[0] if children.shape[0] else NULL
    T.alias_ptr = &alias_ptr[0]
    T.aliases = &aliases[0] if aliases.shape[0] else NULL
    T.radius = &radius[0]
    T.pdist = &pdist[0]
    T.slack = slack
