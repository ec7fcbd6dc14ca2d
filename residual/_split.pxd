# The k-d split shared by the two k-d trees (maximin's ball tree in _maximin.pyx, the kNN tree
# in _kdtree.pyx): a quickselect that moves each point's coordinate row along with its index,
# so a node's points end up contiguous in memory.

from residual._typedefs cimport float64_t, intp_t


cdef inline void swap_rows(intp_t* idx, float64_t* xs, intp_t dim, intp_t i,
                           intp_t j) noexcept nogil:
    """Swap entries i and j of idx and the coordinate rows of xs with them."""
    cdef intp_t t = idx[i], a
    cdef float64_t v
    idx[i] = idx[j]
    idx[j] = t
    for a in range(dim):
        v = xs[i * dim + a]
        xs[i * dim + a] = xs[j * dim + a]
        xs[j * dim + a] = v


cdef inline void split_at(intp_t* idx, float64_t* xs, intp_t dim, intp_t lo, intp_t hi,
                          intp_t nth, intp_t axis) noexcept nogil:
    """Partially sort idx[lo:hi] (and xs, its rows' coordinates) by coordinate `axis` so
    that entry nth is in its sorted place, smaller-or-equal before it and greater-or-equal
    after (Hoare quickselect)."""
    cdef intp_t i, j, mid
    cdef float64_t p
    cdef const float64_t* c = xs + axis
    while hi - lo > 1:
        mid = lo + (hi - lo) // 2                   # median of three as the pivot
        if c[mid * dim] < c[lo * dim]:
            swap_rows(idx, xs, dim, mid, lo)
        if c[(hi - 1) * dim] < c[lo * dim]:
            swap_rows(idx, xs, dim, hi - 1, lo)
        if c[(hi - 1) * dim] < c[mid * dim]:
            swap_rows(idx, xs, dim, hi - 1, mid)
        p = c[mid * dim]
        i = lo
        j = hi - 1
        while i <= j:
            while c[i * dim] < p:
                i += 1
            while c[j * dim] > p:
                j -= 1
            if i <= j:
                swap_rows(idx, xs, dim, i, j)
                i += 1
                j -= 1
        # now [lo, j] <= p <= [i, hi), and (j, i) == p
        if nth <= j:
            hi = j + 1
        elif nth >= i:
            lo = i
        else:
            return
