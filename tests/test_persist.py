"""save/load (.npz) and pickle of trees, models and kernels: identical answers, clear errors."""

import multiprocessing
import pathlib
import pickle
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest

import residual
from residual import _persist
from conftest import harness_like


def _with_duplicates(n, seed):
    X = harness_like(n, seed=seed)
    X[-20:] = X[:20]                                   # exact duplicates: aliases in the tree
    return X


def _euclidean():
    return residual.CoverTree(_with_duplicates(600, seed=1))


def _rbf_ard():
    model = residual.ResidualCorrelation.from_kernel(
        _with_duplicates(500, seed=2), residual.RBF(lengthscale=[0.6, 1.0, 1.4], variance=1.3),
        n_inducing=60, seed=3)
    return residual.CoverTree(model, batch_size=64)


def _matern():
    model = residual.ResidualCorrelation.from_kernel(
        _with_duplicates(400, seed=4), residual.Matern(2.5, lengthscale=0.8), n_inducing=40)
    return residual.CoverTree(model)


def _kmeans_nugget():
    model = residual.ResidualCorrelation.from_kernel(
        _with_duplicates(400, seed=12), residual.Matern(1.5, lengthscale=[0.7, 1.0, 1.3]),
        n_inducing=40, inducing="kmeans++", nugget=1e-2)
    return residual.CoverTree(model)


_TREES = {"euclidean": _euclidean, "rbf_ard": _rbf_ard, "matern": _matern,
          "kmeans_nugget": _kmeans_nugget}


@pytest.fixture(scope="module", params=list(_TREES))
def tree(request):
    return _TREES[request.param]()


@pytest.fixture(scope="module")
def small_files(tmp_path_factory):
    """A small saved Euclidean tree and residual tree, to be copied and damaged."""
    d = tmp_path_factory.mktemp("small")
    model = residual.ResidualCorrelation.from_kernel(harness_like(200, seed=5), residual.RBF(),
                                                     n_inducing=20)
    return {"euclidean": residual.CoverTree(harness_like(200, seed=6)).save(d / "euclid"),
            "residual": residual.CoverTree(model).save(d / "resid"),
            "model": model.save(d / "model")}


def _queries(tree, k=7):
    """Every query mode; new points only where the tree can take them."""
    out = [tree.query(k=k), tree.query(k=k, predecessors=True)]
    if tree.model is None or tree.model.L is not None:
        out.append(tree.query(harness_like(30, seed=9) * 1.2, k=k))
    return out


def _assert_same_answers(a, b):
    for (da, ia), (db, ib) in zip(_queries(a), _queries(b), strict=True):
        assert da.tobytes() == db.tobytes()            # bitwise, not merely close
        assert ia.tobytes() == ib.tobytes()


def _assert_same_tree(a, b):
    for key in ("levels", "parents", "parent_distances", "alias_of", "radii", "min_index",
                "children_ptr", "children", "aliases_ptr", "aliases", "insertion_order"):
        assert getattr(a, key).tobytes() == getattr(b, key).tobytes(), key
    assert (a.root, a.height, a._slack, a.residual) == (b.root, b.height, b._slack, b.residual)
    assert (a.batch_size, a.seed, a.schedule) == (b.batch_size, b.seed, b.schedule)
    assert b.stats["batches"] == a.stats["batches"]
    assert b.stats["seconds"] == a.stats["seconds"]


def _assert_same_model(a, b):
    for key in ("X", "V", "p_diag", "_xs", "_inv_sqrt_p", "_centre", "degenerate"):
        assert getattr(a, key).tobytes() == getattr(b, key).tobytes(), key
    assert a.kernel == b.kernel and repr(a.kernel) == repr(b.kernel)
    assert a.jitter == b.jitter and a.nugget == b.nugget
    if a.L is None:
        assert b.L is None and b.inducing is None and b.inducing_points is None
    else:
        assert a.L.tobytes() == b.L.tobytes()
        assert (a.inducing is None) == (b.inducing is None)
        assert a.inducing is None or a.inducing.tobytes() == b.inducing.tobytes()
        for key in ("inducing_points", "_us"):
            assert getattr(a, key).tobytes() == getattr(b, key).tobytes(), key


# -- round trips ----------------------------------------------------------------------------------

def test_tree_save_load(tree, tmp_path):
    path = tree.save(tmp_path / "tree.npz")
    assert path == str(tmp_path / "tree.npz")
    loaded = residual.CoverTree.load(path)
    _assert_same_tree(tree, loaded)
    if tree.residual:
        _assert_same_model(tree.model, loaded.model)
        assert loaded.model is not tree.model
    loaded.check_invariants()
    _assert_same_answers(tree, loaded)


