"""Argument checks shared by the public entry points.

Every check raises before any work starts, with a message that names the argument.
"""

import numbers

import numpy as np

#: Largest chunk size passed on to compiled code (larger requests are clamped).
MAX_CHUNK_SIZE = 1 << 30


def as_numeric_array(a, name, *, integer=False, what=None):
    """``a`` as a NumPy array of real numbers (integer ones if ``integer``), not yet cast.

    Object arrays of plain numbers are accepted; masked arrays are refused (NumPy would drop
    the mask and use the masked entries as data); ragged sequences raise a TypeError naming
    the argument. ``what`` completes "{name} must be ..." in the dtype error.
    """
    if a is None:
        raise TypeError(f"{name} must {what or 'be an array'}, got None")
    if isinstance(a, np.ma.MaskedArray):
        raise ValueError(f"{name} is a masked array: fill or drop the masked entries first "
                        "(numpy.ma.filled / compressed)")
    try:
        arr = np.asarray(a)
    except (ValueError, TypeError) as exc:
        raise TypeError(f"{name} must be a numeric array: {exc}") from None
    if arr.dtype.kind == "O":
        if any(_is_missing(v) for v in arr.ravel()):
            raise ValueError(f"{name} has missing values (pandas.NA): fill or drop them "
                             "first")
        ok = all(isinstance(v, numbers.Integral if integer else numbers.Real)
                 and not isinstance(v, (bool, np.bool_)) for v in arr.ravel())
        if not ok:
            raise TypeError(f"{name} must {what or 'be a numeric array'}, got dtype object "
                            f"with non-{'integer' if integer else 'numeric'} entries")
        arr = arr.astype(np.int64 if integer else np.float64)
    kinds = "iu" if integer else "iuf"
    if what is None:
        what = "hold integers" if integer else "hold real numbers (integer or float)"
    if arr.dtype.kind not in kinds:
        raise TypeError(f"{name} must {what}, got dtype {arr.dtype}")
    return arr


def _is_missing(v):
    """True for pandas.NA, what nullable pandas columns hand NumPy for a gap (without
    importing pandas)."""
    return type(v).__name__ == "NAType"


def as_float_matrix(a, name, *, ncols=None, allow_empty=False):
    """Validate a 2-D real array and return it as C-contiguous float64 (copying only if needed).

    Raises
    ------
    TypeError
        If ``a`` is not numeric (object, string, complex or boolean data).
    ValueError
        If ``a`` is not 2-D, is empty, has the wrong number of columns, or holds NaN or inf.
    """
    arr = as_numeric_array(a, name)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array of shape (n_samples, n_features), "
                         f"got {arr.ndim}-D with shape {arr.shape}")
    if not allow_empty and arr.shape[0] == 0:
        raise ValueError(f"{name} is empty: it needs at least one row")
    if arr.shape[1] == 0:
        raise ValueError(f"{name} has no columns (features)")
    if ncols is not None and arr.shape[1] != ncols:
        raise ValueError(f"{name} has {arr.shape[1]} columns but {ncols} were expected")
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or inf")
    return arr


def check_euclidean_range(X, name):
    """Refuse coordinates so large that squared distances would overflow float64."""
    if X.size and np.abs(X).max() > 1e150:
        raise ValueError(f"{name} has entries above 1e150 in magnitude: squared distances "
                         "would overflow float64; rescale the coordinates")


def as_float_vector(a, name, *, size):
    """Validate a 1-D finite real array of the given size, returned as C-contiguous float64."""
    arr = as_numeric_array(a, name)
    if arr.ndim != 1 or arr.shape[0] != size:
        raise ValueError(f"{name} must have shape ({size},), got {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or inf")
    return arr


def check_int(value, name, *, minimum=None, maximum=None):
    """Return ``value`` as int if it is an integer (not bool) within [minimum, maximum]."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_positive(value, name):
    """Return ``value`` as a finite float > 0."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return value


def resolve_chunk_size(chunk_size, default):
    """Queries per parallel work item: ``default`` when None, else an integer >= 1.

    Sizes beyond ``MAX_CHUNK_SIZE`` are clamped to it: answers never depend on the chunk size,
    and the compiled loops take C integers.
    """
    if chunk_size is None:
        return default
    return min(check_int(chunk_size, "chunk_size", minimum=1), MAX_CHUNK_SIZE)


