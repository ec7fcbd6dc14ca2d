"""Scale-out over Dask: neighbour queries and Vecchia conditioning sets, one row block a task.

Two entry points, each a drop-in for a single-process call whose answer it reproduces exactly:

- :func:`query` — ``tree.query(Y, k)`` for a (dask or NumPy) array of new points, as a pair of
  lazy dask arrays with Y's row chunks;
- :func:`vecchia_neighbors` — :func:`residual.vecchia_neighbors` with its all-points
  predecessor query split into row blocks across workers.

The tree (or the ordered model) is shipped to each worker once — ``client.scatter(...,
broadcast=True)`` — and every task refers to that copy instead of carrying its own pickle.

When it pays off
----------------
Every worker must hold the whole model: V is ``n x m`` float64 (n = 1M, m = 512 is 4 GB),
plus X and, for the tree, its arrays. A brute-force predecessor query does ``n^2 m / 2``
multiply-adds, so spreading it pays when that work dwarfs shipping the model: for the
residual metric from n of a few tens of thousands upwards, and more so with each machine
added. On one machine the library's own threads already use every core (OpenMP, no GIL), so
Dask helps only across machines, or with several processes per machine where threads do not
scale; with one process and the same cores it adds scattering and scheduling to the same work.

The model, the ordering and the tree are built in the calling process; only the query (by far
the largest stage for the residual metric) is distributed.

Dask is an optional dependency: ``pip install "dask[distributed]"``. Importing this module
works without it; the functions raise ImportError saying what to install.
"""

import time
import uuid

import numpy as np

from residual.vecchia import _Call
from residual.tree import CoverTree
from residual._parallel import resolve_num_threads, usable_cores
from residual._validate import as_float_matrix, check_int, check_k

_INSTALL = 'pip install "dask[distributed]"'

#: Row blocks per worker thread when ``n_blocks`` is None (several, so that a slow block or a
#: slow worker does not hold up the rest).
BLOCKS_PER_THREAD = 4

#: Rows per block when a NumPy ``Y`` is chunked for :func:`query`, at most.
NUMPY_ROWS_PER_BLOCK = 4096

#: NumPy query blocks start on multiples of this many rows (whole cache lines per block).
ROW_ALIGN = 32

_RESULT = np.dtype([("dist", np.float64), ("idx", np.int64)])


def query(tree, Y, k, *, client=None, num_threads=None):
    """k nearest neighbours of new points, one task per row chunk of ``Y``.

    Each block is answered by ``tree.query(block, k)`` on a worker's copy of the tree; the
    result equals one ``tree.query(Y, k)`` call bit for bit, whatever the chunking (a new
    point's answer does not depend on the other points queried with it).

    Parameters
    ----------
    tree : residual.CoverTree
        Euclidean or residual-correlation tree.
    Y : dask.array.Array or numpy.ndarray of shape (n_queries, n_features)
        Query points (integer or float). A NumPy array is split into row chunks of at most
        ``NUMPY_ROWS_PER_BLOCK`` rows, several per worker thread; a dask array keeps its row
        chunks (its column chunks are merged).
    k : int
        Neighbours per query, ``1 <= k <= tree.n_samples``.
    client : distributed.Client, default=None
        The cluster to use. None: the current client (``distributed.get_client()``) if there
        is one, else dask's local scheduler with the tree used in place.
    num_threads : int, default=None
        OpenMP threads per task. None: on a distributed worker, the host's usable cores
        shared evenly among all worker threads on that host; under the local scheduler 1
        (it runs one task per core). Results do not depend on it.

    Returns
    -------
    dist : dask.array.Array of float64, shape (n_queries, k)
    idx : dask.array.Array of int64, shape (n_queries, k)
        Lazy, with ``Y``'s row chunks and one column chunk; rows ascend by (distance, index)
        as in :meth:`residual.CoverTree.query`. Compute them together, on the same cluster
        (``client.compute([dist, idx])``, or ``dask.compute(dist, idx)`` while that client
        is the default or current one): both read the same tasks, which read the scattered
        tree.

    Raises
    ------
    ImportError
        If dask (or, with ``client`` given, distributed) is not installed.
    TypeError, ValueError
        On a bad argument, before any work starts (a NumPy ``Y`` is checked for NaN and inf
        too; a dask ``Y`` only when its blocks are computed).

    Notes
    -----
    With a distributed client the tree is scattered to every worker once, at this call
    (``client.scatter(tree, broadcast=True)``); the returned arrays hold the future, which
    keeps the copies alive until they are dropped.

    Examples
    --------
    >>> import numpy as np, residual, residual.dask
    >>> tree = residual.CoverTree(np.random.default_rng(0).standard_normal((500, 2)))
    >>> Y = np.random.default_rng(1).standard_normal((1000, 2))
    >>> dist, idx = residual.dask.query(tree, Y, k=3)      # lazy; no client: local scheduler
    >>> np.array_equal(idx.compute(), tree.query(Y, k=3)[1])
    True
    """
    da = _import_dask_array()
    if not isinstance(tree, CoverTree):
        raise TypeError(f"tree must be a residual.CoverTree, got {type(tree).__name__}")
    dim = tree.model.n_features if tree.residual else tree._metric.dim
    k = check_k(k, tree.n_samples, in_sample=False, predecessors=False)
    if num_threads is not None:
        resolve_num_threads(num_threads)                  # check it; resolved on each worker
    client = _find_client(client)
    host_threads = None if client is None else _host_threads(client)
    threads = usable_cores() if client is None else sum(host_threads.values())
    Y = _as_row_chunked(da, Y, dim, threads)

    shared = tree if client is None else client.scatter(tree, broadcast=True, hash=False)
    name = f"residual-query-{uuid.uuid4().hex}"
    out = da.map_blocks(_query_block, Y, shared, k, num_threads, host_threads,
                        name=name, chunks=(Y.chunks[0], (k,)), dtype=_RESULT,
                        meta=np.empty((0, 0), dtype=_RESULT))
    return out["dist"], out["idx"]


