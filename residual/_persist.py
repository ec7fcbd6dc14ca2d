"""The on-disk and pickle format of trees and models: one flat dict of NumPy arrays.

A saved object is ``np.savez`` of that dict (no pickled objects inside, so loading runs no code
from the file), and ``__getstate__`` returns the same dict, so a file and a pickle describe an
object in exactly the same terms. Every dict carries ``format_name`` (which class it holds) and
``format_version`` (an integer, bumped whenever the meaning of an entry changes, so that an old
reader refuses a newer file instead of misreading it).

This module knows the container, not the objects: :class:`Persistent` gives a class save, load
and pickling from two methods of its own, ``_state`` (the entries) and ``_restore`` (fill a new
object from a :class:`Reader`); :class:`Reader` hands out entries checked for presence, dtype and
shape; the classes check what their entries mean (index ranges, structure). Every problem
surfaces as a ``ValueError`` naming the source (the path, or "pickled ...").
"""

import contextlib
import os

import numpy as np

from residual._validate import check_int

#: Version written by this code; readers accept 1 .. FORMAT_VERSION. Version 2 added the
#: model's nugget and inducing points as coordinates (``Reader.version`` tells them apart).
FORMAT_VERSION = 2

TREE_FORMAT = "residual.CoverTree"
MODEL_FORMAT = "residual.ResidualCorrelation"
_KNOWN_FORMATS = (TREE_FORMAT, MODEL_FORMAT)


class Persistent:
    """Mixin: ``save``/``load`` to a versioned ``.npz`` file, and pickling through the same dict.

    A subclass sets ``_FORMAT`` (its ``format_name``) and defines ``_state()``, the dict of its
    entries (header excluded), and ``_restore(reader)``, which fills a new, uninitialised object
    from a :class:`Reader` and raises TypeError/ValueError on anything it cannot trust.
    """

    _FORMAT = None

    def save(self, path):
        """Write this object to one ``.npz`` file of plain NumPy arrays (no pickle inside).

        Parameters
        ----------
        path : str or os.PathLike
            Destination. As with ``numpy.savez``, ``.npz`` is appended when the name lacks it.

        Returns
        -------
        path : str
            The file written.

        Notes
        -----
        The class's Notes list what the file holds. The format is versioned
        (``residual/_persist.py``); what :meth:`load` reads back gives bitwise identical
        distances and neighbours.
        """
        return save(path, self._state(), self._FORMAT)

    @classmethod
    def load(cls, path):
        """Read an object of this class written by :meth:`save`.

        Parameters
        ----------
        path : str or os.PathLike
            The file; when it does not exist, ``path + ".npz"`` is tried (as saved).

        Returns
        -------
        obj : instance of this class
            A new object, with new objects for everything it holds (a tree's model).

        Raises
        ------
        ValueError
            Naming the path and the problem: the file is missing, unreadable, truncated or
            corrupted, holds another class or a newer format version, or has missing or
            inconsistent entries (wrong dtype or shape, or what the class's Notes list).
        """
        self = cls.__new__(cls)
        load(path, cls._FORMAT, self._restore)
        return self

    def __getstate__(self):
        # the pickle is the saved file's dict: one description of an object, checked on the way in
        return pack(self._state(), self._FORMAT)

    def __setstate__(self, state):
        unpickle(state, self._FORMAT, self._restore)


def pack(body, format_name):
    """The state dict: the header entries plus ``body``, every value a NumPy array."""
    state = {"format_name": np.asarray(format_name),
             "format_version": np.asarray(FORMAT_VERSION, dtype=np.int64)}
    state.update((key, np.asarray(value)) for key, value in body.items())
    for key, value in state.items():
        # np.savez would pickle an object array (and np.load refuse it): keep files plain
        if value.dtype.hasobject:
            raise TypeError(f"entry {key!r} is not a plain numeric or string array")
    return state


def npz_path(path):
    """``path`` as a str, with ``.npz`` appended when missing (as ``np.savez`` does)."""
    path = _as_str(path)
    return path if path.endswith(".npz") else path + ".npz"


def _as_str(path):
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"path must be a str, bytes or os.PathLike, got {type(path).__name__}")
    return os.fsdecode(os.fspath(path))


def save(path, body, format_name):
    """Write ``pack(body, format_name)`` to ``npz_path(path)``; return that path."""
    path = npz_path(path)
    np.savez(path, **pack(body, format_name))     # pack() admits no object arrays
    return path


def load(path, format_name, restore):
    """Read the file at ``path`` (or ``path + '.npz'``) and return ``restore(Reader)``."""
    path = _existing_path(path)
    source = f"{format_name} file {path!r}"
    arrays = _read_npz(path, source)
    with blame(source):
        return restore(Reader(arrays, format_name))


def unpickle(state, format_name, restore):
    """``restore(Reader)`` over a state dict from ``__setstate__``."""
    with blame(f"pickled {format_name}"):
        if not isinstance(state, dict):
            raise ValueError(f"the state is a {type(state).__name__}, not a dict")
        restore(Reader(state, format_name))


@contextlib.contextmanager
def blame(source):
    """Re-raise every TypeError/ValueError of a restore as a ValueError naming the source."""
    try:
        yield
    except (TypeError, ValueError) as exc:
        raise ValueError(f"cannot load {source}: {exc}") from exc


