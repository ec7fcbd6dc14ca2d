"""Exact k nearest neighbours on a parallel compressed cover tree.

Two metrics: Euclidean, and the residual-correlation distance used to pick Vecchia conditioning
sets in Gaussian-process approximations (Vecchia + inducing points).
"""

# first: it sets OpenMP's wait policy, which libgomp reads when a compiled module loads it
from residual import _parallel  # noqa: F401
from residual.kernels import RBF, Matern
from residual.model import ResidualCorrelation, DEGENERATE_P_RTOL
from residual.bruteforce import brute_force_knn
from residual.tree import CoverTree
from residual.ordering import maximin_order
from residual.vecchia import VecchiaNeighbors, vecchia_neighbors

__version__ = "0.1.0"

__all__ = ["RBF", "Matern", "ResidualCorrelation", "CoverTree", "brute_force_knn",
           "maximin_order", "vecchia_neighbors", "VecchiaNeighbors", "DEGENERATE_P_RTOL"]
