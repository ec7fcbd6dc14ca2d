"""Runs covertreex (a peer) on data handed over in an .npz file and prints JSON timings.

covertreex 0.4.5 ships only a CPython 3.12 wheel, so compare.py runs this file with a Python
3.12 interpreter from its own virtual environment:

    python3.12 -m venv ~/.venvs/covertreex && ~/.venvs/covertreex/bin/pip install covertreex numba
    COVERTREEX_PYTHON=~/.venvs/covertreex/bin/python python benchmarks/compare.py --case build

Input npz: X (n, D), V (n, m), p (n,); argv: path, engine, [k, sample_rows...].
Output: {"build_s": ..., "query_s": ..., "rows": [...], "idx": [[...]]}.
"""

import json
import sys
import time

import numpy as np


def main():
    path, engine = sys.argv[1], sys.argv[2]
    data = np.load(path)
    from covertreex import cover_tree

    t = time.perf_counter()
    # hand it our V and p (honoured by rust-hilbert) so both answer the same question
    tree = cover_tree(data["X"], v_matrix=data["V"], p_diag=data["p"], engine=engine)
    build = time.perf_counter() - t
    out = {"build_s": build}
    if len(sys.argv) > 3:
        k = int(sys.argv[3])
        rows = np.asarray(data["rows"], dtype=np.int64)
        t = time.perf_counter()
        res = tree.knn(k, queries=rows, predecessor_mode=True, return_distances=True)
        out["query_s"] = time.perf_counter() - t
        idx = res[0] if isinstance(res, tuple) else res
        out["idx"] = np.asarray(idx).tolist()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
