"""Side-by-side benchmarks of stemflow's Python package (figures for the closing note and
docs/python/benchmarks.md). Each prints frames/s of both sides, measured in the same
minutes, and their ratio.

  python bench.py make-mib OUT.hdr [--nav 128 128] [--sig 256 256]
      a Merlin recording (12-bit counts in U16, the real file's headers as templates)
  python bench.py builtins FILE.hdr [--stemflow target/release/stemflow]
      built-in UDFs from Python vs `stemflow process` on the same file
  python bench.py numpy-udf FILE.hdr
      the UDF guide's MaxUDF plus a nav sum: stemflow vs LiberTEM (Context(), 2 workers)
  python bench.py live [--stemflow target/release/stemflow]
      Merlin 256 x 256 u16 from stemflow's simulator: Python run_udf with built-ins vs
      `stemflow acquire`

Run from an environment with stemflow installed (`pip install ./python`) and, for
numpy-udf, LiberTEM 0.16.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = (
    REPO.parent / "shared/data/merlin/Merlin_Single_Quad/Single_9_Frame_CounterDepth_12_Rows_256"
)


def make_mib(out: Path, nav, sig) -> None:
    """Writes OUT (.hdr) and its .mib: nav frames of sig big-endian u16 counts."""
    hdr = TEMPLATE.with_suffix(".hdr").read_bytes().decode("latin-1")
    n = nav[0] * nav[1]
    hdr = re.sub(r"(Frames in Acquisition \(Number\):\t)\d+", rf"\g<1>{n}", hdr)
    hdr = re.sub(r"(Frames per Trigger \(Number\):\t)\d+", rf"\g<1>{n}", hdr)
    out.write_bytes(hdr.encode("latin-1"))
    head = TEMPLATE.with_suffix(".mib").read_bytes()[:384].decode("latin-1").split(",")
    head[4], head[5] = f"{sig[1]:04d}", f"{sig[0]:04d}"
    rng = np.random.default_rng(1)
    px = sig[0] * sig[1]
    with open(out.with_suffix(".mib"), "wb") as f:
        chunk = 256
        for first in range(0, n, chunk):
            k = min(chunk, n - first)
            rec = np.zeros((k, 384 + 2 * px), dtype=np.uint8)
            for i in range(k):
                head[1] = f"{first + i + 1:06d}"
                rec[i, :384] = np.frombuffer(",".join(head).encode("latin-1")[:384], np.uint8)
            counts = rng.poisson(3.0, size=(k, px)).astype(">u2")
            rec[:, 384:] = counts.view(np.uint8).reshape(k, 2 * px)
            f.write(rec.tobytes())
    print(f"wrote {out} and {out.with_suffix('.mib')} ({n} frames of {sig[0]}x{sig[1]})")


def page_cache(path: Path) -> None:
    with open(path.with_suffix(".mib"), "rb") as f:
        while f.read(1 << 24):
            pass


def ratio_line(name_a, a, name_b, b):
    print(f"  {name_a}: {a:,.0f} frames/s   {name_b}: {b:,.0f} frames/s   ratio {a / b:.2f}")


def builtin_udfs(sig):
    from stemflow.masks import circular, ring
    from stemflow.udf.com import CoMUDF
    from stemflow.udf.masks import ApplyMasksUDF
    from stemflow.udf.sum import SumUDF
    from stemflow.udf.sumsigudf import SumSigUDF

    sy, sx = sig
    r = min(sy, sx) / 8
    # `stemflow process`'s default set: sum, sum over signal, BF disk + ADF ring, CoM
    # (LiberTEM's pixel convention: the engine's centre (128, 128) is LiberTEM's 127.5).
    cy, cx = sy / 2 - 0.5, sx / 2 - 0.5
    return [
        SumUDF(),
        SumSigUDF(),
        ApplyMasksUDF(
            mask_factories=[
                lambda: circular(cx, cy, sx, sy, r),
                lambda: ring(cx, cy, sx, sy, 3 * r, 1.5 * r),
            ]
        ),
        CoMUDF.with_params(cy=cy, cx=cx, r=1.25 * r),
    ]


def bench_builtins(path: Path, stemflow: str, repeat: int) -> None:
    from stemflow.api import Context

    page_cache(path)
    ctx = Context()
    ds = ctx.load("mib", path=path)
    n = int(np.prod(ds.shape.nav))
    py, cli = [], []
    for _ in range(repeat):
        t = time.perf_counter()
        ctx.run_udf(dataset=ds, udf=builtin_udfs(tuple(ds.shape.sig)))
        py.append(n / (time.perf_counter() - t))
        with tempfile.TemporaryDirectory() as out:
            t = time.perf_counter()
            subprocess.run(
                [stemflow, "process", str(path), "--out", out, "--no-raw"],
                check=True,
                capture_output=True,
            )
            cli.append(n / (time.perf_counter() - t))
    print(f"builtins ({n} frames, median of {repeat}, interleaved):")
    ratio_line("python run_udf", statistics.median(py), "stemflow process", statistics.median(cli))


def bench_numpy_udf(path: Path, repeat: int) -> None:
    sys.path.insert(0, str(REPO / "python" / "tests"))
    page_cache(path)
    import libertem.api as lt
    from libertem.udf import UDF as LTUDF
    from udfs import MaxUDF, SumSigNav

    import stemflow.api as sf

    class LTMax(LTUDF):
        def get_result_buffers(self):
            return {"maxbuf": self.buffer(kind="sig", dtype=self.meta.input_dtype)}

        def preprocess(self):
            self.results.maxbuf[:] = -np.inf

        def process_frame(self, frame):
            self.results.maxbuf[:] = np.maximum(frame, self.results.maxbuf)

        def merge(self, dest, src):
            dest.maxbuf[:] = np.maximum(dest.maxbuf, src.maxbuf)

    class LTNav(LTUDF):
        def get_result_buffers(self):
            return {"intensity": self.buffer(kind="nav", dtype="float64")}

        def process_frame(self, frame):
            self.results.intensity[:] = np.sum(frame)

    sctx = sf.Context()
    lctx = lt.Context()
    sds = sctx.load("mib", path=path)
    nav = tuple(sds.shape.nav)
    lds = lctx.load("mib", path=str(path), nav_shape=nav)
    n = int(np.prod(nav))
    a, b = [], []
    for _ in range(repeat):
        t = time.perf_counter()
        ra = sctx.run_udf(dataset=sds, udf=[MaxUDF(), SumSigNav()])
        a.append(n / (time.perf_counter() - t))
        t = time.perf_counter()
        rb = lctx.run_udf(dataset=lds, udf=[LTMax(), LTNav()])
        b.append(n / (time.perf_counter() - t))
    assert np.array_equal(ra[0]["maxbuf"].data, rb[0]["maxbuf"].data)
    assert np.allclose(ra[1]["intensity"].data, rb[1]["intensity"].data)
    print(
        f"numpy UDF (MaxUDF + nav sum, {n} frames, median of {repeat}, interleaved; "
        f"LiberTEM workers: {len(lctx.executor.get_available_workers())}):"
    )
    ratio_line("stemflow", statistics.median(a), "LiberTEM", statistics.median(b))
    lctx.close()


def bench_live(stemflow: str, repeat: int, nav=(128, 128)) -> None:
    from stemflow.api import LiveContext
    from stemflow.sim import MerlinSimulator

    n = nav[0] * nav[1]
    ctx = LiveContext()
    py, cli = [], []
    with MerlinSimulator(nav_shape=nav, sig_shape=(256, 256), fast=True) as sim:
        conn = ctx.make_connection("merlin").open(
            data_port=sim.data_port, api_port=sim.control_port
        )
        for _ in range(repeat):
            aq = ctx.make_acquisition(
                conn=conn, nav_shape=nav, controller=conn.get_active_controller(count_time=1e-5)
            )
            t = time.perf_counter()
            ctx.run_udf(dataset=aq, udf=builtin_udfs((256, 256)))
            py.append(n / (time.perf_counter() - t))
            with tempfile.TemporaryDirectory() as out:
                t = time.perf_counter()
                subprocess.run(
                    [
                        stemflow,
                        "acquire",
                        "--detector",
                        "merlin",
                        "--host",
                        "127.0.0.1",
                        "--control-port",
                        str(sim.control_port),
                        "--data-port",
                        str(sim.data_port),
                        "--nav-shape",
                        f"{nav[0]}x{nav[1]}",
                        "--exposure-ms",
                        "0.01",
                        "--out",
                        out,
                        "--no-raw",
                    ],
                    check=True,
                    capture_output=True,
                )
                cli.append(n / (time.perf_counter() - t))
    print(f"live Merlin 256x256 u16 ({n} frames, median of {repeat}, interleaved):")
    ratio_line("python run_udf", statistics.median(py), "stemflow acquire", statistics.median(cli))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make-mib")
    m.add_argument("out", type=Path)
    m.add_argument("--nav", type=int, nargs=2, default=(128, 128))
    m.add_argument("--sig", type=int, nargs=2, default=(256, 256))
    for name in ("builtins", "numpy-udf"):
        s = sub.add_parser(name)
        s.add_argument("file", type=Path)
        s.add_argument("--repeat", type=int, default=3)
        s.add_argument("--stemflow", default=str(REPO / "target/release/stemflow"))
    s = sub.add_parser("live")
    s.add_argument("--repeat", type=int, default=3)
    s.add_argument("--stemflow", default=str(REPO / "target/release/stemflow"))
    a = p.parse_args()
    if a.cmd == "make-mib":
        make_mib(a.out, tuple(a.nav), tuple(a.sig))
    elif a.cmd == "builtins":
        bench_builtins(a.file, a.stemflow, a.repeat)
    elif a.cmd == "numpy-udf":
        bench_numpy_udf(a.file, a.repeat)
    else:
        bench_live(a.stemflow, a.repeat)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
