"""The command-line tool, run in-process through main(argv), plus one real subprocess run."""

import os
import subprocess
import sys

import numpy as np
import pytest

import residual
from residual.__main__ import main
from residual.vecchia import vecchia_neighbors
from conftest import harness_like


def _run_ok(argv, capsys):
    status = main(argv)
    out, err = capsys.readouterr()
    assert status == 0, err
    return out, err


def _check_npz(path, X, **kwargs):
    with np.load(path, allow_pickle=False) as f:
        res = vecchia_neighbors(X, **kwargs)
        np.testing.assert_array_equal(f["order"], res.order)
        np.testing.assert_array_equal(f["neighbors"], res.neighbors)
        np.testing.assert_array_equal(f["distances"], res.distances)
        assert int(f["n"]) == X.shape[0] and int(f["dim"]) == X.shape[1]
        assert int(f["k"]) == kwargs["k"] and str(f["metric"]) == kwargs.get("metric",
                                                                              "residual")
        return {name: f[name] for name in f.files}


def test_harness(tmp_path, capsys):
    out_path = tmp_path / "h.npz"
    out, err = _run_ok(["--n", "500", "--dim", "2", "--k", "7", "--n-inducing", "40",
                        "--seed", "3", "--output", str(out_path), "--quiet"], capsys)
    X = np.random.default_rng(0).standard_normal((500, 2))
    meta = _check_npz(out_path, X, kernel=residual.RBF(lengthscale=1.0), k=7, n_inducing=40,
                      seed=3)
    assert str(meta["kernel"]).startswith("RBF(") and int(meta["n_inducing"]) == 40
    assert str(meta["ordering"]) == "random" and str(meta["method"]) == "brute"
    assert err == ""                                    # --quiet: nothing on stderr
    for word in ("n = 500", "D = 2", "k = 7", "model", "ordering", "build", "query", "total",
                 "distance evaluations", "neighbours per second", str(out_path)):
        assert word in out


def test_npy_input_euclidean(tmp_path, capsys):
    X = harness_like(400, dim=3, seed=1)
    np.save(tmp_path / "x.npy", X)
    _run_ok(["--input", str(tmp_path / "x.npy"), "--metric", "euclidean", "--k", "5",
             "--ordering", "natural", "--output", str(tmp_path / "o"), "--quiet"], capsys)
    _check_npz(tmp_path / "o.npz", X, k=5, metric="euclidean", ordering="natural")


def test_csv_input_with_header_and_kernel_options(tmp_path, capsys):
    X = np.round(harness_like(300, dim=2, seed=2), 6)
    path = tmp_path / "x.csv"
    np.savetxt(path, X, delimiter=",", header="lon,lat", comments="")
    _, err = _run_ok(["--input", str(path), "--kernel", "matern32", "--lengthscale", "0.5,2",
                      "--variance", "2", "--k", "4", "--n-inducing", "30",
                      "--output", str(tmp_path / "o.npz")], capsys)
    kern = residual.Matern(1.5, lengthscale=[0.5, 2.0], variance=2.0)
    _check_npz(tmp_path / "o.npz", np.loadtxt(path, delimiter=",", skiprows=1), kernel=kern,
               k=4, n_inducing=30)
    # stderr is not a terminal here: one plain line per finished stage, no \r
    assert "\r" not in err and [ln.split()[0] for ln in err.splitlines()] == [
        "model", "ordering", "build", "query"]


def test_csv_without_header(tmp_path, capsys):
    X = np.round(harness_like(200, dim=2, seed=3), 6)
    np.savetxt(tmp_path / "x.csv", X, delimiter=",")
    _run_ok(["--input", str(tmp_path / "x.csv"), "--k", "3", "--n-inducing", "20", "--quiet",
             "--output", str(tmp_path / "o.npz")], capsys)
    _check_npz(tmp_path / "o.npz", X, kernel=residual.RBF(), k=3, n_inducing=20)


def test_forced_progress_bar(capsys):
    _, err = _run_ok(["--n", "300", "--k", "3", "--n-inducing", "20", "--progress"], capsys)
    assert "\r" in err and "300/300" in err and "[" + "#" * 30 + "]" in err


def _bad_csv(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("x,y\n1,2\n3,oops\n")
    return str(p)


def _nan_npy(tmp_path):
    X = harness_like(50)
    X[7, 1] = np.nan
    np.save(tmp_path / "nan.npy", X)
    return str(tmp_path / "nan.npy")


def _nan_csv(tmp_path):
    p = tmp_path / "nan.csv"
    p.write_text("1,2\n3,nan\n")
    return str(p)


def _one_d(tmp_path):
    np.save(tmp_path / "v.npy", np.arange(10.0))
    return str(tmp_path / "v.npy")


@pytest.mark.parametrize("make_argv,match", [
    (lambda t: ["--input", str(t / "missing.npy")], "no such file"),
    (lambda t: ["--input", _bad_csv(t)], "could not be read"),
    (lambda t: ["--input", _nan_npy(t)], "NaN or inf"),
    (lambda t: ["--input", _nan_csv(t)], "NaN or inf"),
    (lambda t: ["--input", _one_d(t)], "2-D"),
    (lambda t: ["--input", str(t / "x.txt")], ".npy or .csv"),
    (lambda t: ["--n", "300", "--k", "0"], "k must be >= 1"),
    (lambda t: ["--n", "0"], "--n and --dim must be >= 1"),
    (lambda t: ["--n", "100"], "n_inducing must be <= 100"),
    (lambda t: ["--n", "100", "--dim", "2", "--lengthscale", "1,2,3"], "lengthscales"),
    (lambda t: ["--n", "100", "--variance", "-1", "--n-inducing", "5"], "variance"),
    (lambda t: ["--input", _nan_npy(t), "--n", "10"], "cannot be used with --input"),
    (lambda t: ["--n", "100", "--output", str(t / "nodir" / "o.npz")], "does not exist"),
])
def test_errors_exit_2_with_one_line(tmp_path, capsys, make_argv, match):
    status = main(make_argv(tmp_path) + ["--quiet"])
    out, err = capsys.readouterr()
    assert status == 2
    assert err.startswith("residual: error: ") and err.count("\n") == 1, err
    assert match in err
    assert "Traceback" not in err and out == ""


@pytest.mark.parametrize("argv", [["--k", "x"], ["--metric", "cosine"],
                                  ["--lengthscale", "a,b"], ["--bogus"]])
def test_argparse_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "residual: error:" in capsys.readouterr().err


def test_python_dash_m(tmp_path):
    # run from tmp_path: in the repository root `import residual` would find the source folder
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, "-m", "residual", "--n", "300", "--k", "5",
                           "--quiet"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "n = 300" in proc.stdout and proc.stderr == ""
