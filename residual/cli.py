"""The command-line tool (``residual`` / ``python -m residual``): Vecchia neighbours of a file
of coordinates, or of the built-in standard harness, with a progress bar and a timing summary.

Everything that can go wrong with the user's input ends as exit status 2 and one line
``residual: error: ...`` on stderr, in the tool's own words: options are named as typed
(``--k``, ``--threads``) and file lines are counted from 1. The options are checked here
before any work; the library's own checks stay behind them.
"""

import argparse
import math
import os
import re
import sys
import threading
import time

import numpy as np

from residual import __version__
from residual.kernels import RBF, Matern
from residual.model import INDUCING_CHOICES
from residual.vecchia import (DEFAULT_N_INDUCING, ORDERINGS, STAGES, default_n_inducing,
                              vecchia_neighbors)
from residual._parallel import usable_cores

KERNELS = {"rbf": None, "matern12": 0.5, "matern32": 1.5, "matern52": 2.5}

#: The built-in data when no --input is given: the standard harness (X ~ N(0, I), RBF, l = 1).
HARNESS_N, HARNESS_DIM = 32768, 3

#: Options of the residual model only; given with --metric euclidean they are an error.
RESIDUAL_OPTIONS = ("kernel", "lengthscale", "variance", "n_inducing", "inducing", "nugget")

#: Exit status after Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130


