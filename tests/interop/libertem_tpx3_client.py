"""Receive one ASI TPX3 scan with LiberTEM-live and report its sums as JSON.

Run by `tests/interop_tpx3.rs` inside the test virtual environment (libertem-live from
PyPI), against stemflow's TPX3 simulator (`stemflow sim tpx3`). LiberTEM-live's documented
passive mode for this camera: `LiveContext.make_connection('asi_tpx3').open(...)`,
`wait_for_acquisition`, `make_acquisition(conn=..., pending_aq=...)` and `run_udf` with
`SumUDF` and `SumSigUDF` (LiberTEM hands the UDFs the CSR rows).

Output (`--out`): `{"nav_shape", "sig_shape", "frame_sums": [...], "sum_total",
"sum_nonzero": [[index, value], ...], "seconds"}`, or `{"error"}` when LiberTEM-live
raised. The run is bounded by `--timeout` seconds (the interpreter then prints every
thread's stack and exits with status 1).
"""

import argparse
import faulthandler
import json
import sys
import time
import traceback

import numpy as np

from libertem.executor.pipelined import PipelinedExecutor
from libertem.udf.sum import SumUDF
from libertem.udf.sumsigudf import SumSigUDF
from libertem_live.api import LiveContext


def receive(ctx, host, port, timeout):
    t0 = time.monotonic()
    conn = ctx.make_connection("asi_tpx3").open(data_host=host, data_port=port)
    try:
        pending = conn.wait_for_acquisition(timeout)
        if pending is None:
            return {"error": f"no acquisition within {timeout} s"}
        aq = ctx.make_acquisition(conn=conn, pending_aq=pending)
        res = ctx.run_udf(dataset=aq, udf=[SumUDF(), SumSigUDF()])
        total = np.asarray(res[0]["intensity"].data, dtype=np.float64)
        sums = np.asarray(res[1]["intensity"].data, dtype=np.float64).ravel()
        nz = np.flatnonzero(total)
        return {
            "nav_shape": [int(x) for x in aq.shape.nav],
            "sig_shape": [int(x) for x in aq.shape.sig],
            "frame_sums": [float(v) for v in sums],
            "sum_total": float(total.sum()),
            "sum_nonzero": [[int(i), float(total.flat[i])] for i in nz],
            "seconds": time.monotonic() - t0,
        }
    finally:
        conn.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--timeout", type=float, default=120.0, help="whole-run limit, s")
    p.add_argument("--out", required=True, help="where to write the JSON result")
    args = p.parse_args()
    faulthandler.dump_traceback_later(args.timeout, exit=True)
    executor = PipelinedExecutor(
        spec=PipelinedExecutor.make_spec(cpus=1, cudas=0),
        pin_workers=False,
    )
    ctx = LiveContext(executor=executor, plot_class=None)
    try:
        try:
            result = receive(ctx, args.host, args.port, args.timeout / 2)
        except Exception as e:  # reported; the Rust test fails on it
            traceback.print_exc()
            result = {"error": f"{type(e).__name__}: {e}"}
    finally:
        ctx.close()
    with open(args.out, "w") as f:
        json.dump(result, f)
    faulthandler.cancel_dump_traceback_later()
    return 0


if __name__ == "__main__":
    sys.exit(main())