def vecchia_neighbors(X, kernel=None, k=30, *, client=None, n_blocks=None, **kwargs):
    """:func:`residual.vecchia_neighbors` with the predecessor query spread over Dask workers.

    Same arguments, same result: ``order``, ``neighbors`` and ``distances`` are identical to
    the single-process answer. The model, the ordering and (for ``method="tree"``) the tree
    are built here; the ordered model (or the tree) is scattered to every worker once; the
    rows are split into blocks of about equal predecessor work (row i scores i pairs), each
    answered by ``rows=(start, stop)`` on a worker, and gathered.

    Parameters
    ----------
    X, kernel, k
        As in :func:`residual.vecchia_neighbors`.
    client : distributed.Client, default=None
        The cluster. None: the current client (``distributed.get_client()``) if there is one,
        else dask's local threaded scheduler in this process (``num_threads`` tasks at once,
        one thread each).
    n_blocks : int, default=None
        Row blocks to split the query into (about; blocks are aligned to 32 rows). None:
        ``BLOCKS_PER_THREAD`` per worker thread, each at least
        ``residual.vecchia.QUERY_BLOCK_MIN_ROWS`` rows.
    **kwargs
        The other keywords of :func:`residual.vecchia_neighbors`: ``n_inducing``,
        ``inducing``, ``nugget``, ``ordering``, ``seed``, ``metric``, ``method``,
        ``num_threads`` and ``progress``.
        ``num_threads`` sets the threads of the stages run here (model, ordering, build);
        each worker task uses the host's usable cores shared evenly among the worker
        threads on that host. ``progress("query", done, n)`` is reported as blocks finish.

    Returns
    -------
    result : residual.VecchiaNeighbors
        As from :func:`residual.vecchia_neighbors`; ``stats["seconds"]`` also has
        ``scatter`` (shipping the model or tree to the workers; 0 without a client), its
        ``query`` is the distributed query including the gather, and ``stats["dask"]``
        holds ``n_blocks`` and ``n_workers``.

    Raises
    ------
    ImportError
        If dask (or, with ``client`` given, distributed) is not installed.
    TypeError, ValueError
        On a bad argument, before any work starts; the message names it.

    Notes
    -----
    Every worker holds the whole ordered model (V is n x m float64). See the module
    docstring for when this pays off.

    Examples
    --------
    >>> import numpy as np, residual, residual.dask
    >>> X = np.random.default_rng(0).standard_normal((2000, 2))
    >>> res = residual.dask.vecchia_neighbors(X, residual.RBF(), k=5, n_inducing=50,
    ...                                       n_blocks=4)
    >>> ref = residual.vecchia_neighbors(X, residual.RBF(), k=5, n_inducing=50)
    >>> np.array_equal(res.neighbors, ref.neighbors)
    True
    """
    _import_dask()
    call = _Call.bind("residual.dask.vecchia_neighbors", X, kernel, k, kwargs)
    n = call.n
    if n_blocks is not None:
        n_blocks = check_int(n_blocks, "n_blocks", minimum=1)
    client = _find_client(client)
    if client is None:
        host_threads, threads, n_workers = None, call.num_threads, 1
    else:
        host_threads = _host_threads(client)
        threads, n_workers = sum(host_threads.values()), len(client.nthreads())

    call.prepare()
    if n_blocks is None:
        blocks = call.blocks(BLOCKS_PER_THREAD * threads)
    else:
        blocks = call.blocks(n_blocks, min_rows=1)

    t = time.perf_counter()
    shared = call.searcher
    if client is not None:
        shared = client.scatter(shared, broadcast=True, hash=False)
    call.seconds["scatter"] = time.perf_counter() - t

    def run():
        if client is None:
            return _local_blocks(shared, call.k, blocks, threads, n, call.report)
        try:
            return _distributed_blocks(client, shared, call.k, blocks, host_threads, n,
                                       call.report)
        finally:
            shared.release()                   # the workers may drop their copies now

    result = call.finish(call.query(run))
    result.stats["dask"] = {"n_blocks": len(blocks), "n_workers": n_workers}
    return result