def test_tree_pickle(tree):
    loaded = pickle.loads(pickle.dumps(tree))
    _assert_same_tree(tree, loaded)
    loaded.check_invariants()
    _assert_same_answers(tree, loaded)


@pytest.mark.parametrize("kind", ["euclidean", "residual", "model"])
def test_pickle_state_is_the_file(small_files, kind):
    """A pickle and a saved file describe an object by the same entries, header included."""
    path = small_files[kind]
    cls = residual.ResidualCorrelation if kind == "model" else residual.CoverTree
    state = cls.load(path).__getstate__()
    with np.load(path) as saved:
        assert sorted(state) == sorted(saved.files)
        for key in saved.files:
            assert state[key].dtype == saved[key].dtype, key
            assert state[key].tobytes() == saved[key].tobytes(), key


def test_pickled_tree_queries_in_a_worker_process():
    tree = _rbf_ard()
    # spawn: the tree really travels as a pickle, and no OpenMP state is inherited by fork
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        got = pool.submit(residual.CoverTree.query, tree, None, 7, predecessors=True).result()
    want = tree.query(k=7, predecessors=True)
    assert got[0].tobytes() == want[0].tobytes() and got[1].tobytes() == want[1].tobytes()


def test_npz_suffix_and_pathlike(tmp_path):
    tree = residual.CoverTree(harness_like(200, seed=7))
    path = tree.save(str(tmp_path / "plain"))               # no suffix: appended, as np.savez
    assert path == str(tmp_path / "plain.npz") and pathlib.Path(path).is_file()
    for where in (tmp_path / "plain", str(tmp_path / "plain"), pathlib.Path(path)):
        _assert_same_tree(tree, residual.CoverTree.load(where))


@pytest.mark.parametrize("kernel", [residual.RBF(0.7, variance=2.0),
                                    residual.Matern(0.5, lengthscale=[0.5, 2.0, 1.0]),
                                    residual.Matern(1.5, lengthscale=1.2)])
@pytest.mark.parametrize("how", [{}, {"inducing": "kmeans++"}, {"nugget": 0.3},
                                 {"inducing": "coordinates", "nugget": 1e-4}], ids=repr)
def test_model_save_load_and_pickle(kernel, how, tmp_path):
    if how.get("inducing") == "coordinates":
        how = {**how, "inducing": np.random.default_rng(0).uniform(-2, 2, size=(30, 3))}
    model = residual.ResidualCorrelation.from_kernel(_with_duplicates(300, seed=8), kernel,
                                                     n_inducing=30, jitter=1e-5, **how)
    Y = harness_like(20, seed=10)
    for loaded in (residual.ResidualCorrelation.load(model.save(tmp_path / "m")),
                   pickle.loads(pickle.dumps(model))):
        _assert_same_model(model, loaded)
        for got, want in zip(loaded._new_points(Y), model._new_points(Y)):
            assert got.tobytes() == want.tobytes()
        d, i = residual.brute_force_knn(loaded, 5)
        dw, iw = residual.brute_force_knn(model, 5)
        assert d.tobytes() == dw.tobytes() and i.tobytes() == iw.tobytes()


@pytest.mark.parametrize("nugget", [0.0, 0.02])
def test_user_supplied_factors(nugget, tmp_path):
    base = residual.ResidualCorrelation.from_kernel(harness_like(250, seed=11),
                                                    residual.Matern(2.5), n_inducing=25)
    model = residual.ResidualCorrelation(base.X, base.kernel, V=base.V, p_diag=base.p_diag,
                                         nugget=nugget)
    tree = residual.CoverTree(model)
    loaded = residual.CoverTree.load(tree.save(tmp_path / "user"))
    _assert_same_model(model, loaded.model)
    _assert_same_answers(tree, loaded)
    with pytest.raises(ValueError, match="from_kernel"):        # as the original: no L
        loaded.query(harness_like(3), k=2)
    _assert_same_model(model, pickle.loads(pickle.dumps(model)))


def _as_version_1(path, tmp_path, prefix=""):
    """The file version 1 wrote for the same object: no nugget, no inducing coordinates."""
    return _edit(path, tmp_path, format_version=np.int64(1), **{prefix + "nugget": None,
                                                                 prefix + "inducing_points": None})


def test_version_1_files_still_load(tmp_path):
    X = _with_duplicates(300, seed=13)
    model = residual.ResidualCorrelation.from_kernel(X, residual.RBF(0.8), n_inducing=30)
    old = residual.ResidualCorrelation.load(_as_version_1(model.save(tmp_path / "m"), tmp_path))
    _assert_same_model(model, old)
    np.testing.assert_array_equal(old.inducing_points, X[model.inducing])
    tree = residual.CoverTree(model)
    old_tree = residual.CoverTree.load(_as_version_1(tree.save(tmp_path / "t"), tmp_path,
                                                     "model_"))
    _assert_same_model(model, old_tree.model)
    _assert_same_answers(tree, old_tree)
    # version 1 had no nugget: a file that claims version 1 is read without one
    noisy = residual.ResidualCorrelation.from_kernel(X, residual.RBF(0.8), n_inducing=30,
                                                     nugget=0.1)
    assert residual.ResidualCorrelation.load(
        _as_version_1(noisy.save(tmp_path / "n"), tmp_path)).nugget == 0.0