def _existing_path(path):
    path = _as_str(path)
    if not os.path.exists(path) and os.path.exists(npz_path(path)):
        return npz_path(path)
    return path


def _read_npz(path, source):
    """Every entry of the .npz at ``path``, read eagerly so that corruption shows up here."""
    try:
        with open(path, "rb") as fh:
            data = np.load(fh, allow_pickle=False)
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise ValueError("it holds a single .npy array, not a .npz archive")
            with data:
                return {key: data[key] for key in data.files}
    except OSError as exc:
        raise ValueError(f"cannot load {source}: {exc.strerror or exc}") from exc
    # numpy and zipfile report a damaged archive with many exception types (BadZipFile,
    # EOFError, ValueError, zlib.error, ...): this is the one boundary where they all mean
    # "not a readable .npz"
    except Exception as exc:
        raise ValueError(f"cannot load {source}: not a readable .npz file (truncated, corrupted "
                         f"or not ours): {type(exc).__name__}: {exc}") from exc


class Reader:
    """Checked access to the entries of a state dict; errors are ValueErrors without a source.

    Parameters
    ----------
    arrays : dict of str to array-like
    format_name : str
        The ``format_name`` the dict must carry (checked with the version on construction).
    prefix : str, default=""
        Prepended to every key (a tree stores its model's entries under ``model_``).
    version : int, default=None
        The format version, known to a prefixed reader; None reads and checks the header.

    Attributes
    ----------
    version : int
        The ``format_version`` of the dict (for entries that differ between versions).
    """

    def __init__(self, arrays, format_name, prefix="", version=None):
        self._arrays, self._prefix = arrays, prefix
        self.version = self._check_header(format_name) if version is None else version

    def prefixed(self, prefix):
        """A reader over the entries whose keys start with ``prefix``."""
        return Reader(self._arrays, None, self._prefix + prefix, self.version)

    def has(self, key):
        return self._prefix + key in self._arrays

    def ndim(self, key):
        return self._get(key).ndim

    def array(self, key, dtype, shape, *, finite=True):
        """Entry ``key`` as a native, C-contiguous array of ``dtype`` and ``shape``.

        ``shape`` is a tuple whose None entries match any length.
        """
        arr = self._get(key)
        want = np.dtype(dtype)
        if arr.dtype.kind != want.kind or arr.dtype.itemsize != want.itemsize:
            raise ValueError(f"entry {self.name(key)} has dtype {arr.dtype}, expected {want}")
        if arr.ndim != len(shape) or any(s is not None and s != a
                                         for s, a in zip(shape, arr.shape)):
            expected = tuple("*" if s is None else s for s in shape)
            raise ValueError(f"entry {self.name(key)} has shape {arr.shape}, expected "
                             f"{expected}".replace("'*'", "*"))
        arr = np.asarray(arr, dtype=want.newbyteorder("="), order="C")   # keeps 0-d as 0-d
        if finite and arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise ValueError(f"entry {self.name(key)} contains NaN or inf")
        return arr

    def integer(self, key, minimum=None, maximum=None):
        return check_int(int(self.array(key, np.int64, ())), f"entry {self.name(key)}",
                         minimum=minimum, maximum=maximum)

    def number(self, key):
        return float(self.array(key, np.float64, ()))

    def flag(self, key):
        return bool(self.array(key, np.bool_, ()))

    def text(self, key, choices=None):
        arr = self._get(key)
        if arr.dtype.kind != "U" or arr.ndim != 0:
            raise ValueError(f"entry {self.name(key)} must be a string, got dtype {arr.dtype} "
                             f"and shape {arr.shape}")
        value = str(arr)
        if choices is not None and value not in choices:
            raise ValueError(f"entry {self.name(key)} is {value!r}, expected one of "
                             f"{list(choices)}")
        return value

    def in_range(self, key, arr, low, high):
        """Refuse entries of the index array ``arr`` outside [low, high)."""
        if arr.size and (arr.min() < low or arr.max() >= high):
            raise ValueError(f"entry {self.name(key)} has values outside [{low}, {high - 1}]")
        return arr

    def _get(self, key):
        full = self._prefix + key
        if full not in self._arrays:
            raise ValueError(f"entry {full!r} is missing")
        return np.asarray(self._arrays[full])

    def name(self, key):
        """How messages call entry ``key``: its full key, quoted."""
        return repr(self._prefix + key)

    def _check_header(self, format_name):
        if "format_name" not in self._arrays:
            raise ValueError("not a residual file (it has no 'format_name' entry)")
        name = self.text("format_name")
        if name != format_name:
            hint = (f"; use {name.rsplit('.', 1)[1]}.load" if name in _KNOWN_FORMATS else "")
            raise ValueError(f"it holds {name!r}, not {format_name!r}{hint}")
        version = self.integer("format_version")
        if version > FORMAT_VERSION:
            raise ValueError(f"format version {version} is newer than this version of "
                             f"residual reads (up to {FORMAT_VERSION}): upgrade residual")
        if version < 1:
            raise ValueError(f"unknown format version {version}")
        return version