# -- tasks (run on the workers) -------------------------------------------------------------------

def _query_block(block, tree, k, num_threads, host_threads):
    """One row block of :func:`query`, as a structured (dist, idx) array."""
    dist, idx = tree.query(block, k, num_threads=_task_threads(num_threads, host_threads))
    out = np.empty(dist.shape, dtype=_RESULT)
    out["dist"], out["idx"] = dist, idx
    return out


def _vecchia_block(searcher, k, start, stop, host_threads):
    """Rows ``start..stop-1`` of the predecessor query: ``(dist, idx, evaluations)``."""
    if isinstance(searcher, CoverTree):
        searcher = _own_stats(searcher)
    return _Call.query_rows(searcher, k, start, stop,
                                _task_threads(None, host_threads))


def _own_stats(tree):
    """The same tree with a stats dict of its own.

    Tasks sharing a tree in one process run at once, and each reads the evaluation count its
    query left in ``stats["query"]``; a shared dict would hand it another task's. The view
    shares every array and the search caches, which are built first so that views reuse them.
    """
    tree._layout()
    tree._depth_first_order()
    view = CoverTree.__new__(CoverTree)
    vars(view).update(vars(tree))
    view.stats = dict(tree.stats)
    return view


def _task_threads(num_threads, host_threads):
    """OpenMP threads for one task, decided where it runs.

    An explicit count is resolved against this machine's cores. Otherwise: on a distributed
    worker, the host's usable cores shared evenly among all worker threads on this host (one
    task per worker thread may run at once); under the local scheduler (``host_threads`` None),
    1, since it already runs one task per core.
    """
    if num_threads is not None:
        return resolve_num_threads(num_threads)
    if host_threads is None:
        return 1
    from distributed import get_worker
    from distributed.comm import get_address_host
    try:
        worker = get_worker()
    except ValueError:                       # not on a worker after all
        return 1
    here = host_threads.get(get_address_host(worker.address), worker.state.nthreads)
    return max(1, usable_cores() // max(here, 1))


# -- scheduling -----------------------------------------------------------------------------------

def _distributed_blocks(client, shared, k, blocks, host_threads, n, report):
    """Submit one task per block, report rows done as they finish, return the parts in order."""
    from distributed import as_completed

    tag = uuid.uuid4().hex
    futures = [client.submit(_vecchia_block, shared, k, start, stop, host_threads,
                             key=f"residual-vecchia-{tag}-{i}", pure=False)
               for i, (start, stop) in enumerate(blocks)]
    which = {f.key: i for i, f in enumerate(futures)}
    parts = [None] * len(blocks)
    done = 0
    try:
        for future, part in as_completed(futures, with_results=True, loop=client.loop):
            i = which[future.key]
            parts[i] = part
            done += blocks[i][1] - blocks[i][0]
            if done < n:
                report("query", done, n)
    except BaseException:
        client.cancel(futures)
        raise
    return parts


def _local_blocks(searcher, k, blocks, threads, n, report):
    """The blocks as dask.delayed tasks on the local threaded scheduler."""
    import dask
    from dask.callbacks import Callback

    tag = uuid.uuid4().hex
    keys = {}
    tasks = []
    for i, (start, stop) in enumerate(blocks):
        key = f"residual-vecchia-{tag}-{i}"
        keys[key] = i
        tasks.append(dask.delayed(_vecchia_block, pure=False)(
            searcher, k, start, stop, None, dask_key_name=key))
    done = [0]

    def posttask(key, result, dsk, state, worker_id):
        i = keys.get(key if isinstance(key, str) else None)
        if i is not None:
            done[0] += blocks[i][1] - blocks[i][0]
            if done[0] < n:
                report("query", done[0], n)

    with Callback(posttask=posttask):
        return list(dask.compute(*tasks, scheduler="threads", num_workers=threads))


# -- arguments ------------------------------------------------------------------------------------

def _as_row_chunked(da, Y, dim, threads):
    """Y as a dask array with one column chunk, checked before any work.

    A NumPy Y is cut into ``BLOCKS_PER_THREAD`` blocks per thread (at most
    ``NUMPY_ROWS_PER_BLOCK`` rows), on multiples of ``ROW_ALIGN`` rows.
    """
    if isinstance(Y, da.Array):
        if Y.ndim != 2:
            raise ValueError(f"Y must be a 2-D array of shape (n_queries, n_features), got "
                             f"{Y.ndim}-D with shape {Y.shape}")
        if Y.dtype.kind not in "iuf":
            raise TypeError(f"Y must hold real numbers (integer or float), got dtype {Y.dtype}")
        if Y.shape[1] != dim:
            raise ValueError(f"Y has {Y.shape[1]} columns but {dim} were expected")
        return Y.rechunk({1: -1}) if len(Y.chunks[1]) > 1 else Y
    if not isinstance(Y, np.ndarray):
        hint = " (for in-sample queries use tree.query or vecchia_neighbors)" if Y is None else ""
        raise TypeError(f"Y must be a dask array or a NumPy ndarray, got "
                        f"{type(Y).__name__}{hint}")
    Y = as_float_matrix(Y, "Y", ncols=dim, allow_empty=True)
    rows = -(-Y.shape[0] // (BLOCKS_PER_THREAD * threads))
    rows = min(NUMPY_ROWS_PER_BLOCK, max(1, -(-rows // ROW_ALIGN)) * ROW_ALIGN)
    return da.from_array(Y, chunks=(rows, dim), name=f"residual-Y-{uuid.uuid4().hex}")


def _find_client(client):
    """The given client, else the current distributed client, else None (local scheduler)."""
    if client is not None:
        try:
            from distributed import Client
        except ImportError as exc:
            raise ImportError(f"client= needs dask.distributed: {_INSTALL} ({exc})") from exc
        if not isinstance(client, Client):
            raise TypeError(f"client must be a distributed.Client, got {type(client).__name__}")
        return client
    try:
        from distributed import get_client
    except ImportError:
        return None
    try:
        return get_client()
    except ValueError:                       # no client: the local scheduler
        return None


def _host_threads(client):
    """Worker threads per host address, for sharing each host's cores among its tasks."""
    from distributed.comm import get_address_host

    out = {}
    for address, nthreads in client.nthreads().items():
        host = get_address_host(address)
        out[host] = out.get(host, 0) + nthreads
    if not out:
        raise RuntimeError("the dask cluster has no workers")
    return out


def _import_dask():
    try:
        import dask
    except ImportError as exc:
        raise ImportError(f"residual.dask needs dask: {_INSTALL} ({exc})") from exc
    return dask


def _import_dask_array():
    _import_dask()
    try:
        import dask.array as da
    except ImportError as exc:
        raise ImportError(f"residual.dask.query needs dask.array: {_INSTALL} ({exc})") from exc
    return da