#: The values of ``precision`` (see :func:`residual.brute_force_knn`).
PRECISIONS = ("auto", "float32", "float64")


def check_precision(precision):
    """``precision``: one of PRECISIONS."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def resolve_seed(seed, name="seed"):
    """The integer seed to draw from: ``numpy.random.default_rng(resolve_seed(seed))``.

    An integer >= 0 is returned as is, so the same int always gives the same draws. A
    ``numpy.random.Generator`` gives one draw from it (so it advances, and successive calls
    differ, as in other GP libraries); None gives a draw from fresh OS entropy. Either way the
    result is an int, which callers can record to reproduce the run.
    """
    if seed is None:
        seed = np.random.default_rng()
    if isinstance(seed, np.random.Generator):
        return int(seed.integers(1 << 63))
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"{name} must be an integer >= 0, a numpy.random.Generator or None, "
                        f"got {type(seed).__name__}")
    return check_int(seed, name, minimum=0)


def as_points(X_or_model, name="X_or_model", *, euclidean=True):
    """``(model, coords)``: a ResidualCorrelation and its X, or (None, the coordinates as
    C-contiguous float64, checked for Euclidean distances if ``euclidean``). The one dispatch
    of the public entry points; a kernel is refused with a hint."""
    from residual.kernels import Kernel
    from residual.model import ResidualCorrelation
    if isinstance(X_or_model, Kernel):
        raise TypeError(f"{name} must be coordinates or a ResidualCorrelation, not a kernel; "
                        "build ResidualCorrelation.from_kernel(X, kernel) first")
    if isinstance(X_or_model, ResidualCorrelation):
        return X_or_model, X_or_model.X
    coords = as_float_matrix(X_or_model, "X")
    if euclidean:
        check_euclidean_range(coords, "X")
    return None, coords


def check_rows(rows, n, in_sample):
    """Validate ``rows`` (None, a (start, stop) pair or a step-1 range) -> (start, stop)."""
    if rows is None:
        return 0, n
    if not in_sample:
        raise ValueError("rows applies to in-sample queries only (Y=None)")
    if isinstance(rows, range):
        if rows.step != 1:
            raise ValueError(f"rows must be a range with step 1, got {rows!r}")
        rows = (rows.start, rows.stop)
    if not isinstance(rows, (tuple, list)) or len(rows) != 2:
        raise TypeError(f"rows must be a (start, stop) pair or a range, got {rows!r}")
    start = check_int(rows[0], "rows start", minimum=0)
    stop = check_int(rows[1], "rows stop", minimum=0)
    if not start <= stop <= n:
        raise ValueError(f"rows must satisfy 0 <= start <= stop <= n_samples = {n}, "
                         f"got ({start}, {stop})")
    return start, stop


def check_query(Y, k, predecessors, n, dim, *, euclidean):
    """Validate a query's arguments (brute_force_knn, CoverTree.query).

    Returns ``(Y, k)``: Y as C-contiguous float64 (None for in-sample queries) and k checked
    against the eligible set.
    """
    if not isinstance(predecessors, (bool, np.bool_)):
        raise TypeError(f"predecessors must be a bool, got {type(predecessors).__name__}")
    if Y is not None:
        if predecessors:
            raise ValueError("predecessors=True applies to in-sample queries only (Y=None)")
        Y = as_float_matrix(Y, "Y", ncols=dim, allow_empty=True)
        if euclidean:
            check_euclidean_range(Y, "Y")
    return Y, check_k(k, n, in_sample=Y is None, predecessors=predecessors)


def check_k(k, n, *, in_sample, predecessors):
    """k against the eligible points: at most n - 1 others in-sample, else at most n (rows
    with fewer predecessors are padded)."""
    k = check_int(k, "k", minimum=1)
    if in_sample and not predecessors and k > n - 1:
        raise ValueError(f"k = {k} is larger than the n_samples - 1 = {n - 1} other points")
    if k > n:
        raise ValueError(f"k = {k} is larger than n_samples = {n}")
    return k
