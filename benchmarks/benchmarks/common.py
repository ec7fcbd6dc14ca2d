"""Shared data for the asv benchmarks (seeded, as the standard harness of DESIGN.md section 6)."""

import numpy as np


def harness_points(n, dim, seed=0):
    return np.random.default_rng(seed).standard_normal((n, dim))
