"""Compare a stemflow recording of an ASI TPX3 scan with the stream's CSR reference.

Usage: tpx3_compare.py REFERENCE.npz RECORDING.hspy

The reference holds the scan's CSR arrays (``indptr``, ``indices``, ``values``,
``nav_shape``, ``sig_shape``), written by LiberTEM's serializer with the stream. The
recording is what ``stemflow acquire --detector tpx3`` wrote. Prints one JSON object:
frame count, the per-frame sums and the summed frame, each compared exactly, whether the
recorded CSR rows equal the reference's, and whether LiberTEM reads the ``raw_csr`` data
set written beside the recording (``recording.toml``) with the same sums. Exits 1 when
anything differs.
"""

from __future__ import annotations

import json
import os
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
    toml = os.path.join(os.path.dirname(sys.argv[2]), "recording.toml")
    out["raw_csr_equal"] = None
    if os.path.exists(toml):
        from libertem.api import Context
        from libertem.udf.sum import SumUDF
        from libertem.udf.sumsigudf import SumSigUDF

        with Context.make_with("inline") as ctx:
            ds = ctx.load("raw_csr", path=toml)
            res = ctx.run_udf(dataset=ds, udf=[SumUDF(), SumSigUDF()])
        lt_sum = np.asarray(res[0]["intensity"].data, dtype=np.float64)
        lt_frames = np.asarray(res[1]["intensity"].data, dtype=np.float64).ravel()
        out["raw_csr_equal"] = bool(
            np.array_equal(lt_sum, want_sum)
            and np.array_equal(lt_frames, want_frame_sums)
        )
    print(json.dumps(out))
    ok = (
        out["frame_sums_equal"]
        and out["sum_equal"]
        and out["csr_equal"] is not False
        and out["raw_csr_equal"] is not False
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