class CLIError(ValueError):
    """A bad argument or input, reported as one line and exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (argparse's own prints the whole usage block first)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser():
    """The argument parser (exposed so the options can be documented and tested).

    The residual-model options default to None, so that "given" can be told from "default".
    """
    p = _Parser(
        prog="residual",
        description="Exact Vecchia conditioning sets: order the points, then find each "
                    "point's k nearest predecessors under the residual-correlation (or "
                    "Euclidean) distance. Without --input, runs on the standard harness: "
                    f"X = default_rng(0).standard_normal(({HARNESS_N}, {HARNESS_DIM})), "
                    "RBF kernel with lengthscale 1.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    data = p.add_argument_group("data")
    data.add_argument("--input", metavar="PATH",
                      help="coordinates, n x D: .npy (a 1-D array is n x 1), or .csv "
                           "(comma-separated numbers, one point per line; a first line of "
                           "column names is skipped)")
    data.add_argument("--skip-columns", type=int, default=None, metavar="N",
                      help="drop the first N columns of --input (e.g. 1 for the row index "
                           "that pandas' to_csv() writes); 0 keeps a first column that looks "
                           "like a row index")
    data.add_argument("--n", type=int, default=None,
                      help=f"harness points (default {HARNESS_N}; not with --input)")
    data.add_argument("--dim", type=int, default=None,
                      help=f"harness dimensions (default {HARNESS_DIM}; not with --input)")
    model = p.add_argument_group("model")
    model.add_argument("--metric", choices=("residual", "euclidean"), default="residual",
                       help="distance (default residual)")
    model.add_argument("--kernel", choices=tuple(KERNELS), default=None,
                       help="kernel of the residual model (default rbf)")
    model.add_argument("--lengthscale", type=_lengthscale, default=None,
                       help="one float, or a comma-separated list with one per dimension "
                            "(default 1)")
    model.add_argument("--variance", type=float, default=None,
                       help="kernel variance (default 1)")
    model.add_argument("--n-inducing", type=int, default=None,
                       help="number of inducing points (default "
                            "200, or n - 1 for fewer than 201 points; the benchmarks' "
                            "standard harness uses 512)")
    model.add_argument("--inducing", choices=INDUCING_CHOICES, default=None,
                       help="how the inducing points are chosen: a seeded random subset of "
                            "the rows, or k-means++ centres (default random)")
    model.add_argument("--nugget", type=float, default=None,
                       help="noise variance s2 added to the residual variances in the "
                            "correlation, for noisy data (default 0)")
    search = p.add_argument_group("search")
    search.add_argument("--k", type=int, default=30, help="neighbours per point (default 30)")
    search.add_argument("--ordering", choices=ORDERINGS, default="random",
                        help="point ordering (default random)")
    search.add_argument("--seed", type=int, default=0,
                        help="seeds the inducing points and the random ordering (default 0)")
    search.add_argument("--threads", type=int, default=None,
                        help="threads (default: OMP_NUM_THREADS if set, else all usable "
                             "cores; negative counts back from them)")
    out = p.add_argument_group("output")
    out.add_argument("--output", metavar="PATH",
                     help="write order, neighbors, distances and metadata to this .npz")
    out.add_argument("--quiet", action="store_true", help="no progress display")
    out.add_argument("--progress", action="store_true",
                     help="draw the progress bar even when stderr is not a terminal")
    return p


def main(argv=None):
    """Run the tool; return the exit status.

    0 on success, 2 on bad arguments or input, 1 when out of memory, 130 after Ctrl-C.

    Parameters
    ----------
    argv : list of str, default=None
        Arguments without the program name (None = ``sys.argv[1:]``).

    Returns
    -------
    status : int
    """
    args = build_parser().parse_args(argv)     # its own errors exit 2 with one line
    try:
        return _run(args)
    except KeyboardInterrupt:
        print("residual: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, TypeError, OSError, ImportError) as exc:
        msg = " ".join(str(exc).split())       # one line, whatever the exception held
        print(f"residual: error: {msg}", file=sys.stderr)
        return 2
    except MemoryError as exc:
        print(f"residual: error: out of memory ({' '.join(str(exc).split())}); try a smaller "
              "--k or --n-inducing, or fewer points", file=sys.stderr)
        return 1


def _run(args):
    _check_options(args)
    X, source = _load_data(args)
    n_inducing = _check_against_data(args, X.shape)
    kernel = _kernel(args)
    output = _output_path(args.output)
    if args.threads is not None and args.threads > usable_cores():
        print(f"residual: warning: --threads {args.threads} is more than the "
              f"{usable_cores()} usable cores; threads will take turns on them (slower)",
              file=sys.stderr)
    bar = None if args.quiet else ProgressBar(sys.stderr, force=args.progress)
    try:
        res = vecchia_neighbors(X, kernel, args.k, n_inducing=n_inducing,
                                inducing=args.inducing or "random", nugget=args.nugget or 0.0,
                                ordering=args.ordering, seed=args.seed, metric=args.metric,
                                num_threads=args.threads, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    if output is not None:
        _save(output, res, args, kernel, n_inducing, X.shape)
    _summary(sys.stdout, res, args, kernel, n_inducing, X.shape, source, output)
    return 0


# -- options --------------------------------------------------------------------------------------

def _lengthscale(text):
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number or comma-separated numbers, got {text!r}") from None
    return vals[0] if len(vals) == 1 else vals


def _check_options(args):
    """The checks that need no data, in the options' own names."""
    if args.metric == "euclidean":
        given = [name for name in RESIDUAL_OPTIONS if getattr(args, name) is not None]
        if given:
            names = ", ".join(_option(name) for name in given)
            many = len(given) > 1
            raise CLIError(f"{names} {'apply' if many else 'applies'} only to --metric "
                           f"residual; drop {'them' if many else 'it'} with --metric euclidean")
    if args.k < 1:
        raise CLIError(f"--k must be >= 1, got {args.k}")
    if args.n_inducing is not None and args.n_inducing < 1:
        raise CLIError(f"--n-inducing must be >= 1, got {args.n_inducing}")
    if args.seed < 0:
        raise CLIError(f"--seed must be >= 0, got {args.seed}")
    if args.threads == 0:
        raise CLIError("--threads must be a non-zero integer (leave it out to use every "
                       "usable core; -1 = all, -2 = all but one)")
    if args.nugget is not None and not (math.isfinite(args.nugget) and args.nugget >= 0):
        raise CLIError(f"--nugget must be a finite number >= 0, got {args.nugget}")
    if args.variance is not None and not (math.isfinite(args.variance) and args.variance > 0):
        raise CLIError(f"--variance must be a finite number > 0, got {args.variance}")
    if args.lengthscale is not None:
        ls = np.atleast_1d(args.lengthscale)
        if not (np.isfinite(ls).all() and (ls > 0).all()):
            raise CLIError(f"--lengthscale must be finite and > 0, got "
                           f"{','.join(f'{v:g}' for v in ls)}")
    if args.skip_columns is not None and args.skip_columns < 0:
        raise CLIError(f"--skip-columns must be >= 0, got {args.skip_columns}")


def _check_against_data(args, shape):
    """The checks that need n and D; returns the inducing points to use (None: Euclidean)."""
    n, dim = shape
    if args.k > n:
        raise CLIError(f"--k must be <= the number of points ({n}), got {args.k}")
    if np.ndim(args.lengthscale) == 1 and len(args.lengthscale) != dim:
        raise CLIError(f"--lengthscale has {len(args.lengthscale)} values but the data has "
                       f"D = {dim} dimensions: give one value, or one per dimension")
    if args.metric == "euclidean":
        return None
    if args.n_inducing is None:
        return default_n_inducing(n)
    if args.n_inducing > n:
        raise CLIError(f"--n-inducing must be <= the number of points ({n}), got "
                       f"{args.n_inducing}")
    return args.n_inducing


