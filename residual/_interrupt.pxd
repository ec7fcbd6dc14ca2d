# Ctrl-C inside long compiled loops. Python runs signal handlers only between two bytecodes, so
# a loop that runs without the GIL for seconds would ignore Ctrl-C until it ends. Instead the
# loops call interrupted() at safe points (between work items, after a tile): the calling
# thread (OpenMP thread 0, the one that entered the compiled code) takes the GIL at most every
# INTERRUPT_SECONDS and runs the handlers. If one raised, its exception is kept and every thread
# leaves its loop at its next call; reraise() raises it again once the loops are over (the
# outputs are then incomplete, and the caller must not use them).

cdef extern from *:
    """
    #include <time.h>
    #ifdef _OPENMP
    #include <omp.h>
    #define RESIDUAL_THREAD_NUM() omp_get_thread_num()
    #else
    #define RESIDUAL_THREAD_NUM() 0
    #endif
    #define RESIDUAL_INTERRUPT_SECONDS 0.05

    typedef struct {
        int stop;                       /* a signal handler raised: every thread leaves */
        double next_check;              /* when thread 0 next runs the signal handlers */
    #if PY_VERSION_HEX >= 0x030C0000
        PyObject *exc;                  /* the handler's exception, until reraise() */
    #else
        PyObject *type, *value, *traceback;
    #endif
    } residual_interrupt;

    static double residual_interrupt_now(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return ts.tv_sec + 1e-9 * ts.tv_nsec;
    }

    static void residual_interrupt_init(residual_interrupt *it) {
        memset(it, 0, sizeof *it);
        it->next_check = residual_interrupt_now() + RESIDUAL_INTERRUPT_SECONDS;
    }

    static int residual_interrupted(residual_interrupt *it) {
        double t;
        PyGILState_STATE gil;
        if (__atomic_load_n(&it->stop, __ATOMIC_RELAXED))
            return 1;
        if (RESIDUAL_THREAD_NUM() != 0)
            return 0;
        t = residual_interrupt_now();
        if (t < it->next_check)
            return 0;
        it->next_check = t + RESIDUAL_INTERRUPT_SECONDS;
        gil = PyGILState_Ensure();
        if (PyErr_CheckSignals() != 0) {
    #if PY_VERSION_HEX >= 0x030C0000
            it->exc = PyErr_GetRaisedException();
    #else
            PyErr_Fetch(&it->type, &it->value, &it->traceback);
    #endif
            __atomic_store_n(&it->stop, 1, __ATOMIC_RELAXED);
        }
        PyGILState_Release(gil);
        return it->stop;
    }

    /* With the GIL: -1 with the handler's exception set again if the loops were stopped. */
    static int residual_reraise(residual_interrupt *it) {
        if (!it->stop)
            return 0;
    #if PY_VERSION_HEX >= 0x030C0000
        PyErr_SetRaisedException(it->exc);
    #else
        PyErr_Restore(it->type, it->value, it->traceback);
    #endif
        return -1;
    }
    """
    ctypedef struct Interrupt "residual_interrupt":
        pass
    # the monotonic clock in seconds (also the build's stage timers and maximin's time slices)
    double monotonic_seconds "residual_interrupt_now"() noexcept nogil
    void interrupt_init "residual_interrupt_init"(Interrupt* it) noexcept nogil
    bint interrupted "residual_interrupted"(Interrupt* it) noexcept nogil
    int reraise "residual_reraise"(Interrupt* it) except -1
