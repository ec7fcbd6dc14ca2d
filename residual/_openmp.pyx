# Whether this build has OpenMP, and how many threads a `num_threads=None` call may use.
# omp.h is only included when the compiler supports OpenMP, so the module builds without it.

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define RESIDUAL_OPENMP 1
    static int residual_omp_max_threads(void) { return omp_get_max_threads(); }
    #else
    #define RESIDUAL_OPENMP 0
    static int residual_omp_max_threads(void) { return 1; }
    #endif
    """
    bint RESIDUAL_OPENMP
    int residual_omp_max_threads() noexcept nogil


def openmp_enabled():
    """True when the compiled modules were built with OpenMP."""
    return bool(RESIDUAL_OPENMP)


def omp_max_threads():
    """Threads OpenMP would use by default (1 without OpenMP)."""
    return residual_omp_max_threads()
