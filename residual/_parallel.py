"""Thread counts and the one-level-of-parallelism rule.

Compiled loops run OpenMP threads that each call single-threaded BLAS; the BLAS thread pools are
held to one thread for the duration (threadpoolctl), so the two never oversubscribe the cores.
"""

import contextlib
import os

from residual._openmp import openmp_enabled
from residual._validate import check_int

_controller = None


def usable_cores():
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve_num_threads(num_threads):
    """Map the ``num_threads`` argument to a thread count (joblib convention).

    None means all usable cores; a negative count counts back from them (-1 = all, -2 = all
    but one); 0 is an error. Without OpenMP the answer is always 1.
    """
    cores = usable_cores()
    if num_threads is None:
        n = cores
    else:
        n = check_int(num_threads, "num_threads", minimum=-(1 << 16), maximum=1 << 16)
        if n == 0:
            raise ValueError("num_threads must be a non-zero integer (None = all cores)")
        if n < 0:
            n = max(1, cores + 1 + n)
    return n if openmp_enabled() else 1


@contextlib.contextmanager
def single_threaded_blas():
    """Hold every loaded BLAS to one thread while OpenMP threads call it."""
    global _controller
    from threadpoolctl import ThreadpoolController

    if _controller is None:  # scanning the loaded libraries costs milliseconds: do it once
        _controller = ThreadpoolController()
    with _controller.limit(limits=1, user_api="blas"):
        yield