def test_version_2_entries_are_checked(tmp_path):
    X = harness_like(200, seed=14)
    rows = residual.ResidualCorrelation.from_kernel(X, residual.RBF(), n_inducing=20)
    path = rows.save(tmp_path / "rows")
    pts = np.load(path)["inducing_points"]
    for changes, match in [
        ({"nugget": None}, "'nugget' is missing"),
        ({"nugget": np.float64(-1.0)}, "'nugget' must be a finite number >= 0"),
        ({"inducing_points": None}, "'inducing_points' is missing"),
        ({"inducing_points": pts[:, :2]}, r"'inducing_points' has shape \(20, 2\)"),
        ({"inducing_points": pts + 1.0}, "'inducing_points' does not match the rows"),
        ({"inducing": None, "inducing_points": pts[:-1]}, "'inducing_points' has shape"),
    ]:
        _refused(_edit(path, tmp_path, **changes), match, residual.ResidualCorrelation)
    # a version-1 file needs its inducing rows
    _refused(_edit(_as_version_1(path, tmp_path), tmp_path, inducing=None), "'inducing' is "
             "missing", residual.ResidualCorrelation)
    # coordinates alone (no rows) are a complete version-2 model
    coords = residual.ResidualCorrelation.load(_edit(path, tmp_path, inducing=None))
    assert coords.inducing is None and coords._us.tobytes() == rows._us.tobytes()


def test_single_point_tree(tmp_path):
    tree = residual.CoverTree(np.ones((1, 2)))
    loaded = residual.CoverTree.load(tree.save(tmp_path / "one"))
    _assert_same_tree(tree, loaded)
    loaded.check_invariants()
    assert loaded.query(np.zeros((1, 2)), k=1)[1].tolist() == [[0]]


@pytest.mark.parametrize("kernel", [residual.RBF(), residual.RBF([1.0, 2.0], 0.5),
                                    residual.Matern(0.5), residual.Matern(2.5, [0.3, 3.0], 4.0)])
def test_kernels_pickle(kernel):
    back = pickle.loads(pickle.dumps(kernel))
    assert back == kernel and repr(back) == repr(kernel) and back._code == kernel._code
    X = harness_like(20, dim=2)
    assert back(X).tobytes() == kernel(X).tobytes()


# -- errors ---------------------------------------------------------------------------------------

def _copy(src, tmp_path, name="copy.npz"):
    dst = tmp_path / name
    dst.write_bytes(pathlib.Path(src).read_bytes())
    return dst


def _edit(src, tmp_path, **changes):
    """A copy of the saved file with entries replaced (None deletes the entry)."""
    arrays = dict(np.load(src))
    for key, value in changes.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    dst = tmp_path / "edited.npz"
    np.savez(dst, **arrays)
    return dst


def _refused(path, match, cls=residual.CoverTree):
    with pytest.raises(ValueError, match=match) as info:
        cls.load(path)
    assert str(path) in str(info.value)                     # the message names the file
    return info


def test_missing_file_and_directory(tmp_path):
    _refused(tmp_path / "nothing.npz", "No such file")
    _refused(tmp_path, "not a readable|Is a directory")


