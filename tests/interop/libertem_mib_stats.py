"""Per-frame statistics of a Merlin `.hdr`/`.mib` set as LiberTEM's offline MIB reader sees it.

Run by `tests/interop_merlin.rs` inside the test virtual environment (LiberTEM from PyPI) to
make the independent reference for a recording that has no entry in
`../shared/data/merlin/reference.json` (a detector-ROI acquisition captured from stemflow's
simulator). Usage: `libertem_mib_stats.py HDR FRAMES OUT`. Writes OUT as one object with
the keys `reference.json` uses: `frames`, `sig_shape`, `per_frame_sums`, `total`,
`max_value`, `frame0_row0_sum`, `frame0_lastrow_sum`, `frame0_col0_sum`,
`frame0_lastcol_sum`, `frame0_quadrant_sums` (`top_left`, `top_right`, `bottom_left`,
`bottom_right`).
"""

import json
import sys

import numpy as np
from libertem.api import Context
from libertem.udf import UDF


class FrameStatsUDF(UDF):
    """Per frame: sum, maximum, first/last row and column sums, quadrant sums (float64)."""

    def get_preferred_input_dtype(self):
        return self.USE_NATIVE_DTYPE

    def get_result_buffers(self):
        return {"stats": self.buffer(kind="nav", dtype="float64", extra_shape=(10,))}

    def process_frame(self, frame):
        f = np.asarray(frame, dtype=np.float64)
        h, w = f.shape
        h2, w2 = h // 2, w // 2
        self.results.stats[:] = (
            f.sum(), f.max(), f[0].sum(), f[-1].sum(), f[:, 0].sum(), f[:, -1].sum(),
            f[:h2, :w2].sum(), f[:h2, w2:].sum(), f[h2:, :w2].sum(), f[h2:, w2:].sum(),
        )


def main():
    hdr, frames, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    with Context.make_with("inline") as ctx:
        ds = ctx.load("mib", path=hdr, nav_shape=(frames,))
        res = ctx.run_udf(dataset=ds, udf=FrameStatsUDF())
        sig = [int(x) for x in ds.shape.sig]
    s = np.asarray(res["stats"].data).reshape((frames, 10)).astype(np.int64)
    json.dump(
        {
            "frames": frames,
            "sig_shape": sig,
            "per_frame_sums": [int(v) for v in s[:, 0]],
            "total": int(s[:, 0].sum()),
            "max_value": int(s[:, 1].max()),
            "frame0_row0_sum": int(s[0, 2]),
            "frame0_lastrow_sum": int(s[0, 3]),
            "frame0_col0_sum": int(s[0, 4]),
            "frame0_lastcol_sum": int(s[0, 5]),
            "frame0_quadrant_sums": {
                "top_left": int(s[0, 6]),
                "top_right": int(s[0, 7]),
                "bottom_left": int(s[0, 8]),
                "bottom_right": int(s[0, 9]),
            },
        },
        open(out, "w"),
    )


if __name__ == "__main__":
    main()
