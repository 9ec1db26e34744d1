"""Receive Merlin acquisitions with LiberTEM-live and report per-frame statistics as JSON.

Run by `tests/interop_merlin.rs` inside the test virtual environment (libertem-live from
PyPI), against stemflow's Merlin simulator. For each `--acquisition CONTROL DATA FRAMES`
it uses LiberTEM-live's documented active mode: `LiveContext.make_connection('merlin')`,
`make_acquisition(..., hooks=...)` and `run_udf`. The hook's `on_ready_for_data` sets a
soft-triggered acquisition of FRAMES frames over LiberTEM-live's own `MerlinControl`, then
sends `CMD,STARTACQUISITION` (the detector answers with the HDR on the data port) and
`CMD,SOFTTRIGGER` (the frames follow), as protocols.md §1.3 describes for a soft-trigger test.

A small UDF records, per frame: the sum, the maximum, the sums of the first and last row and
column, and the sums of the four quadrants (rows in the order LiberTEM delivers them).

Output (`--out`): a JSON list with one object per acquisition, in the order given:
`{"control_port", "data_port", "frames", "sig_shape", "dtype", "per_frame": {"sum": [...],
"max": [...], "row0": [...], "lastrow": [...], "col0": [...], "lastcol": [...],
"top_left": [...], "top_right": [...], "bottom_left": [...], "bottom_right": [...]},
"seconds"}` or `{"control_port", "data_port", "frames", "error"}` when LiberTEM-live raised.

The whole run is bounded by `--timeout` seconds: past it the interpreter prints every
thread's stack to stderr and exits with status 1 (LiberTEM-live's header wait has no
deadline of its own).
"""

import argparse
import faulthandler
import json
import sys
import time
import traceback

import numpy as np

from libertem.executor.pipelined import PipelinedExecutor
from libertem.udf import UDF
from libertem_live.api import Hooks, LiveContext
from libertem_live.detectors.merlin.control import MerlinControl

STATS = (
    "sum", "max", "row0", "lastrow", "col0", "lastcol",
    "top_left", "top_right", "bottom_left", "bottom_right",
)


class FrameStatsUDF(UDF):
    """Per-frame statistics in float64 (exact for these integer sums, < 2**53)."""

    def get_preferred_input_dtype(self):
        return self.USE_NATIVE_DTYPE

    def get_result_buffers(self):
        return {
            "stats": self.buffer(kind="nav", dtype="float64", extra_shape=(len(STATS),)),
        }

    def process_frame(self, frame):
        f = np.asarray(frame, dtype=np.float64)
        h, w = f.shape
        h2, w2 = h // 2, w // 2
        self.results.stats[:] = (
            f.sum(), f.max(), f[0].sum(), f[-1].sum(), f[:, 0].sum(), f[:, -1].sum(),
            f[:h2, :w2].sum(), f[:h2, w2:].sum(), f[h2:, :w2].sum(), f[h2:, w2:].sum(),
        )


class SoftTrigger(Hooks):
    """Arms and soft-triggers the detector once LiberTEM-live is ready for data."""

    def __init__(self, host, control_port, timeout):
        self.host = host
        self.control_port = control_port
        self.timeout = timeout

    def on_ready_for_data(self, env):
        with MerlinControl(host=self.host, port=self.control_port, timeout=self.timeout) as c:
            c.cmd("STARTACQUISITION")
            c.cmd("SOFTTRIGGER")


def configure(host, control_port, frames, timeout):
    """A soft-triggered acquisition of `frames` frames, all on one trigger (§1.3)."""
    with MerlinControl(host=host, port=control_port, timeout=timeout) as c:
        c.set("NUMFRAMESTOACQUIRE", frames)
        c.set("NUMFRAMESPERTRIGGER", frames)
        c.set("TRIGGERSTART", 5)


def receive(ctx, host, control_port, data_port, frames, timeout):
    configure(host, control_port, frames, timeout)
    t0 = time.monotonic()
    conn = ctx.make_connection("merlin").open(
        api_host=host, api_port=control_port, data_host=host, data_port=data_port,
    )
    try:
        aq = ctx.make_acquisition(
            conn=conn,
            nav_shape=(frames,),
            frames_per_partition=frames,
            hooks=SoftTrigger(host, control_port, timeout),
        )
        res = ctx.run_udf(dataset=aq, udf=FrameStatsUDF())
        stats = np.asarray(res["stats"].data).reshape((frames, len(STATS)))
        return {
            "control_port": control_port,
            "data_port": data_port,
            "frames": frames,
            "sig_shape": [int(x) for x in aq.shape.sig],
            "dtype": np.dtype(aq.dtype).name,
            "per_frame": {name: [int(v) for v in stats[:, i]] for i, name in enumerate(STATS)},
            "seconds": time.monotonic() - t0,
        }
    finally:
        conn.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument(
        "--acquisition", nargs=3, type=int, action="append", required=True,
        metavar=("CONTROL_PORT", "DATA_PORT", "FRAMES"),
    )
    p.add_argument("--timeout", type=float, default=60.0, help="whole-run limit, s")
    p.add_argument("--out", required=True, help="where to write the JSON result")
    args = p.parse_args()

    faulthandler.dump_traceback_later(args.timeout, exit=True)
    # One worker process: CI machines have two cores and the simulator needs one.
    executor = PipelinedExecutor(
        spec=PipelinedExecutor.make_spec(cpus=1, cudas=0), pin_workers=False,
    )
    ctx = LiveContext(executor=executor, plot_class=None)
    results = []
    try:
        for control_port, data_port, frames in args.acquisition:
            try:
                results.append(receive(ctx, args.host, control_port, data_port, frames, 2.0))
            except Exception as e:  # reported per acquisition; the Rust test fails on it
                traceback.print_exc()
                results.append({
                    "control_port": control_port,
                    "data_port": data_port,
                    "frames": frames,
                    "error": f"{type(e).__name__}: {e}",
                })
    finally:
        ctx.close()
    with open(args.out, "w") as f:
        json.dump(results, f)
    faulthandler.cancel_dump_traceback_later()
    return 0


if __name__ == "__main__":
    sys.exit(main())
