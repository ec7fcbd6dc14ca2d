"""Thread counts, OpenMP's wait policy, the one-level-of-parallelism rule, and work in blocks.

Compiled loops run OpenMP threads that each call single-threaded BLAS; the BLAS thread pools are
held to one thread for the duration (threadpoolctl), so the two never oversubscribe the cores.

This module is imported before any compiled module (residual/__init__.py), because libgomp
reads its wait policy once, when it is loaded. By default a waiting OpenMP thread (at a
barrier, or between parallel regions) spins for 300000 pauses (14 ms on the 2-core test
machine) before it sleeps; next to another busy process that spinning takes the core our
working thread needs, and a build runs 10-100x slower. Unless the user chose a
policy (``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``), libgomp is loaded with a short spin
instead. (If another library loaded libgomp first, its settings stand.)
"""

import contextlib
import os
import time

from residual._validate import check_int

#: libgomp's spin count before a waiting thread sleeps, when the user set no wait policy
#: (0.1 ms at 47 ns per pause on the 2-core test machine: long enough that a short pause
#: between two parallel regions does not put the threads to sleep).
SPIN_COUNT = 2000

_WAIT_POLICY_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def _load_openmp():
    """Import the compiled OpenMP probe, loading libgomp with a short spin unless the user
    chose a wait policy; the variable is removed again, so child processes do not inherit it.
    """
    if any(name in os.environ for name in _WAIT_POLICY_VARIABLES):
        from residual import _openmp
        return _openmp
    os.environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
    try:
        from residual import _openmp
    finally:
        del os.environ["GOMP_SPINCOUNT"]
    return _openmp


_openmp = _load_openmp()
_controller = None


def usable_cores():
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_num_threads():
    """Threads for ``num_threads=None``.

    OpenMP's own default when the user set one: ``OMP_NUM_THREADS``, or a threadpoolctl limit
    on OpenMP (``threadpool_limits(1)``), which lowers it. Otherwise every usable core (OpenMP
    counts the cores once, when it loads). 1 without OpenMP.
    """
    omp = _openmp.omp_max_threads()
    if os.environ.get("OMP_NUM_THREADS"):
        return omp
    return max(1, min(omp, usable_cores()))


def resolve_num_threads(num_threads):
    """Map the ``num_threads`` argument to a thread count (joblib convention).

    None means :func:`default_num_threads`; a negative count counts back from the usable
    cores (-1 = all, -2 = all but one); 0 is an error. Without OpenMP the answer is always 1.
    """
    if num_threads is None:
        return default_num_threads()
    n = check_int(num_threads, "num_threads", minimum=-(1 << 16), maximum=1 << 16)
    if n == 0:
        raise ValueError("num_threads must be a non-zero integer (None = the default)")
    if n < 0:
        n = max(1, usable_cores() + 1 + n)
    return n if _openmp.openmp_enabled() else 1


@contextlib.contextmanager
def single_threaded_blas():
    """Hold every loaded BLAS to one thread while OpenMP threads call it."""
    global _controller
    from threadpoolctl import ThreadpoolController

    if _controller is None:  # scanning the loaded libraries costs milliseconds: do it once
        _controller = ThreadpoolController()
    with _controller.limit(limits=1, user_api="blas"):
        yield


#: Seconds of work per block in :func:`in_blocks`: Ctrl-C is handled between blocks.
BLOCK_SECONDS = 0.1


def in_blocks(n, step, work):
    """Call ``work(start, stop)`` on consecutive blocks that cover ``range(n)``.

    For compiled calls that do not check for signals themselves: Python raises
    KeyboardInterrupt between two of them. The
    first block has ``step`` rows, each next one about :data:`BLOCK_SECONDS` of work at the
    rate of the block before (at most 4x as many rows). Every block but the last is a
    multiple of ``step`` rows long (e.g. one work item per thread), so blocks start at
    multiples of ``step``.
    """
    start, size = 0, step
    while start < n:
        stop = min(n, start + size)
        t = time.perf_counter()
        work(start, stop)
        rate = (stop - start) / max(time.perf_counter() - t, 1e-9)
        size = max(min(int(rate * BLOCK_SECONDS), 4 * size) // step, 1) * step
        start = stop
