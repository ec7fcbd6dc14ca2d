"""The invariant checker (residual/_invariants.py): sound trees pass, each broken rule is named."""

import numpy as np
import pytest

import residual
from conftest import harness_like


def _euclidean():
    X = harness_like(300, seed=9)
    X[-10:] = X[:10]                                   # exact duplicates: aliases
    return residual.CoverTree(X)


def _residual():
    model = residual.ResidualCorrelation.from_kernel(
        harness_like(300, seed=10), residual.Matern(1.5, lengthscale=0.6), n_inducing=30)
    return residual.CoverTree(model)


def _raise_child(tree):
    tree.levels[tree.children[0]] = tree.levels[tree.root]


def _halve_root_radius(tree):
    tree.radii[tree.root] *= 0.5


def _bump_min_index(tree):
    tree.min_index[tree.children[-1]] += 1


def _shift_parent_distance(tree):
    tree.parent_distances[tree.insertion_order[-1]] += 0.1


def _lift_deep_node(tree):
    deep = tree.insertion_order[-1]
    tree.levels[deep] = tree.levels[tree.parents[deep]] - 1    # too high to be separated


def _move_alias(tree):
    alias = np.nonzero(tree.alias_of >= 0)[0][0]
    other = tree.insertion_order[tree.insertion_order != tree.alias_of[alias]][-1]
    tree.alias_of[alias] = other                                # a node it is not equal to


_BREAKS = {"I1|I2": _raise_child, "I5": _halve_root_radius, "I7": _bump_min_index,
           "I6": _shift_parent_distance, "I3|I4": _lift_deep_node}


@pytest.mark.parametrize("build", [_euclidean, _residual])
def test_sound_trees_pass(build):
    build().check_invariants(pairwise=True)


@pytest.mark.parametrize("build", [_euclidean, _residual])
@pytest.mark.parametrize("rule", list(_BREAKS))
def test_checker_names_the_broken_rule(build, rule):
    tree = build()
    _BREAKS[rule](tree)
    with pytest.raises(AssertionError, match=rule):
        tree.check_invariants(pairwise=True)


def test_alias_away_from_its_node():
    tree = _euclidean()
    _move_alias(tree)
    with pytest.raises(AssertionError, match="I0: aliases not at distance 0"):
        tree.check_invariants()


def test_tol_widens_the_distance_checks():
    tree = _euclidean()
    leaf = tree.insertion_order[-1]
    tree.parent_distances[leaf] += 1e-4
    with pytest.raises(AssertionError, match="I6"):
        tree.check_invariants()
    tree.check_invariants(tol=1e-2)          # |d^2 - (d + 1e-4)^2| < 1e-2 for d < 49


def test_separation_pass_only_when_asked():
    """pairwise=False skips I4; True (and None for a small tree) checks every node pair."""
    tree = _euclidean()
    calls = []
    original = tree._distances

    def counting(a, b, nt=1):
        calls.append(np.size(a))
        return original(a, b, nt)

    tree._distances = counting
    counts = {}
    for pairwise in (False, True, None):
        calls.clear()
        tree.check_invariants(pairwise=pairwise)
        counts[pairwise] = sum(calls)
    nodes = int((tree.alias_of < 0).sum())
    assert counts[True] - counts[False] == nodes * (nodes - 1) // 2
    assert counts[None] == counts[True]