def _option(name):
    return "--" + name.replace("_", "-")


def _kernel(args):
    if args.metric == "euclidean":
        return None
    ls = 1.0 if args.lengthscale is None else args.lengthscale
    variance = 1.0 if args.variance is None else args.variance
    nu = KERNELS[args.kernel or "rbf"]
    if nu is None:
        return RBF(lengthscale=ls, variance=variance)
    return Matern(nu, lengthscale=ls, variance=variance)


def _output_path(path):
    """The .npz path that will be written (checked before any work), or None."""
    if path is None:
        return None
    if not path.endswith(".npz"):
        path += ".npz"              # what numpy.savez would do; say so in the summary
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CLIError(f"--output {path!r}: folder {folder!r} does not exist")
    return path


# -- input files ----------------------------------------------------------------------------------

def _load_data(args):
    """(X, description): the --input file, or the harness."""
    if args.input is None:
        if args.skip_columns is not None:
            raise CLIError("--skip-columns applies to --input files only")
        n = HARNESS_N if args.n is None else args.n
        dim = HARNESS_DIM if args.dim is None else args.dim
        if n < 1 or dim < 1:
            raise CLIError(f"--n and --dim must be >= 1, got --n {n} --dim {dim}")
        X = np.random.default_rng(0).standard_normal((n, dim))
        return X, f"standard harness (default_rng(0).standard_normal(({n}, {dim})))"
    if args.n is not None or args.dim is not None:
        raise CLIError("--n and --dim size the built-in harness; they cannot be used with "
                       "--input")
    return load_coordinates(args.input, skip_columns=args.skip_columns), args.input


def load_coordinates(path, skip_columns=None):
    """Read an n x D coordinate array from a .npy or .csv file, checked for shape and NaN.

    Parameters
    ----------
    path : str
        A ``.npy`` file (a 1-D array is read as n x 1), or a ``.csv`` file: comma-separated
        numbers, one point per line; a first line of column names is skipped, and so are
        blank lines and lines starting with ``#``.
    skip_columns : int, default=None
        Leading columns to drop. None drops none, and refuses a .csv whose first column
        looks like a row index (an empty or ``Unnamed`` first header cell, as pandas writes,
        or the values 0, 1, 2, ... or 1, 2, 3, ...); 0 keeps such a column.

    Returns
    -------
    X : ndarray of shape (n_samples, n_features), float64

    Raises
    ------
    CLIError
        If the file is missing or unreadable, not numbers, not n x D, empty, has a row-index
        first column, or holds NaN/inf; the message counts lines and rows from 1.
    """
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".npy", ".csv"):
        raise CLIError(f"--input must be a .npy or .csv file, got {path!r}")
    if not os.path.isfile(path):
        raise CLIError(f"--input {path!r}: no such file")
    if ext == ".npy":
        X, lines, header = _read_npy(path), None, None
    else:
        X, lines, header = _read_csv(path)
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise CLIError(f"--input {path!r} holds no data (shape {X.shape})")
    if skip_columns is None and lines is not None:
        _refuse_index_column(path, X, header)
    if skip_columns:
        if skip_columns >= X.shape[1]:
            raise CLIError(f"--skip-columns {skip_columns} leaves no columns: --input "
                           f"{path!r} has {X.shape[1]}")
        X = X[:, skip_columns:]
    bad = ~np.isfinite(X)
    if bad.any():
        row = int(np.nonzero(bad.any(axis=1))[0][0])
        where = f"line {lines[row]}" if lines is not None else f"row {row + 1}"
        count = int(bad.sum())
        raise CLIError(f"--input {path!r} contains NaN or inf ({count} value"
                       f"{'s' if count > 1 else ''}, the first on {where})")
    return np.ascontiguousarray(X, dtype=np.float64)


def _read_npy(path):
    try:
        X = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc):             # numpy refuses object arrays without pickle
            raise CLIError(f"--input {path!r} holds Python objects, not numbers; save a "
                           "numeric array (e.g. numpy.save(path, X.astype(float)))") from None
        raise CLIError(f"--input {path!r} is not a readable .npy file") from None
    except (OSError, EOFError):
        raise CLIError(f"--input {path!r} is not a readable .npy file") from None
    if not isinstance(X, np.ndarray):
        raise CLIError(f"--input {path!r} is not a .npy file (a .npz archive?)")
    if X.dtype.kind not in "iuf":
        raise CLIError(f"--input {path!r} must hold real numbers, got dtype {X.dtype}")
    if X.ndim == 1:
        X = X[:, None]                       # n points in one dimension
    if X.ndim != 2:
        raise CLIError(f"--input {path!r} must be an n x D array (or n values for D = 1), "
                       f"got shape {X.shape}")
    return X


