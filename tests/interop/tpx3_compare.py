"""Compare a stemflow recording of an ASI TPX3 scan with the stream's CSR reference.

Usage: tpx3_compare.py REFERENCE.npz RECORDING.hspy

The reference holds the scan's CSR arrays (``indptr``, ``indices``, ``values``,
``nav_shape``, ``sig_shape``), written by LiberTEM's serializer with the stream. The
recording is what ``stemflow acquire --detector tpx3`` wrote. Prints one JSON object:
frame count, the per-frame sums and the summed frame, each compared exactly, and whether
the recorded CSR rows equal the reference's. Exits 1 when anything differs.
"""

from __future__ import annotations

import json
import sys

import h5py
import numpy as np
import scipy.sparse


def main() -> int:
    ref = np.load(sys.argv[1])
    nav = tuple(int(x) for x in ref["nav_shape"])
    sig = tuple(int(x) for x in ref["sig_shape"])
    n = int(np.prod(nav))
    m = scipy.sparse.csr_matrix(
        (ref["values"], ref["indices"], ref["indptr"]), shape=(n, int(np.prod(sig)))
    )
    want_frame_sums = np.asarray(m.sum(axis=1)).ravel().astype(np.float64)
    want_sum = np.asarray(m.sum(axis=0)).ravel().astype(np.float64).reshape(sig)
    out: dict[str, object] = {"frames": n, "nav_shape": nav, "sig_shape": sig}
    with h5py.File(sys.argv[2], "r") as f:
        sumsig = f["/entry/results/sum_sig/intensity"][()].ravel()
        total = f["/entry/results/sum/intensity"][()]
        out["frame_sums_equal"] = bool(np.array_equal(sumsig, want_frame_sums))
        out["sum_equal"] = bool(np.array_equal(total, want_sum))
        out["total"] = float(total.sum())
        out["want_total"] = float(want_sum.sum())
        g = f.get("/entry/data/csr")
        if g is not None:
            got = scipy.sparse.csr_matrix(
                (g["values"][()], g["indices"][()], g["indptr"][()]), shape=m.shape
            )
            out["csr_equal"] = bool((got != m).nnz == 0)
        else:
            out["csr_equal"] = None
        v = f["/entry/data/validity"]
        out["frames_received"] = int(v.attrs["frames_received"])
    print(json.dumps(out))
    ok = out["frame_sums_equal"] and out["sum_equal"] and out["csr_equal"] is not False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
