"""The command-line tool, run in-process through main(argv), plus real subprocess runs (python -m,
a SIGINT, an import from a source folder)."""

import io
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import residual
from residual.__main__ import main
from residual.cli import ProgressBar
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


def test_inducing_and_nugget_options(tmp_path, capsys):
    out_path = tmp_path / "h.npz"
    out, _ = _run_ok(["--n", "300", "--dim", "2", "--k", "5", "--n-inducing", "20",
                      "--inducing", "kmeans++", "--nugget", "0.01", "--output", str(out_path),
                      "--quiet"], capsys)
    X = np.random.default_rng(0).standard_normal((300, 2))
    meta = _check_npz(out_path, X, kernel=residual.RBF(lengthscale=1.0), k=5, n_inducing=20,
                      inducing="kmeans++", nugget=0.01)
    assert str(meta["inducing"]) == "kmeans++" and float(meta["nugget"]) == 0.01
    assert "20 kmeans++ inducing points" in out and "nugget 0.01" in out


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


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def _nan_npy(tmp_path):
    X = harness_like(50)
    X[7, 1] = np.nan
    np.save(tmp_path / "nan.npy", X)
    return str(tmp_path / "nan.npy")


def _npy(tmp_path, arr):
    np.save(tmp_path / "a.npy", arr, allow_pickle=True)
    return str(tmp_path / "a.npy")


def _pandas_csv(tmp_path, index_name=None):
    X = np.round(harness_like(40, dim=2, seed=5), 6)
    rows = [f"{i},{x},{y}" for i, (x, y) in enumerate(X)]
    # what pandas' DataFrame.to_csv() writes: the index first, its header cell empty
    return _write(tmp_path, "pd.csv", "\n".join([f"{index_name or ''},x,y"] + rows) + "\n")


