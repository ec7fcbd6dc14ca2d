"""README.md runs as written: every ```python block and every `residual ...` command line's
options; it and docs/benchmarks.md point only to files that are in the repository."""

import os
import re
import shlex

import pytest

from residual.cli import build_parser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")


def _blocks(language):
    with open(README, encoding="utf-8") as f:
        text = f.read()
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)


def _python_blocks():
    blocks = _blocks("python")
    assert len(blocks) >= 3, "README lost its examples"
    return [pytest.param(code, id=code.split("\n")[0][:40]) for code in blocks]


# the Dask block's local cluster moves its dashboard elsewhere if another one holds the port
@pytest.mark.filterwarnings("ignore:Port 8787 is already in use")
@pytest.mark.parametrize("code", _python_blocks())
def test_python_block_runs(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)             # blocks may write files (tree.npz, ...)
    exec(compile(code, README, "exec"), {"__name__": "__readme__"})


def _command_lines():
    lines = []
    for block in _blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] == "residual" and words[1:] not in (["--help"],
                                                                       ["--version"]):
                lines.append(words[1:])
    assert lines, "README shows no residual command line"
    return lines


@pytest.mark.parametrize("argv", _command_lines(), ids=" ".join)
def test_command_line_options_exist(argv):
    build_parser().parse_args(argv)         # an unknown option or bad value exits 2


@pytest.mark.parametrize("doc", ["README.md", "docs/benchmarks.md"])
def test_files_it_points_to_exist(doc):
    with open(os.path.join(ROOT, doc), encoding="utf-8") as f:
        text = f.read()
    # links are relative to the document; paths in prose, commands and the layout list
    # (residual/..., benchmarks/..., ...) to the repository's top folder
    links = [os.path.join(os.path.dirname(doc), p)
             for p in re.findall(r"\]\(([^)#][^)]*)\)", text) if not p.startswith("http")]
    paths = re.findall(r"(?<![\w/.~])((?:residual|benchmarks|docs|tests|\.ci)/[\w./-]*\w)",
                       text)
    missing = [p for p in links + paths if not os.path.exists(os.path.join(ROOT, p))]
    assert links and paths and missing == []


def test_ci_runs_the_quick_start_test_command():
    quick_start = _blocks("bash")[0]
    commands = [ln for ln in quick_start.splitlines() if ln and not ln.startswith("#")]
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as f:
        ci = [ln for ln in f.read().splitlines() if ln and not ln.startswith("#")]
    assert commands[0].endswith("&& pytest") and ci[-1] == commands[0]
