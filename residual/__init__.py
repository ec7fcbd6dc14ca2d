"""Exact k nearest neighbours on a parallel compressed cover tree.

Two metrics: Euclidean, and the residual-correlation distance used to pick Vecchia conditioning
sets in Gaussian-process approximations (Vecchia + inducing points).
"""

import importlib.util as _importlib_util
import os as _os

# Python looks in the current folder first, so `import residual` run from the repository's top
# folder finds the source package, which holds no compiled modules; without this check the
# first compiled import fails as a confusing "partially initialized module" (circular) error.
if _importlib_util.find_spec("residual._openmp") is None:
    raise ImportError(
        f"residual was imported from {_os.path.dirname(__file__)!r}, a source folder without "
        "its compiled modules (Python looks in the current folder first). Run from another "
        "folder to use the installed package, or build in place for development with "
        "`python -m pip install --no-build-isolation -e .` (see README, Development)")

# the first compiled import: it sets OpenMP's wait policy, which libgomp reads when it loads
from residual import _parallel  # noqa: F401
from residual.kernels import RBF, Matern
from residual.model import ResidualCorrelation, DEGENERATE_P_RTOL
from residual.bruteforce import brute_force_knn
from residual.tree import CoverTree
from residual.kdtree import KDTree
from residual.ordering import maximin_order
from residual.vecchia import VecchiaNeighbors, vecchia_neighbors

__version__ = "0.1.0"

__all__ = ["RBF", "Matern", "ResidualCorrelation", "CoverTree", "KDTree", "brute_force_knn",
           "maximin_order", "vecchia_neighbors", "VecchiaNeighbors", "DEGENERATE_P_RTOL"]