def test_truncated_file(small_files, tmp_path):
    for kind in ("euclidean", "residual"):
        dst = _copy(small_files[kind], tmp_path)
        data = dst.read_bytes()
        dst.write_bytes(data[:len(data) // 2])
        _refused(dst, "not a readable .npz")


@pytest.mark.parametrize("where", [0.3, 0.5, 0.8])
def test_overwritten_bytes(small_files, tmp_path, where):
    dst = _copy(small_files["residual"], tmp_path)
    data = bytearray(dst.read_bytes())
    mid = int(len(data) * where)
    data[mid:mid + 16] = bytes(255 - b for b in data[mid:mid + 16])
    dst.write_bytes(bytes(data))
    _refused(dst, "not a readable .npz")


def test_files_that_are_not_ours(small_files, tmp_path):
    text = tmp_path / "notes.npz"
    text.write_text("just some text\n" * 50)
    _refused(text, "not a readable .npz")
    npy = tmp_path / "array.npy"
    np.save(npy, np.arange(10))
    _refused(npy, "single .npy array")
    other = tmp_path / "other.npz"
    np.savez(other, a=np.arange(3))
    _refused(other, "not a residual file")
    _refused(small_files["model"],
             r"holds 'residual.ResidualCorrelation'.*use ResidualCorrelation.load")
    _refused(small_files["euclidean"], "holds 'residual.CoverTree'",
             cls=residual.ResidualCorrelation)


@pytest.mark.parametrize("changes, match", [
    ({"format_version": np.int64(_persist.FORMAT_VERSION + 1)}, "newer"),
    ({"format_version": np.int64(0)}, "unknown format version"),
    ({"format_version": np.float64(1.0)}, "'format_version' has dtype float64"),
    ({"format_name": np.asarray("someone.Else")}, "holds 'someone.Else'"),
    ({"format_version": None}, "'format_version' is missing"),
])
def test_header_problems(small_files, tmp_path, changes, match):
    _refused(_edit(small_files["euclidean"], tmp_path, **changes), match)


@pytest.mark.parametrize("kind, key", [
    ("euclidean", "levels"), ("euclidean", "children"), ("euclidean", "X"),
    ("euclidean", "stats"), ("residual", "model_L"), ("residual", "model_kernel_name"),
    ("residual", "model_V"), ("residual", "radii"),
])
def test_missing_entry(small_files, tmp_path, kind, key):
    _refused(_edit(small_files[kind], tmp_path, **{key: None}), f"'{key}' is missing")


def _bad_values(arrays):
    """Hand edits that must be refused, each with the expected message."""
    n = arrays["levels"].shape[0]
    kids = arrays["children"]
    cycle = arrays["parents"].copy()
    a, b = kids[-1], kids[-2]                          # two leaves at the bottom: a 2-cycle
    cycle[a], cycle[b] = b, a
    return [
        ({"levels": arrays["levels"][:-1]}, r"'levels' has shape \(199,\), expected \(200,\)"),
        ({"levels": arrays["levels"].astype(np.float64)}, "'levels' has dtype float64"),
        ({"radii": arrays["radii"].reshape(1, n)}, "'radii' has shape"),
        ({"model_V": arrays["model_V"][:-1]},
         r"'model_V' has shape \(199, 20\), expected \(200, \*\)"),
        ({"model_X": arrays["model_X"].astype(np.int32)}, "'model_X' has dtype int32"),
        ({"parents": np.where(arrays["parents"] >= 0, n, -1)}, "'parents' has values outside"),
        ({"min_index": -arrays["min_index"] - 1}, "'min_index' has values outside"),
        ({"root": np.int64(n)}, "'root' must be <= 199, got 200"),
        ({"children": np.concatenate([kids[:1], kids[:-1]])}, "'children' does not match"),
        ({"children_ptr": arrays["children_ptr"][:-1]}, "'children_ptr' does not match"),
        ({"parents": cycle}, "level is not below its parent"),
        ({"radii": np.full(n, np.nan)}, "'radii' contains NaN"),
        ({"parent_distances": -arrays["parent_distances"] - 1}, "negative distances"),
        ({"insertion_order": arrays["insertion_order"][:-1]}, "'insertion_order' has shape"),
        ({"metric": np.asarray("manhattan")}, "'metric' is 'manhattan'"),
        ({"stats": np.asarray("{not json")}, "Expecting"),
        ({"model_p_diag": -arrays["model_p_diag"]}, "'model_p_diag' has negative"),
        ({"model_inducing": arrays["model_inducing"] + n}, "'model_inducing' has values"),
        ({"model_L": -arrays["model_L"]}, "not a Cholesky factor"),
        ({"model_kernel_lengthscale": np.array([1.0, 2.0])}, "2 lengthscales"),
        ({"model_kernel_name": np.asarray("Matern"), "model_kernel_nu": np.float64(2.0)},
         "nu must be one of"),
        ({"model_kernel_name": np.asarray("Matern")}, "'model_kernel_nu' is missing"),
        ({"model_kernel_name": np.asarray("Periodic")}, "'model_kernel_name' is 'Periodic'"),
    ]


def test_inconsistent_entries(small_files, tmp_path):
    arrays = dict(np.load(small_files["residual"]))
    for changes, match in _bad_values(arrays):
        _refused(_edit(small_files["residual"], tmp_path, **changes), match)


def test_bad_pickle_state():
    tree = residual.CoverTree(harness_like(50))
    state = tree.__getstate__()
    state["parents"] = state["parents"][:-1]
    with pytest.raises(ValueError, match="pickled residual.CoverTree.*'parents' has shape"):
        pickle.loads(pickle.dumps(tree)).__setstate__(state)
    fresh = residual.CoverTree.__new__(residual.CoverTree)
    with pytest.raises(ValueError, match="not a dict"):
        fresh.__setstate__(None)
