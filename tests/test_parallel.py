"""Threads: the default count, OpenMP's wait policy, work in blocks, and Ctrl-C during long
compiled work (each in a fresh interpreter where the environment matters)."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import residual
from residual import _parallel
from residual._openmp import openmp_enabled
from conftest import harness_like

needs_openmp = pytest.mark.skipif(not openmp_enabled(), reason="built without OpenMP")

_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_DISPLAY_ENV",
                     "PYTHONPATH")


def _environment(**extra):
    """This process's environment without the thread settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in _THREAD_VARIABLES}
    env.update(extra)
    return env


def _python(code, tmp_path, **env):
    """Run ``code`` in a fresh interpreter (outside the source tree, whose ``residual`` folder
    has no compiled modules); its stdout and stderr."""
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_environment(**env),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, proc.stderr


@needs_openmp
def test_omp_num_threads_sets_the_default(tmp_path):
    code = "from residual._parallel import resolve_num_threads as r; print(r(None), r(-1))"
    cores = _parallel.usable_cores()
    assert _python(code, tmp_path, OMP_NUM_THREADS="1")[0].split() == ["1", str(cores)]
    assert _python(code, tmp_path, OMP_NUM_THREADS="3")[0].split() == ["3", str(cores)]
    assert _python(code, tmp_path)[0].split() == [str(cores)] * 2


@needs_openmp
def test_threadpoolctl_limit_sets_the_default():
    before = _parallel.resolve_num_threads(None)
    with threadpool_limits(limits=1, user_api="openmp"):
        assert _parallel.resolve_num_threads(None) == 1
        assert _parallel.resolve_num_threads(2) == 2            # an explicit count wins
    assert _parallel.resolve_num_threads(None) == before


# whether libgomp was loaded before residual (by NumPy's BLAS, say: then its policy is set),
# and GOMP_SPINCOUNT after residual's import
_SHOW_POLICY = ("import os, numpy, scipy.linalg\n"
                "print('libgomp' in open('/proc/self/maps').read())\n"
                "import residual\n"
                "print(os.environ.get('GOMP_SPINCOUNT'))\n")


@needs_openmp
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_short_spin_unless_the_user_chose_a_policy(tmp_path):
    # libgomp prints the spin count it read at load; the variable is gone afterwards
    out, err = _python(_SHOW_POLICY, tmp_path, OMP_DISPLAY_ENV="verbose")
    preloaded, out = out.split("\n", 1)
    if preloaded == "True" or "GOMP_SPINCOUNT" not in err:
        pytest.skip("the OpenMP runtime is not libgomp, or NumPy loaded it first")
    assert f"GOMP_SPINCOUNT = '{_parallel.SPIN_COUNT}'" in err and out.strip() == "None"
    out, err = _python(_SHOW_POLICY, tmp_path, OMP_DISPLAY_ENV="verbose",
                       OMP_WAIT_POLICY="active")
    assert "OMP_WAIT_POLICY = 'ACTIVE'" in err
    assert f"GOMP_SPINCOUNT = '{_parallel.SPIN_COUNT}'" not in err
    out, err = _python(_SHOW_POLICY, tmp_path, OMP_DISPLAY_ENV="verbose", GOMP_SPINCOUNT="7")
    assert "GOMP_SPINCOUNT = '7'" in err and out.split() == ["False", "7"]


def test_blocks_cover_the_range_in_multiples_of_the_step(monkeypatch):
    for seconds in (0.0, 1e-5, 10.0):
        monkeypatch.setattr(_parallel, "BLOCK_SECONDS", seconds)
        seen = []
        _parallel.in_blocks(1000, 24, lambda a, b: seen.append((a, b)))
        assert seen[0] == (0, 24) and seen[-1][1] == 1000
        assert all(b == c for (_, b), (c, _) in zip(seen, seen[1:]))
        assert all(a % 24 == 0 and (b - a) % 24 == 0 for a, b in seen[:-1])
        assert all(b2 - a2 <= 4 * (b1 - a1) for (a1, b1), (a2, b2) in zip(seen, seen[1:]))
    assert len(seen) == 4                  # 24, 96, 384, then the rest at 4x at most
    monkeypatch.setattr(_parallel, "BLOCK_SECONDS", 0.0)
    seen = []
    _parallel.in_blocks(100, 24, lambda a, b: seen.append((a, b)))
    assert seen == [(0, 24), (24, 48), (48, 72), (72, 96), (96, 100)]


def test_new_points_in_blocks_equal_one_block(monkeypatch):
    X = harness_like(1500, seed=3)
    model = residual.ResidualCorrelation.from_kernel(X, residual.RBF(0.8), n_inducing=60)
    tree = residual.CoverTree(model)
    Y = harness_like(1300, seed=4)
    calls = [lambda: tree.query(Y, k=4), lambda: residual.brute_force_knn(model, 4, Y)]
    with monkeypatch.context() as one_block:
        one_block.setattr(residual.model, "in_blocks", lambda n, step, work: work(0, n))
        whole = [call() for call in calls]
    monkeypatch.setattr(_parallel, "BLOCK_SECONDS", 0.0)     # every block one step long
    for call, (d, i) in zip(calls, whole):
        d2, i2 = call()
        np.testing.assert_array_equal(i2, i)
        np.testing.assert_array_equal(d2, d)


# Long work in a fresh interpreter, sent SIGINT half a second after it starts: it must stop
# within seconds with KeyboardInterrupt. Uninterrupted, each takes 20 s or more on 2 cores.
_LONG_WORK = {
    # a chunk of 4096 queries is seconds of work: Ctrl-C must reach inside it
    "brute force": "X = rng.standard_normal((200_000, 3))\n"
                   "m = residual.ResidualCorrelation.from_kernel(X, residual.RBF(), 64)\n"
                   "go = lambda: residual.brute_force_knn(m, 1, chunk_size=4096)\n",
    "tree query": "tree = residual.CoverTree(rng.standard_normal((8000, 32)))\n"
                  "Y = rng.standard_normal((200_000, 32))\n"
                  "go = lambda: tree.query(Y, k=5)\n",
    "build": "X = rng.standard_normal((90_000, 32))\n"
             "go = lambda: residual.CoverTree(X)\n",
    "maximin": "X = rng.uniform(size=(3_000_000, 3))\n"
               "go = lambda: residual.maximin_order(X)\n",
}


@pytest.mark.parametrize("work", sorted(_LONG_WORK))
def test_ctrl_c_stops_long_work(work, tmp_path):
    code = ("import numpy as np, residual\nrng = np.random.default_rng(0)\n" + _LONG_WORK[work]
            + "print('start', flush=True)\ngo()\nprint('finished', flush=True)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, env=_environment(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "start\n", proc.stderr.read()
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{work} still running 15 s after SIGINT")
    finally:
        proc.kill()
        proc.wait()
    assert "KeyboardInterrupt" in err and "finished" not in out, err


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs SIGALRM")
def test_a_signal_handlers_own_exception_stops_a_chunk():
    # a handler that raises something else than KeyboardInterrupt: that exception comes out,
    # from inside one chunk of 4096 queries (uninterrupted: 16 s on 2 busy cores)
    X = harness_like(50_000, seed=5)
    model = residual.ResidualCorrelation.from_kernel(X, residual.RBF(), n_inducing=64)

    def alarm(signum, frame):
        raise TimeoutError("alarm")

    previous = signal.signal(signal.SIGALRM, alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        t = time.monotonic()
        with pytest.raises(TimeoutError, match="alarm"):
            residual.brute_force_knn(model, 1, chunk_size=4096)
        assert time.monotonic() - t < 5
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
