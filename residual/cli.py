"""The command-line tool (``residual`` / ``python -m residual``): Vecchia neighbours of a file
of coordinates, or of the built-in standard harness, with a progress bar and a timing summary.

Everything that can go wrong with the user's input ends as exit status 2 and one line
``residual: error: ...`` on stderr; the library does the validating and this module turns its
ValueError / TypeError into that line.
"""

import argparse
import os
import sys
import warnings
import time

import numpy as np

from residual.kernels import RBF, Matern
from residual.vecchia import ORDERINGS, STAGES, vecchia_neighbors

KERNELS = {"rbf": None, "matern12": 0.5, "matern32": 1.5, "matern52": 2.5}

#: The built-in data when no --input is given: the standard harness (X ~ N(0, I), RBF, l = 1).
HARNESS_N, HARNESS_DIM = 32768, 3


class CLIError(ValueError):
    """A bad argument or input, reported as one line and exit status 2."""


def build_parser():
    """The argument parser (exposed so the options can be documented and tested)."""
    p = argparse.ArgumentParser(
        prog="residual",
        description="Exact Vecchia conditioning sets: order the points, then find each "
                    "point's k nearest predecessors under the residual-correlation (or "
                    "Euclidean) distance. Without --input, runs on the standard harness: "
                    f"X = default_rng(0).standard_normal(({HARNESS_N}, {HARNESS_DIM})), "
                    "RBF kernel with lengthscale 1.")
    data = p.add_argument_group("data")
    data.add_argument("--input", metavar="PATH",
                      help="coordinates, n x D: .npy, or .csv (comma-separated; a "
                           "non-numeric first line is skipped as a header)")
    data.add_argument("--n", type=int, default=None,
                      help=f"harness points (default {HARNESS_N}; not with --input)")
    data.add_argument("--dim", type=int, default=None,
                      help=f"harness dimensions (default {HARNESS_DIM}; not with --input)")
    model = p.add_argument_group("model")
    model.add_argument("--metric", choices=("residual", "euclidean"), default="residual",
                       help="distance (default residual)")
    model.add_argument("--kernel", choices=tuple(KERNELS), default="rbf",
                       help="kernel of the residual model (default rbf)")
    model.add_argument("--lengthscale", type=_lengthscale, default=1.0,
                       help="one float, or a comma-separated list with one per dimension "
                            "(default 1)")
    model.add_argument("--variance", type=float, default=1.0,
                       help="kernel variance (default 1)")
    model.add_argument("--n-inducing", type=int, default=200,
                       help="inducing points, a seeded random subset of the rows (default "
                            "200; the benchmarks' standard harness uses 512)")
    search = p.add_argument_group("search")
    search.add_argument("--k", type=int, default=30, help="neighbours per point (default 30)")
    search.add_argument("--ordering", choices=ORDERINGS, default="random",
                        help="point ordering (default random)")
    search.add_argument("--seed", type=int, default=0,
                        help="seeds the inducing points and the random ordering (default 0)")
    search.add_argument("--threads", type=int, default=None,
                        help="threads (default: all usable cores)")
    out = p.add_argument_group("output")
    out.add_argument("--output", metavar="PATH",
                     help="write order, neighbors, distances and metadata to this .npz")
    out.add_argument("--quiet", action="store_true", help="no progress display")
    out.add_argument("--progress", action="store_true",
                     help="draw the progress bar even when stderr is not a terminal")
    return p


def main(argv=None):
    """Run the tool; return the exit status (0 success, 2 bad arguments or input).

    Parameters
    ----------
    argv : list of str, default=None
        Arguments without the program name (None = ``sys.argv[1:]``).

    Returns
    -------
    status : int
    """
    args = build_parser().parse_args(argv)     # its own errors exit 2 with usage
    try:
        X, source = _load_data(args)
        kernel = _kernel(args)
        output = _output_path(args.output)
        bar = None if args.quiet else ProgressBar(sys.stderr, force=args.progress)
        res = vecchia_neighbors(X, kernel, args.k, n_inducing=args.n_inducing,
                                ordering=args.ordering, seed=args.seed, metric=args.metric,
                                num_threads=args.threads, progress=bar)
        if output is not None:
            _save(output, res, args, kernel, X.shape)
    except (ValueError, TypeError, OSError, ImportError) as exc:
        msg = " ".join(str(exc).split())       # one line, whatever the exception held
        print(f"residual: error: {msg}", file=sys.stderr)
        return 2
    except MemoryError as exc:
        print(f"residual: error: out of memory ({' '.join(str(exc).split())}); try a smaller "
              "--k or --n-inducing, or fewer points", file=sys.stderr)
        return 1
    _summary(sys.stdout, res, args, kernel, X.shape, source, output)
    return 0


# -- inputs ---------------------------------------------------------------------------------------

def _lengthscale(text):
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number or comma-separated numbers, got {text!r}") from None
    return vals[0] if len(vals) == 1 else vals


def _load_data(args):
    """(X, description): the --input file, or the harness."""
    if args.input is None:
        n = HARNESS_N if args.n is None else args.n
        dim = HARNESS_DIM if args.dim is None else args.dim
        if n < 1 or dim < 1:
            raise CLIError(f"--n and --dim must be >= 1, got --n {n} --dim {dim}")
        X = np.random.default_rng(0).standard_normal((n, dim))
        return X, f"standard harness (default_rng(0).standard_normal(({n}, {dim})))"
    if args.n is not None or args.dim is not None:
        raise CLIError("--n and --dim size the built-in harness; they cannot be used with "
                       "--input")
    return load_coordinates(args.input), args.input


