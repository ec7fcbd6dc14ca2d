"""``method="auto"`` for residual conditioning sets: the brute force or the tree, whichever a
pilot measured at run time says is faster.

Why a pilot and not a rule on n alone: the tree's work per query depends on the data. On the
standard harness (D = 3, RBF, m = 512, k = 30) a query costs about 6,500 evaluations whatever
n, each some 4x the cost of a pair inside the brute force's GEMM tiles, so the tree wins from
about 100k rows; at D = 8 nearly every pair must be scored and the tree never wins; for a
smooth 1-D kernel a query costs a few hundred evaluations and the tree wins early.

The rule, for n > ``BRUTE_UP_TO`` (up to it the brute force is taken without a pilot: some 6 s
on 2 cores at most, and the faster path for all four variants of docs/benchmarks.md's table;
a metric of very low dimension can make the tree faster sooner, which ``method="tree"``
reaches):

1. Time the brute force on the last rows (the longest predecessor rows; at least
   ``PILOT_PAIRS`` pairs and a whole chunk of rows for every thread, after an untimed block
   that pays the one-time costs) and project to all rows: pairs j < i cost the same wherever
   they are.
2. Build the tree with a budget of ``BUILD_BUDGET`` times that projection; a build that
   overruns is stopped (through its progress callback) and the brute force runs. When the
   brute force is the faster path, auto costs it at most about ``1 + BUILD_BUDGET`` times.
3. Prepare the tree's search layout (part of the build's time), then time the tree's query
   on ``PILOT_BLOCKS`` blocks of ``PILOT_BLOCK_ROWS`` points, each a run of the tree's
   depth-first order (as the full query visits them) and spread over it, and project the
   median block to all rows; take the tree if that beats the brute force's projection.

Both paths return the same neighbours (the oracle's); the choice and the estimates it was made
on are returned for ``stats["auto"]``. Machine load changes the timings, never the answer.
"""

import time

import numpy as np

from residual.bruteforce import DEFAULT_CHUNK_SIZE, in_sample_rows
from residual.tree import CoverTree

#: Up to this many rows, auto takes the brute force without a pilot (the standard harness's
#: size: there the brute force is 1.5-1.7x faster than the tree).
BRUTE_UP_TO = 32768
#: The tree's build may take at most this share of the brute force's projected time.
BUILD_BUDGET = 0.1
#: Pairs of the brute-force pilot, at least (the last rows).
PILOT_PAIRS = 4_000_000
#: The tree-query pilot: this many blocks of this many rows, evenly spread (whole groups of
#: the residual search's 64 queries, so that a block costs per row what the full query does).
PILOT_BLOCKS, PILOT_BLOCK_ROWS = 4, 256


class _OverBudget(Exception):
    """Raised from the build's progress callback to stop a build that overran its budget."""


def choose(model, k, num_threads, progress=None):
    """The faster exact path for the predecessor kNN of ``model`` (its rows in their order).

    ``progress(done, total)`` is the tree build's (see :class:`CoverTree`).

    Returns ``(tree, report)``: the built CoverTree when the tree is chosen, else None, and a
    dict with ``method`` ("tree" or "brute"), ``reason`` and the measured estimates in
    seconds (``brute_s``, ``build_s``, ``tree_query_s``; None where not measured).
    """
    n = model.n_samples
    report = {"method": "brute", "reason": "", "brute_s": None, "build_s": None,
              "tree_query_s": None}
    if n <= BRUTE_UP_TO:
        report["reason"] = f"n <= {BRUTE_UP_TO}: the brute force, no pilot"
        return None, report

    # whole chunks for every thread, so that the pilot runs as parallel as the full query;
    # the block before it runs first, untimed, to pay the one-time costs (the float32 screen's
    # copy of V, its BLAS probe), which the projection would multiply by n^2 / pilot pairs
    unit = DEFAULT_CHUNK_SIZE * num_threads
    rows = unit * max(1, -(-PILOT_PAIRS // (n * unit)))
    start = max(n - rows, 0)
    in_sample_rows(model.metric, k, True, max(start - rows, 0), start, num_threads)
    t = time.perf_counter()
    in_sample_rows(model.metric, k, True, start, n, num_threads)
    pilot_pairs = (n * (n - 1) - start * (start - 1)) // 2
    brute_s = (time.perf_counter() - t) * (n * (n - 1) // 2) / pilot_pairs
    report["brute_s"] = brute_s

    budget = BUILD_BUDGET * brute_s
    t = time.perf_counter()

    def stop_if_over(done, total):
        if time.perf_counter() - t > budget:
            raise _OverBudget
        if progress is not None:
            progress(done, total)

    try:
        tree = CoverTree(model, num_threads=num_threads, progress=stop_if_over)
        tree._layout()                  # made by the first query: not a cost per row
        tree._depth_first_order()
    except _OverBudget:
        report["build_s"] = time.perf_counter() - t
        report["reason"] = (f"the build overran its budget ({BUILD_BUDGET:g} x the brute "
                            f"force's {brute_s:.3g} s)")
        return None, report
    report["build_s"] = time.perf_counter() - t

    # blocks of consecutive points in the tree's depth-first order, as the full query visits
    # them (a range of row numbers would be points scattered over the data)
    rows = min(PILOT_BLOCK_ROWS, n // (2 * PILOT_BLOCKS))
    dfs = tree._depth_first_order()
    starts = np.linspace(0, n - rows, PILOT_BLOCKS + 2).astype(int)[1:-1]
    seconds = []
    for a in starts:
        t = time.perf_counter()
        tree._query(None, k, True, np.ascontiguousarray(dfs[a:a + rows]), num_threads)
        seconds.append(time.perf_counter() - t)
    # the median block: one block slowed down by another process does not decide
    tree_s = float(np.median(seconds)) * n / rows
    report["tree_query_s"] = tree_s
    if tree_s < brute_s:
        report["method"] = "tree"
        report["reason"] = f"tree query {tree_s:.3g} s < brute force {brute_s:.3g} s (projected)"
        return tree, report
    report["reason"] = f"brute force {brute_s:.3g} s <= tree query {tree_s:.3g} s (projected)"
    return None, report
