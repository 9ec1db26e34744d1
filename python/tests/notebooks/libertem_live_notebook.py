"""A notebook as a LiberTEM-live user writes it: offline on a Merlin recording, then live in
LiberTEM-live's active mode (a hook arms and soft-triggers the Merlin), with NumPy UDFs
from the LiberTEM UDF guide beside the built-in ones. Its results go to an .npz file.

The test suite runs it twice: as it is, under LiberTEM 0.16 / LiberTEM-live 0.3, and with
its `libertem_live`/`libertem` imports replaced by `stemflow` — nothing else changed.

Usage: python libertem_live_notebook.py MIB_HDR CONTROL_PORT DATA_PORT OUT_DIR
"""

import sys

import numpy as np
from libertem import masks
from libertem.udf import UDF
from libertem.udf.com import CoMUDF
from libertem.udf.masks import ApplyMasksUDF
from libertem.udf.stddev import StdDevUDF
from libertem.udf.sum import SumUDF
from libertem.udf.sumsigudf import SumSigUDF
from libertem_live.api import Hooks, LiveContext
from libertem_live.detectors.merlin.control import MerlinControl
from libertem_live.udf.record import RecordUDF


class MaxUDF(UDF):
    def get_result_buffers(self):
        return {"maxbuf": self.buffer(kind="sig", dtype=self.meta.input_dtype)}

    def preprocess(self):
        self.results.maxbuf[:] = -np.inf

    def process_frame(self, frame):
        self.results.maxbuf[:] = np.maximum(frame, self.results.maxbuf)

    def merge(self, dest, src):
        dest.maxbuf[:] = np.maximum(dest.maxbuf, src.maxbuf)


class FrameSumUDF(UDF):
    def get_result_buffers(self):
        return {"intensity": self.buffer(kind="nav", dtype="float64")}

    def process_frame(self, frame):
        self.results.intensity[:] = np.sum(frame)


class StartAcquisition(Hooks):
    def __init__(self, port, frames):
        self.port = port
        self.frames = frames

    def on_ready_for_data(self, env):
        with MerlinControl(host="127.0.0.1", port=self.port, timeout=2.0) as c:
            c.set("NUMFRAMESTOACQUIRE", self.frames)
            c.set("NUMFRAMESPERTRIGGER", self.frames)
            c.set("TRIGGERSTART", 5)
            c.cmd("STARTACQUISITION")
            c.cmd("SOFTTRIGGER")


def main():
    hdr, control_port, data_port, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    results = {}
    with LiveContext() as ctx:
        ds = ctx.load("mib", path=hdr, nav_shape=(3, 3))
        sy, sx = tuple(ds.shape.sig)
        res = ctx.run_udf(
            dataset=ds,
            udf=[
                SumUDF(),
                SumSigUDF(),
                MaxUDF(),
                FrameSumUDF(),
                ApplyMasksUDF(
                    mask_factories=[
                        lambda: masks.circular(sx / 2, sy / 2, sx, sy, 40),
                        lambda: masks.ring(sx / 2, sy / 2, sx, sy, 100, 60),
                    ]
                ),
                StdDevUDF(),
                CoMUDF.with_params(cy=sy / 2, cx=sx / 2, r=50),
            ],
        )
        results["off_sum"] = res[0]["intensity"].data
        results["off_sumsig"] = res[1]["intensity"].data
        results["off_max"] = res[2]["maxbuf"].data
        results["off_framesum"] = res[3]["intensity"].data
        results["off_masks"] = res[4]["intensity"].data
        results["off_var"] = res[5]["var"].data
        results["off_mean"] = res[5]["mean"].data
        results["off_com_field"] = np.asarray(res[6]["field"].data)

        nav = (6, 8)
        conn = ctx.make_connection("merlin").open(
            api_host="127.0.0.1",
            api_port=control_port,
            data_host="127.0.0.1",
            data_port=data_port,
        )
        try:
            aq = ctx.make_acquisition(
                conn=conn, nav_shape=nav, hooks=StartAcquisition(control_port, nav[0] * nav[1])
            )
            res = ctx.run_udf(
                dataset=aq,
                udf=[SumUDF(), MaxUDF(), FrameSumUDF(), RecordUDF(out + "/live_frames.npy")],
            )
        finally:
            conn.close()
        results["live_sum"] = res[0]["intensity"].data
        results["live_max"] = res[1]["maxbuf"].data
        results["live_framesum"] = res[2]["intensity"].data
    np.savez(out + "/results.npz", **results)


if __name__ == "__main__":
    main()
