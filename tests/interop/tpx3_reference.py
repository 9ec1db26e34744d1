"""Per-frame sums and the summed frame of a TPX3 CSR reference (.npz) as JSON.

Usage: tpx3_reference.py REFERENCE.npz -> {"frame_sums": [...], "sum_total",
"sum_nonzero": [[index, value], ...]}, in the form `libertem_tpx3_client.py` reports.
"""

import json
import sys

import numpy as np
import scipy.sparse


def main() -> int:
    ref = np.load(sys.argv[1])
    n = int(np.prod(ref["nav_shape"]))
    m = scipy.sparse.csr_matrix(
        (ref["values"], ref["indices"], ref["indptr"]),
        shape=(n, int(np.prod(ref["sig_shape"]))),
    )
    sums = np.asarray(m.sum(axis=1), dtype=np.float64).ravel()
    total = np.asarray(m.sum(axis=0), dtype=np.float64).ravel()
    nz = np.flatnonzero(total)
    print(
        json.dumps(
            {
                "frame_sums": [float(v) for v in sums],
                "sum_total": float(total.sum()),
                "sum_nonzero": [[int(i), float(total[i])] for i in nz],
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
