# The heaps of the tree searches, on caller-owned arrays:
# - a min-heap of search frontier entries (lower bound, distance, node) in three parallel
#   arrays, keyed by the lower bound: the best-first order of the kNN search (_search.pyx) and
#   of the build's descent to a new point's cover (_build.pyx). Capacity is the caller's (one
#   entry per node at most);
# - the bounded top-k of the kNN search (below).

from residual._typedefs cimport float64_t, intp_t
from residual._tiles cimport closer


cdef inline void _frontier_move(float64_t* fl, float64_t* fd, intp_t* fn, intp_t dst,
                                intp_t src) noexcept nogil:
    """Entry src of the frontier to position dst (one step of a sift)."""
    fl[dst] = fl[src]
    fd[dst] = fd[src]
    fn[dst] = fn[src]


cdef inline void _frontier_put(float64_t* fl, float64_t* fd, intp_t* fn, intp_t pos,
                               float64_t lb, float64_t d, intp_t node) noexcept nogil:
    """(lb, d, node) at position pos of the frontier (the end of a sift)."""
    fl[pos] = lb
    fd[pos] = d
    fn[pos] = node


cdef inline void frontier_push(float64_t* fl, float64_t* fd, intp_t* fn, intp_t* size,
                               float64_t lb, float64_t d, intp_t node) noexcept nogil:
    """Push (lower bound, distance, node) onto the min-heap keyed by the bound."""
    cdef intp_t pos = size[0], parent
    size[0] += 1
    while pos > 0:
        parent = (pos - 1) // 2
        if fl[parent] <= lb:
            break
        _frontier_move(fl, fd, fn, pos, parent)
        pos = parent
    _frontier_put(fl, fd, fn, pos, lb, d, node)


cdef inline void frontier_pop(float64_t* fl, float64_t* fd, intp_t* fn,
                              intp_t* size) noexcept nogil:
    """Remove the smallest bound (read it from index 0 first)."""
    cdef intp_t pos = 0, child, n
    cdef float64_t lb, d
    cdef intp_t node
    size[0] -= 1
    n = size[0]
    if n == 0:
        return
    lb = fl[n]
    d = fd[n]
    node = fn[n]
    while True:
        child = 2 * pos + 1
        if child >= n:
            break
        if child + 1 < n and fl[child + 1] < fl[child]:
            child += 1
        if lb <= fl[child]:
            break
        _frontier_move(fl, fd, fn, pos, child)
        pos = child
    _frontier_put(fl, fd, fn, pos, lb, d, node)


# The bounded top-k of a search: a max-heap of (squared distance, index) pairs in two parallel
# arrays, ordered by closer(), its root the worst of the k kept.

cdef inline void best_offer(float64_t* hd, intp_t* hi, intp_t* count, intp_t k,
                            float64_t d, intp_t i) noexcept nogil:
    """Offer (d, i) to the bounded max-heap of the k best (root = the worst kept)."""
    cdef intp_t pos, parent
    if count[0] < k:                       # not full: sift up
        pos = count[0]
        count[0] += 1
        while pos > 0:
            parent = (pos - 1) // 2
            if not closer(hd[parent], hi[parent], d, i):
                break
            hd[pos] = hd[parent]
            hi[pos] = hi[parent]
            pos = parent
        hd[pos] = d
        hi[pos] = i
        return
    if closer(d, i, hd[0], hi[0]):         # else no better than the worst kept: rejected
        best_sift_down(hd, hi, k, d, i)


cdef inline void best_sift_down(float64_t* hd, intp_t* hi, intp_t n, float64_t d,
                            intp_t i) noexcept nogil:
    """Put (d, i) at the root of a max-heap of n entries and sift it down."""
    cdef intp_t pos = 0, child
    while True:
        child = 2 * pos + 1
        if child >= n:
            break
        if child + 1 < n and closer(hd[child], hi[child], hd[child + 1], hi[child + 1]):
            child += 1
        if not closer(d, i, hd[child], hi[child]):
            break
        hd[pos] = hd[child]
        hi[pos] = hi[child]
        pos = child
    hd[pos] = d
    hi[pos] = i


cdef inline void best_pop(float64_t* hd, intp_t* hi, intp_t n) noexcept nogil:
    """Remove the root of a max-heap of n entries (n - 1 remain)."""
    if n > 1:
        best_sift_down(hd, hi, n - 1, hd[n - 1], hi[n - 1])


cdef extern from *:
    """
    /* A hint, no effect on results: start loading what a frontier entry will read when it is
       popped (its children's records), so the pop does not wait on memory. */
    #define RESIDUAL_PREFETCH(p) __builtin_prefetch((const void*)(p), 0, 1)
    """
    void prefetch "RESIDUAL_PREFETCH"(const void* p) noexcept nogil