#: Other separators worth naming when a line does not split into numbers at commas.
_OTHER_SEPARATORS = re.compile(r"[;\t| ]+")


def _read_csv(path):
    """(X, file line of each row, header cells or None) of a comma-separated file."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CLIError(f"--input {path!r} could not be read as text ({exc})") from None
    numbered = [(i + 1, s) for i, s in enumerate(text)
                if s.strip() and not s.lstrip().startswith("#")]
    if not numbered:
        raise CLIError(f"--input {path!r} holds no data lines")
    header = None
    first_no, first = numbered[0]
    if _numbers(first) is None:
        if _other_separator(first):
            raise CLIError(_separator_message(path, first_no, first))
        header = [c.strip() for c in first.split(",")]
        numbered = numbered[1:]
        if not numbered:
            raise CLIError(f"--input {path!r} holds only a header line (line {first_no}), "
                           "no data lines")
    lines = [no for no, _ in numbered]
    try:        # NumPy's parser is ~5x faster; the scan below words any error for the user
        X = np.loadtxt([s for _, s in numbered], delimiter=",", comments=None, ndmin=2,
                       dtype=np.float64)
    except ValueError:
        X = _scan_csv(path, numbered)
    if header is not None and len(header) != X.shape[1]:
        raise CLIError(f"--input {path!r}: the header (line {first_no}) has {len(header)} "
                       f"names but the data lines have {X.shape[1]} values")
    return X, lines, header


def _scan_csv(path, numbered):
    """The data lines parsed one by one, so that a bad one is named (line and value)."""
    rows, width = [], None
    for no, line in numbered:
        vals = _numbers(line)
        if vals is None:
            if _other_separator(line):
                raise CLIError(_separator_message(path, no, line))
            bad = next(j for j, c in enumerate(line.split(","), 1) if _number(c) is None)
            raise CLIError(f"--input {path!r}, line {no}: value {bad} is not a number: "
                           f"{_show(line)}")
        if width is None:
            width = len(vals)
        elif len(vals) != width:
            raise CLIError(f"--input {path!r}, line {no} has {len(vals)} value"
                           f"{'s' if len(vals) > 1 else ''} but line {numbered[0][0]} has "
                           f"{width}: {_show(line)}")
        rows.append(vals)
    return np.array(rows, dtype=np.float64)


def _number(cell):
    try:
        return float(cell)
    except ValueError:
        return None


def _numbers(line):
    """The line's comma-separated values as floats, or None if one is not a number."""
    vals = [_number(c) for c in line.split(",")]
    return None if any(v is None for v in vals) else vals


def _other_separator(line):
    """True when the line is numbers split by something other than commas (; tab | space)."""
    cells = [c for c in _OTHER_SEPARATORS.split(line.strip()) if c]
    return len(cells) > 1 and "," not in line and all(_number(c) is not None for c in cells)


def _separator_message(path, no, line):
    return (f"--input {path!r}, line {no} is not comma-separated: {_show(line)}; .csv input "
            "must separate the values of a line with commas, as in 0.5,1.25,3")


def _show(line, width=60):
    line = line.strip()
    return repr(line if len(line) <= width else line[:width] + "...")


def _refuse_index_column(path, X, header):
    """Refuse a .csv whose first column is a row index (pandas' DataFrame.to_csv() default)."""
    if X.shape[1] < 2:
        return
    col = X[:, 0]
    if header is not None and (header[0] == "" or header[0].startswith("Unnamed")):
        why = f"its header cell is {header[0]!r}, as pandas writes for the index"
    elif X.shape[0] > 1 and (np.array_equal(col, np.arange(X.shape[0]))
                             or np.array_equal(col, np.arange(1, X.shape[0] + 1))):
        why = f"it counts {int(col[0])}, {int(col[1])}, ... down the rows"
    else:
        return
    raise CLIError(f"--input {path!r}: the first column looks like a row index, not a "
                   f"coordinate ({why}); drop it with --skip-columns 1 (or write the file "
                   "with to_csv(index=False)), or keep it with --skip-columns 0")


# -- outputs --------------------------------------------------------------------------------------

def _save(path, res, args, kernel, n_inducing, shape):
    s = res.stats["seconds"]
    np.savez(path, order=res.order, neighbors=res.neighbors, distances=res.distances,
             n=shape[0], dim=shape[1], k=res.k, metric=res.metric, method=res.method,
             kernel=repr(kernel) if kernel is not None else "",
             n_inducing=n_inducing if res.metric == "residual" else 0,
             inducing=args.inducing or "random", nugget=args.nugget or 0.0,
             ordering=args.ordering, seed=args.seed,
             seconds=np.array([s[name] for name in STAGES + ("total",)]),
             seconds_stages=np.array(STAGES + ("total",)),
             distance_evaluations=res.stats["distance_evaluations"])


