# One thread's workspace in a parallel region: the one scaffold of the compiled code's parallel
# loops (build, brute force, factor, and the search's Scratch). Inside `with parallel()`, each
# thread takes one block with workspace_new(), carves its buffers out of it with carve(), skips its
# work items if it got NULL, and frees the block at the end. A thread that gets NULL sets the shared
# flag; the caller, back with the GIL, raises MemoryError if it is set.

from libc.stdlib cimport malloc

cdef enum:
    WORKSPACE_ALIGN = 64     # spans are whole multiples: each buffer keeps malloc's alignment


cdef inline size_t span(size_t nbytes) noexcept nogil:
    """The room one buffer of nbytes takes in a workspace (size the block as the sum)."""
    return (nbytes + WORKSPACE_ALIGN - 1) & ~(<size_t>WORKSPACE_ALIGN - 1)


cdef inline char* workspace_new(size_t nbytes, int* failed) noexcept nogil:
    """This thread's block of nbytes (a sum of spans), or NULL with failed[0] set (failed
    points to the caller's flag: written through a pointer, it is shared, not private)."""
    cdef char* block = <char*>malloc(nbytes if nbytes else 1)     # malloc(0) may be NULL
    if block == NULL:
        failed[0] = 1
    return block


cdef inline void* carve(char** at, size_t nbytes) noexcept nogil:
    """The next buffer of nbytes from a block, advancing at[0] past its span (NULL from a
    NULL block)."""
    cdef void* p = at[0]
    if p != NULL:
        at[0] += span(nbytes)
    return p
