# A min-heap of search frontier entries (lower bound, distance, node) in three parallel arrays,
# keyed by the lower bound: the best-first order of the kNN search (_search.pyx) and of the
# build's descent to a new point's cover (_build.pyx). Capacity is the caller's (one entry per
# node at most).

from residual._typedefs cimport float64_t, intp_t


cdef inline void frontier_push(float64_t* fl, float64_t* fd, intp_t* fn, intp_t* size,
                               float64_t lb, float64_t d, intp_t node) noexcept nogil:
    """Push (lower bound, distance, node) onto the min-heap keyed by the bound."""
    cdef intp_t pos = size[0], parent
    size[0] += 1
    while pos > 0:
        parent = (pos - 1) // 2
        if fl[parent] <= lb:
            break
        fl[pos] = fl[parent]
        fd[pos] = fd[parent]
        fn[pos] = fn[parent]
        pos = parent
    fl[pos] = lb
    fd[pos] = d
    fn[pos] = node


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
        fl[pos] = fl[child]
        fd[pos] = fd[child]
        fn[pos] = fn[child]
        pos = child
    fl[pos] = lb
    fd[pos] = d
    fn[pos] = node


cdef extern from *:
    """
    /* A hint, no effect on results: start loading what a frontier entry will read when it is
       popped (its children's records), so the pop does not wait on memory. */
    #define RESIDUAL_PREFETCH(p) __builtin_prefetch((const void*)(p), 0, 1)
    """
    void prefetch "RESIDUAL_PREFETCH"(const void* p) noexcept nogil