def _summary(out, res, args, kernel, n_inducing, shape, source, output):
    s = res.stats["seconds"]
    if res.metric == "residual":
        model = f"{kernel!r}, {n_inducing} {args.inducing or 'random'} inducing points"
        if args.n_inducing is None and n_inducing < DEFAULT_N_INDUCING:
            model += (f" (the default {DEFAULT_N_INDUCING}, reduced to n - 1 for "
                      f"n = {shape[0]})")
        if args.nugget:
            model += f", nugget {args.nugget:g}"
    else:
        model = "coordinates"
    lines = [f"residual: Vecchia neighbours of {source}",
             f"  n = {shape[0]}, D = {shape[1]}, k = {res.k}, metric = {res.metric} "
             f"({model}), ordering = {args.ordering}, method = {res.method}"]
    if "auto" in res.stats:
        lines.append(f"  method chosen by auto: {res.stats['auto']['reason']}")
    lines += [f"  {name:<9}{s[name]:10.3f} s" for name in STAGES + ("total",)]
    if res.metric == "residual" and res.method in ("brute", "tree"):
        lines.append(f"  float32 screen        {_screen_summary(res.model.metric.screen_counts)}")
    lines += [f"  distance evaluations  {res.stats['distance_evaluations']:,}",
              f"  neighbours per second {res.stats['neighbors_per_second']:,.0f} "
              f"({res.stats['n_neighbors']:,} neighbours, build + query)",
              f"  output: {output if output is not None else 'none (use --output PATH.npz)'}"]
    print("\n".join(lines), file=out)


def _screen_summary(counts):
    """Whether the float32 screen ran (brute force or tree), from Metric.screen_counts."""
    pairs = counts.get("pairs", 0)
    if not pairs or counts["float64_pairs"] == pairs:
        return "not used (float64 only)"
    return (f"used: {100 * counts['screened_float32'] / pairs:.1f} % of pairs decided in "
            f"float32, {100 * counts['recomputed_float64'] / pairs:.1f} % recomputed in float64")


class ProgressBar:
    """The ``progress`` callback of :func:`vecchia_neighbors`, drawn on a stream.

    On a terminal (or with ``force``) one ``\\r``-updated line per stage with a bar, counts and
    elapsed seconds, redrawn every ``TICK`` seconds by a daemon thread while a stage runs, so
    the clock moves even when the stage reports nothing; otherwise one plain line per finished
    stage, so logs stay readable. Call :meth:`close` when done (it stops the thread and ends
    an unfinished line).
    """

    WIDTH = 30
    TICK = 0.5

    def __init__(self, stream, force=False):
        self.stream = stream
        self.live = force or _isatty(stream)
        self._lock = threading.Lock()
        self._stage = None                 # (name, done, total, start) while a stage runs
        self._stop = threading.Event()
        self._ticker = None

    def __call__(self, stage, done, total):
        with self._lock:
            now = time.perf_counter()
            start = (now if done == 0 or self._stage is None or self._stage[0] != stage
                     else self._stage[3])
            finished = done >= total
            self._stage = None if finished else (stage, done, total, start)
            if self.live:
                self._draw(stage, done, total, now - start, finished)
            elif finished:
                self.stream.write(f"{stage:<9}done in {now - start:.2f} s\n")
                self.stream.flush()
        if self.live and not finished and self._ticker is None:
            self._ticker = threading.Thread(target=self._tick, name="residual-progress",
                                            daemon=True)
            self._ticker.start()

    def close(self):
        """Stop the redrawing thread; end the line of a stage that did not finish."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        with self._lock:
            if self.live and self._stage is not None:
                self.stream.write("\n")
                self.stream.flush()
            self._stage = None

    def _tick(self):
        while not self._stop.wait(self.TICK):
            with self._lock:
                if self._stage is not None:
                    stage, done, total, start = self._stage
                    self._draw(stage, done, total, time.perf_counter() - start, False)

    def _draw(self, stage, done, total, elapsed, finished):
        fill = int(self.WIDTH * done / total) if total else self.WIDTH
        bar = "#" * fill + "." * (self.WIDTH - fill)
        self.stream.write(f"\r{stage:<9}[{bar}] {done:>{len(str(total))}}/{total} "
                          f"{elapsed:7.2f} s" + ("\n" if finished else ""))
        self.stream.flush()


def _isatty(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
