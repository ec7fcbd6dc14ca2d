"""Shared data for the asv benchmarks: the standard harness (X ~ N(0, I_3), RBF l = 1), seeded."""

import numpy as np


def harness_points(n, dim, seed=0):
    return np.random.default_rng(seed).standard_normal((n, dim))