def load_coordinates(path):
    """Read an n x D coordinate array from a .npy or .csv file, checked for shape and NaN.

    Parameters
    ----------
    path : str
        A ``.npy`` file, or a ``.csv`` file (comma-separated numbers; a first line that is
        not numeric is skipped as a header).

    Returns
    -------
    X : ndarray of shape (n_samples, n_features), float64

    Raises
    ------
    CLIError
        If the file is missing, unreadable, not numeric, not 2-D, empty or holds NaN/inf.
    """
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".npy", ".csv"):
        raise CLIError(f"--input must be a .npy or .csv file, got {path!r}")
    if not os.path.isfile(path):
        raise CLIError(f"--input {path!r}: no such file")
    try:
        if ext == ".npy":
            X = np.load(path, allow_pickle=False)
        else:
            with warnings.catch_warnings():     # an empty file: our message, not numpy's
                warnings.simplefilter("ignore", UserWarning)
                X = np.loadtxt(path, delimiter=",", skiprows=_header_lines(path), ndmin=2,
                               dtype=np.float64)
    except (ValueError, OSError, EOFError) as exc:
        raise CLIError(f"--input {path!r} could not be read: {exc}") from None
    if X.dtype.kind not in "iuf":
        raise CLIError(f"--input {path!r} must hold real numbers, got dtype {X.dtype}")
    if X.ndim != 2:
        raise CLIError(f"--input {path!r} must be a 2-D array (n x D), got shape {X.shape}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise CLIError(f"--input {path!r} is empty (shape {X.shape})")
    bad = ~np.isfinite(X)
    if bad.any():
        row = int(np.nonzero(bad.any(axis=1))[0][0])
        raise CLIError(f"--input {path!r} contains NaN or inf ({int(bad.sum())} entries, "
                       f"first in row {row})")
    return np.asarray(X, dtype=np.float64)


def _header_lines(path):
    """1 if the csv's first line is not numbers (a header), else 0."""
    with open(path) as f:
        first = f.readline()
    try:
        [float(v) for v in first.split(",")]
    except ValueError:
        return 1
    return 0


def _kernel(args):
    if args.metric == "euclidean":
        return None
    nu = KERNELS[args.kernel]
    if nu is None:
        return RBF(lengthscale=args.lengthscale, variance=args.variance)
    return Matern(nu, lengthscale=args.lengthscale, variance=args.variance)


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


# -- outputs --------------------------------------------------------------------------------------

def _save(path, res, args, kernel, shape):
    s = res.stats["seconds"]
    np.savez(path, order=res.order, neighbors=res.neighbors, distances=res.distances,
             n=shape[0], dim=shape[1], k=res.k, metric=res.metric, method=res.method,
             kernel=repr(kernel) if kernel is not None else "",
             n_inducing=args.n_inducing if res.metric == "residual" else 0,
             ordering=args.ordering, seed=args.seed,
             seconds=np.array([s[name] for name in STAGES + ("total",)]),
             seconds_stages=np.array(STAGES + ("total",)),
             distance_evaluations=res.stats["distance_evaluations"])


def _summary(out, res, args, kernel, shape, source, output):
    s = res.stats["seconds"]
    model = (f"{kernel!r}, {args.n_inducing} inducing points" if res.metric == "residual"
             else "coordinates")
    lines = [f"residual: Vecchia neighbours of {source}",
             f"  n = {shape[0]}, D = {shape[1]}, k = {res.k}, metric = {res.metric} "
             f"({model}), ordering = {args.ordering}, method = {res.method}"]
    lines += [f"  {name:<9}{s[name]:10.3f} s" for name in STAGES + ("total",)]
    lines += [f"  distance evaluations  {res.stats['distance_evaluations']:,}",
              f"  neighbours per second {res.stats['neighbors_per_second']:,.0f} "
              f"({res.stats['n_neighbors']:,} neighbours, build + query)",
              f"  output: {output if output is not None else 'none (use --output PATH.npz)'}"]
    print("\n".join(lines), file=out)


class ProgressBar:
    """The ``progress`` callback of :func:`vecchia_neighbors`, drawn on a stream.

    On a terminal (or with ``force``) one ``\\r``-updated line per stage with a bar, counts and
    elapsed seconds; otherwise one plain line per finished stage, so logs stay readable.
    """

    WIDTH = 30

    def __init__(self, stream, force=False):
        self.stream = stream
        self.live = force or _isatty(stream)
        self.t0 = None

    def __call__(self, stage, done, total):
        now = time.perf_counter()
        if done == 0 or self.t0 is None:
            self.t0 = now
        elapsed = now - self.t0
        finished = done >= total
        if self.live:
            fill = int(self.WIDTH * done / total) if total else self.WIDTH
            bar = "#" * fill + "." * (self.WIDTH - fill)
            self.stream.write(f"\r{stage:<9}[{bar}] {done:>{len(str(total))}}/{total} "
                              f"{elapsed:7.2f} s" + ("\n" if finished else ""))
        elif finished:
            self.stream.write(f"{stage:<9}done in {elapsed:.2f} s\n")
        self.stream.flush()


def _isatty(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
