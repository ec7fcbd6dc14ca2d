# Top-k selection on (key, index) pairs.
#
# A candidate is a std::pair<double, intp>: its operator< is lexicographic, so "smaller key, then
# smaller index" is the order everywhere with no comparator to get wrong. Keys are never NaN:
# callers map NaN to +inf, and push() rejects anything not strictly below the threshold (a NaN
# compares false and never enters).
#
# Protocol (one TopK per query row): push candidates in ASCENDING index order. Then a candidate
# whose key equals the current k-th key always loses the tie (its index is larger), so the strict
# test `key < thr` is exact. When the buffer is full, std::nth_element keeps the k smallest and
# updates thr; topk_finish() selects once more, and the caller sorts only the final k (after
# mapping keys to distances, so the order is by (distance, index) exactly).

from libcpp.algorithm cimport nth_element, sort
from libcpp.utility cimport pair
from libc.math cimport INFINITY

from residual._typedefs cimport float64_t, intp_t

ctypedef pair[float64_t, intp_t] Candidate

cdef struct TopK:
    Candidate* buf     # capacity `cap` >= k + 1
    intp_t count
    intp_t cap
    intp_t k
    float64_t thr      # the k-th smallest key once count reached k; +inf before


cdef inline void topk_init(TopK* t, Candidate* buf, intp_t cap, intp_t k) noexcept nogil:
    t.buf = buf
    t.cap = cap
    t.k = k
    t.count = 0
    t.thr = INFINITY


cdef inline void topk_compact(TopK* t) noexcept nogil:
    """Keep the k smallest candidates (unordered) and set thr to the k-th key."""
    if t.count < t.k:
        return
    nth_element(t.buf, t.buf + (t.k - 1), t.buf + t.count)
    t.count = t.k
    t.thr = t.buf[t.k - 1].first


cdef inline void topk_push(TopK* t, float64_t key, intp_t idx) noexcept nogil:
    """Offer one candidate; indices must arrive in ascending order (see module comment)."""
    if key < t.thr:
        t.buf[t.count].first = key
        t.buf[t.count].second = idx
        t.count += 1
        if t.count == t.cap:
            topk_compact(t)


cdef inline intp_t topk_finish(TopK* t) noexcept nogil:
    """Reduce to the min(k, count) smallest candidates, unordered; returns that count."""
    if t.count > t.k:
        topk_compact(t)
    return t.count


cdef inline void sort_candidates(Candidate* first, intp_t count) noexcept nogil:
    """Sort candidates by (key, index): the one full sort, over the final k only."""
    sort(first, first + count)
