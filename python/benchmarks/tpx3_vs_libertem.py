"""ASI TPX3 side by side: LiberTEM-live's TPX3 client vs stemflow on the same stream.

  python tpx3_vs_libertem.py [--stemflow target/release/stemflow] [--rounds 3]
      [--nav 128 128]

Starts `stemflow sim tpx3` (a synthetic scan of 512 x 512 frames with about 410
electrons per position, streamed to every client as fast as it reads), then alternates,
round by round in the same minutes:

- LiberTEM-live (``make_connection('asi_tpx3')``, passive, PipelinedExecutor on every
  core) running SumUDF plus ApplyMasksUDF with a bright-field disk and an annular
  dark-field ring (LiberTEM's own benchmark case: sum + 2 masks);
- ``stemflow acquire --detector tpx3 --mode passive --no-raw`` (sum, sum over signal,
  virtual BF and ADF, CoM).

Prints frames/s of both per round (LiberTEM: the ``run_udf`` call; stemflow: the
acquisition time from its run.json) and the ratio. Run it with the Python of an
environment that has LiberTEM-live 0.3 (e.g. the tests' ``target/py-libertem``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


def libertem_round(port: int, nav: tuple[int, int]) -> float:
    from libertem.executor.pipelined import PipelinedExecutor
    from libertem.udf.masks import ApplyMasksUDF
    from libertem.udf.sum import SumUDF
    from libertem_live.api import LiveContext

    cpus = os.cpu_count() or 2
    executor = PipelinedExecutor(
        spec=PipelinedExecutor.make_spec(cpus=cpus, cudas=0), pin_workers=False
    )
    ctx = LiveContext(executor=executor, plot_class=None)
    try:
        yy, xx = np.mgrid[:512, :512]
        r = np.hypot(yy - 256, xx - 256)

        def bf():
            return (r < 26).astype(np.float32)

        def adf():
            return ((r >= 40) & (r < 90)).astype(np.float32)

        conn = ctx.make_connection("asi_tpx3").open(data_host="127.0.0.1", data_port=port)
        try:
            pending = conn.wait_for_acquisition(60.0)
            aq = ctx.make_acquisition(conn=conn, pending_aq=pending)
            t0 = time.perf_counter()
            ctx.run_udf(dataset=aq, udf=[SumUDF(), ApplyMasksUDF(mask_factories=[bf, adf])])
            secs = time.perf_counter() - t0
        finally:
            conn.close()
    finally:
        ctx.close()
    return nav[0] * nav[1] / secs


def stemflow_round(stemflow: str, port: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "run")
        subprocess.run(
            [
                stemflow,
                "acquire",
                "--detector",
                "tpx3",
                "--mode",
                "passive",
                "--data-port",
                str(port),
                "--no-raw",
                "--out",
                out,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        with open(os.path.join(out, "run.json")) as f:
            run = json.load(f)
    return run["frames_processed"] / run["acquisition_s"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stemflow", default="target/release/stemflow")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--nav", type=int, nargs=2, default=(128, 128))
    a = p.parse_args()
    sim = subprocess.Popen(
        [
            a.stemflow,
            "sim",
            "tpx3",
            "--nav-shape",
            f"{a.nav[0]}x{a.nav[1]}",
            "--sig-shape",
            "512x512",
            "--api-port",
            "0",
            "--data-port",
            "0",
            "--fast",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port = None
        for line in sim.stdout:
            if "data_port=" in line:
                port = int(line.split("data_port=")[1].split()[0])
                break
        if port is None:
            print("the simulator did not start", file=sys.stderr)
            return 1
        figures = []
        for k in range(a.rounds):
            lt = libertem_round(port, tuple(a.nav))
            sf = stemflow_round(a.stemflow, port)
            figures.append((lt, sf))
            print(
                f"round {k + 1}: LiberTEM-live {lt:.0f} frames/s, stemflow {sf:.0f} "
                f"frames/s, ratio {sf / lt:.2f}"
            )
        ratios = sorted(sf / lt for lt, sf in figures)
        print(
            json.dumps(
                {
                    "bench": "tpx3 vs libertem-live",
                    "nav": a.nav,
                    "rounds": [{"libertem_fps": lt, "stemflow_fps": sf} for lt, sf in figures],
                    "ratio_median": ratios[len(ratios) // 2],
                }
            )
        )
    finally:
        sim.terminate()
        sim.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
