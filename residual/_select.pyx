# Test hook for the inline top-k selection declared in _select.pxd.
from libc.stdlib cimport malloc, free

import numpy as np

from residual._typedefs cimport float64_t, intp_t, int64_t
from residual._select cimport Candidate, TopK, topk_init, topk_push, topk_finish, sort_candidates


def select_rows(const float64_t[:, ::1] keys, intp_t k, intp_t cap=0):
    """Per row, the k smallest (key, column) pairs in ascending order, padded with (inf, -1).

    NaN keys are never selected. ``cap`` (>= k + 1) sets the buffer capacity, to exercise the
    compaction path; 0 means 2 * k + 1.
    """
    cdef intp_t n = keys.shape[0], m = keys.shape[1], i, j, c
    if k < 1:
        raise ValueError("k must be >= 1")
    if cap == 0:
        cap = 2 * k + 1
    if cap < k + 1:
        raise ValueError("cap must be >= k + 1")
    out_key = np.full((n, k), np.inf)
    out_idx = np.full((n, k), -1, dtype=np.int64)
    cdef float64_t[:, ::1] ok = out_key
    cdef int64_t[:, ::1] oi = out_idx
    cdef Candidate* buf = <Candidate*>malloc(cap * sizeof(Candidate))
    cdef TopK t
    if buf == NULL:
        raise MemoryError()
    try:
        with nogil:
            for i in range(n):
                topk_init(&t, buf, cap, k)
                for j in range(m):
                    topk_push(&t, keys[i, j], j)
                c = topk_finish(&t)
                sort_candidates(buf, c)
                for j in range(c):
                    ok[i, j] = buf[j].first
                    oi[i, j] = buf[j].second
    finally:
        free(buf)
    return out_key, out_idx