@pytest.mark.parametrize("make_argv,match", [
    (lambda t: ["--input", str(t / "missing.npy")], "no such file"),
    (lambda t: ["--input", str(t / "x.txt")], ".npy or .csv"),
    (lambda t: ["--input", _write(t, "b.csv", "x,y\n1,2\n3,oops\n")],
     "line 3: value 2 is not a number: '3,oops'"),
    (lambda t: ["--input", _write(t, "b.csv", "1,2\n\n3,4,5\n")],
     "line 3 has 3 values but line 1 has 2"),
    (lambda t: ["--input", _write(t, "b.csv", "1;2\n3;4\n")],
     "line 1 is not comma-separated: '1;2'; .csv input must separate the values"),
    (lambda t: ["--input", _write(t, "b.csv", "x y\n1.5 2\n3 4\n")],
     "line 2 is not comma-separated"),
    (lambda t: ["--input", _write(t, "b.csv", "x,y,z\n1,2\n")], "the header (line 1) has 3"),
    (lambda t: ["--input", _write(t, "b.csv", "x,y\n")], "only a header line"),
    (lambda t: ["--input", _write(t, "b.csv", "# comment\n\n")], "no data lines"),
    (lambda t: ["--input", _write(t, "b.csv", "x,y\n1,2\n\n3,nan\n")],
     "NaN or inf (1 value, the first on line 4)"),
    (lambda t: ["--input", _nan_npy(t)], "NaN or inf (1 value, the first on row 8)"),
    (lambda t: ["--input", _npy(t, np.zeros((2, 2, 2)))], "n x D array"),
    (lambda t: ["--input", _npy(t, np.ones((3, 2), dtype=object))], "holds Python objects"),
    (lambda t: ["--input", _npy(t, np.ones((3, 2), dtype=complex))], "real numbers"),
    (lambda t: ["--input", _pandas_csv(t)],
     "first column looks like a row index, not a coordinate (its header cell is ''"),
    (lambda t: ["--input", _pandas_csv(t, "id")], "it counts 0, 1, ... down the rows"),
    (lambda t: ["--input", _pandas_csv(t), "--skip-columns", "3"], "leaves no columns"),
    (lambda t: ["--skip-columns", "1"], "--skip-columns applies to --input files only"),
    (lambda t: ["--n", "300", "--k", "0"], "--k must be >= 1, got 0"),
    (lambda t: ["--n", "100", "--k", "101"], "--k must be <= the number of points (100)"),
    (lambda t: ["--n", "0"], "--n and --dim must be >= 1"),
    (lambda t: ["--n", "100", "--n-inducing", "101"],
     "--n-inducing must be <= the number of points (100), got 101"),
    (lambda t: ["--n", "100", "--n-inducing", "0"], "--n-inducing must be >= 1"),
    (lambda t: ["--n", "100", "--threads", "0"], "--threads must be a non-zero integer"),
    (lambda t: ["--n", "100", "--seed", "-1"], "--seed must be >= 0"),
    (lambda t: ["--n", "100", "--dim", "2", "--lengthscale", "1,2,3"],
     "--lengthscale has 3 values but the data has D = 2"),
    (lambda t: ["--n", "100", "--lengthscale", "0"], "--lengthscale must be finite and > 0"),
    (lambda t: ["--n", "100", "--variance", "-1"], "--variance must be a finite number > 0"),
    (lambda t: ["--n", "100", "--metric", "euclidean", "--kernel", "matern32"],
     "--kernel applies only to --metric residual"),
    (lambda t: ["--n", "100", "--metric", "euclidean", "--lengthscale", "2", "--variance", "2",
                "--n-inducing", "5"],
     "--lengthscale, --variance, --n-inducing apply only to --metric residual"),
    (lambda t: ["--n", "100", "--metric", "euclidean", "--nugget", "0.1"],
     "--nugget applies only to --metric residual"),
    (lambda t: ["--n", "100", "--nugget", "-1"], "--nugget must be a finite number >= 0"),
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
    # the tool's own words: option names, never the library's arguments or NumPy's advice
    for word in ("num_threads", "n_inducing", "n_samples", "usecols", "allow_pickle", "k ="):
        assert word not in err


@pytest.mark.parametrize("argv", [["--k", "x"], ["--metric", "cosine"], ["--inducing", "grid"],
                                  ["--lengthscale", "a,b"], ["--bogus"]])
def test_argparse_errors_are_one_line(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("residual: error: ") and err.count("\n") == 1, err
    assert "usage" not in err


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"residual {residual.__version__}\n"


def test_threads_beyond_cores_warn(monkeypatch, capsys):
    monkeypatch.setattr("residual.cli.usable_cores", lambda: 1)
    out, err = _run_ok(["--n", "200", "--k", "3", "--threads", "2", "--quiet"], capsys)
    assert err == ("residual: warning: --threads 2 is more than the 1 usable cores; threads "
                   "will take turns on them (slower)\n")
    assert "n = 200" in out
    _, err = _run_ok(["--n", "200", "--k", "3", "--threads", "1", "--quiet"], capsys)
    assert err == ""


def test_small_data_reduces_the_default_inducing_points(tmp_path, capsys):
    out, _ = _run_ok(["--n", "20", "--k", "20", "--quiet", "--output", str(tmp_path / "o")],
                     capsys)
    assert "19 random inducing points (the default 200, reduced to n - 1 for n = 20)" in out
    X = np.random.default_rng(0).standard_normal((20, 3))
    meta = _check_npz(tmp_path / "o.npz", X, kernel=residual.RBF(), k=20, n_inducing=19)
    assert int(meta["n_inducing"]) == 19
    out, _ = _run_ok(["--n", "300", "--k", "3", "--quiet"], capsys)
    assert "200 random inducing points)" in out and "reduced" not in out


def test_one_dimensional_npy_is_d_1(tmp_path, capsys):
    x = np.round(harness_like(100, dim=1, seed=4)[:, 0], 6)
    np.save(tmp_path / "v.npy", x)
    np.savetxt(tmp_path / "v.csv", x[:, None], delimiter=",")
    for name in ("v.npy", "v.csv"):
        out, _ = _run_ok(["--input", str(tmp_path / name), "--k", "4", "--quiet",
                          "--output", str(tmp_path / (name + ".npz"))], capsys)
        assert "D = 1" in out
        _check_npz(tmp_path / (name + ".npz"), x[:, None], kernel=residual.RBF(), k=4)


def test_skip_columns(tmp_path, capsys):
    path = _pandas_csv(tmp_path)
    data = np.loadtxt(path, delimiter=",", skiprows=1)
    _run_ok(["--input", path, "--skip-columns", "1", "--k", "3", "--quiet",
             "--output", str(tmp_path / "a.npz")], capsys)
    _check_npz(tmp_path / "a.npz", data[:, 1:], kernel=residual.RBF(), k=3)
    out, _ = _run_ok(["--input", path, "--skip-columns", "0", "--k", "3", "--quiet"], capsys)
    assert "D = 3" in out                               # the index kept, as asked


def _interrupting_run(*args, progress, **kwargs):
    if progress is not None:                # --quiet passes none
        progress("ordering", 0, 1)
    raise KeyboardInterrupt


@pytest.mark.parametrize("flag", ["--quiet", "--progress"])
def test_interrupt_is_one_line_and_130(monkeypatch, capsys, flag):
    monkeypatch.setattr("residual.cli.vecchia_neighbors", _interrupting_run)
    assert main(["--n", "100", flag]) == 130
    out, err = capsys.readouterr()
    assert out == "" and err.endswith("residual: interrupted\n")
    if flag == "--progress":                # the open bar line is ended first
        bar_line, last = err.split("\n")[-3:-1]
        assert bar_line.startswith("\rordering [") and last == "residual: interrupted"
    else:
        assert err == "residual: interrupted\n"


def test_interrupt_by_signal_exits_130(tmp_path):
    # a real SIGINT in the middle of a stage: no traceback, one line, the shell's 130
    code = ("import os, signal, sys, time\n"
            "import residual.cli as cli\n"
            "def run(*a, **k):\n"
            "    os.kill(os.getpid(), signal.SIGINT)\n"
            "    time.sleep(30)\n"
            "cli.vecchia_neighbors = run\n"
            "sys.exit(cli.main(['--n', '50', '--quiet']))\n")
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 130
    assert proc.stderr == "residual: interrupted\n" and proc.stdout == ""


def _redraws(stream):
    return [part.split()[-2] for part in stream.getvalue().split("\r")[1:]]


def test_progress_clock_ticks_while_a_stage_runs():
    stream = io.StringIO()
    bar = ProgressBar(stream, force=True)
    bar.TICK = 0.01
    bar("ordering", 0, 1)                   # a stage that reports nothing until it ends
    deadline = time.monotonic() + 10
    while len(_redraws(stream)) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    clock = [float(s) for s in _redraws(stream)]
    assert len(clock) >= 4 and clock == sorted(clock) and clock[-1] > clock[0]
    bar("ordering", 1, 1)
    drawn = stream.getvalue()
    last = drawn.split("\r")[-1]
    assert last.startswith("ordering [" + "#" * 30 + "] 1/1") and last.endswith(" s\n")
    time.sleep(0.1)                         # between stages nothing is redrawn
    assert stream.getvalue() == drawn
    bar.close()
    assert not bar._ticker.is_alive() and stream.getvalue() == drawn


def test_no_ticking_off_a_terminal():
    stream = io.StringIO()                  # not a terminal, not forced: plain lines only
    bar = ProgressBar(stream)
    bar.TICK = 0.01
    bar("model", 0, 1)
    time.sleep(0.05)
    assert stream.getvalue() == "" and bar._ticker is None
    bar("model", 1, 1)
    bar.close()
    assert stream.getvalue().startswith("model    done in ")


def test_import_from_a_source_folder_says_what_to_do(tmp_path):
    # the source folder (no compiled modules) first on the path, as when Python runs from
    # the repository's top folder; -S keeps any editable-install hook out of the way
    src = os.path.join(os.path.dirname(residual.__file__))
    os.mkdir(tmp_path / "residual")
    for name in os.listdir(src):
        if name.endswith(".py"):
            shutil.copy(os.path.join(src, name), tmp_path / "residual" / name)
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    for argv in (["-c", "import residual"], ["-m", "residual", "--version"]):
        proc = subprocess.run([sys.executable, "-S", *argv], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("ImportError: residual was imported from")
        assert "without its compiled modules" in last and "Run from another folder" in last
        assert "pip install --no-build-isolation -e ." in last
        assert "circular" not in proc.stderr


def test_python_dash_m(tmp_path):
    # run from tmp_path: in the repository root `import residual` would find the source folder
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, "-m", "residual", "--n", "300", "--k", "5",
                           "--quiet"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "n = 300" in proc.stdout and proc.stderr == ""
