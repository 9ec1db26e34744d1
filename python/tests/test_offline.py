"""Offline runs on memory, npy, raw, HDF5, DECTRIS and real Merlin data: built-in and NumPy
UDFs in one pass, against NumPy on the same frames."""

import asyncio
from typing import ClassVar

import numpy as np
import pytest
from udfs import MaxUDF, PartitionCoords, Scaled, SumSigNav, TileMean

from stemflow.api import Context, UDFRunCancelled
from stemflow.masks import circular, ring
from stemflow.udf import UDF
from stemflow.udf.masks import ApplyMasksUDF
from stemflow.udf.raw import PickUDF
from stemflow.udf.record import RecordUDF
from stemflow.udf.stddev import StdDevUDF
from stemflow.udf.sum import SumUDF
from stemflow.udf.sumsigudf import SumSigUDF


@pytest.fixture
def ctx():
    with Context() as c:
        yield c


def test_builtin_and_numpy_udfs_in_one_pass_equal_numpy(ctx, data):
    ds = ctx.load("memory", data=data)
    assert tuple(ds.shape.nav) == (7, 9) and tuple(ds.shape.sig) == (24, 40)
    assert ds.dtype == np.uint16
    res = ctx.run_udf(
        dataset=ds,
        udf=[
            SumUDF(),
            SumSigUDF(),
            MaxUDF(),
            SumSigNav(),
            TileMean(),
            PartitionCoords(),
            Scaled(factor=0.5),
        ],
    )
    assert np.array_equal(res[0]["intensity"].data, data.sum(axis=(0, 1)))
    assert np.array_equal(res[1]["intensity"].data, data.sum(axis=(2, 3)))
    assert np.array_equal(res[2]["maxbuf"].data, data.max(axis=(0, 1)))
    # LiberTEM's default input type: float32.
    assert res[2]["maxbuf"].data.dtype == np.float32
    assert np.array_equal(res[3]["intensity"].data, data.sum(axis=(2, 3)))
    assert np.allclose(res[4]["mean"].data, data.mean(axis=(2, 3)))
    assert res[4]["count"].data[0] == 63
    rows, cols = np.mgrid[0:7, 0:9]
    assert np.array_equal(res[5]["where"].data, np.stack([rows, cols], axis=-1))
    assert res[5]["pixel"].data.dtype == np.uint16
    assert np.array_equal(res[5]["pixel"].data, data[:, :, 1, 2])
    assert np.array_equal(res[6]["scaled"].data, data.sum(axis=(0, 1)) * 0.5)
    assert "total" in res[6]


@pytest.mark.parametrize(
    "roi",
    [
        "mask",
        (3, 4),
        [((0, 0), True), ((2, 3), True), ((6, 8), True)],
    ],
)
def test_roi_forms(ctx, data, roi):
    if roi == "mask":
        roi = np.zeros((7, 9), bool)
        roi[2:5, 3:7] = True
    mask = np.zeros((7, 9), bool)
    if isinstance(roi, np.ndarray):
        mask = roi
    elif isinstance(roi, tuple):
        mask[roi] = True
    else:
        for c, v in roi:
            mask[c] = v
    ds = ctx.load("memory", data=data)
    res = ctx.run_udf(dataset=ds, udf=[SumUDF(), SumSigUDF(), SumSigNav(), PickUDF()], roi=roi)
    assert np.array_equal(res[0]["intensity"].data, data[mask].sum(axis=0))
    for r in (res[1], res[2]):
        d = r["intensity"].data
        assert np.array_equal(d[mask], data[mask].sum(axis=(1, 2)))
        assert np.isnan(d[~mask]).all()
        assert np.array_equal(r["intensity"].raw_data, data[mask].sum(axis=(1, 2)))
    assert np.array_equal(res[3]["intensity"].raw_data, data[mask])


def test_masks_stddev_and_weighted_masks_equal_numpy(ctx, data):
    ds = ctx.load("memory", data=data)
    m1 = circular(20, 12, 40, 24, 7)
    m2 = ring(20, 12, 40, 24, 11, 7)
    weights = np.linspace(0, 1, 24 * 40).reshape(24, 40)
    res = ctx.run_udf(
        dataset=ds,
        udf=[
            ApplyMasksUDF(mask_factories=[lambda: m1, lambda: m2]),
            StdDevUDF(),
            ApplyMasksUDF(mask_factories=[lambda: weights]),
        ],
    )
    got = res[0]["intensity"].data
    assert got.shape == (7, 9, 2)
    assert np.array_equal(got[..., 0], (data * m1).sum(axis=(2, 3)))
    assert np.array_equal(got[..., 1], (data * m2).sum(axis=(2, 3)))
    f = data.reshape(-1, 24, 40).astype(np.float64)
    assert np.allclose(res[1]["mean"].data, f.mean(axis=0), rtol=1e-12)
    assert np.allclose(res[1]["var"].data, f.var(axis=0), rtol=1e-12)
    assert np.allclose(res[1]["std"].data, f.std(axis=0), rtol=1e-12)
    assert res[1]["num_frames"].data[0] == 63
    assert np.allclose(
        res[2]["intensity"].data[..., 0], (f * weights).sum(axis=(1, 2)).reshape(7, 9)
    )


def test_record_udf_writes_the_frames(ctx, data, tmp_path):
    out = tmp_path / "frames.npy"
    res = ctx.run_udf(dataset=ctx.load("memory", data=data), udf=RecordUDF(out))
    assert int(res["frames_written"].data) == 63
    assert np.array_equal(np.load(out), data)


def test_file_formats(ctx, data, tmp_path):
    np.save(tmp_path / "d.npy", data)
    data.tofile(tmp_path / "d.raw")
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f.create_dataset("/entry/stack", data=data)
    sets = [
        ctx.load("npy", path=tmp_path / "d.npy"),
        ctx.load(
            "raw", path=tmp_path / "d.raw", dtype="uint16", nav_shape=(7, 9), sig_shape=(24, 40)
        ),
        ctx.load("hdf5", path=tmp_path / "d.h5", ds_path="/entry/stack"),
        ctx.load("auto", path=tmp_path / "d.npy"),
    ]
    for ds in sets:
        assert tuple(ds.shape) == data.shape, ds
        r = ctx.run_udf(dataset=ds, udf=[SumSigUDF(), MaxUDF()])
        assert np.array_equal(r[0]["intensity"].data, data.sum(axis=(2, 3)))
        assert np.array_equal(r[1]["maxbuf"].data, data.max(axis=(0, 1)))


def test_signed_memory_data_is_read_exactly(ctx):
    d = np.arange(-60, 60, dtype=np.int16).reshape(2, 3, 4, 5)
    ds = ctx.load("memory", data=d)
    assert ds.dtype == np.int16
    r = ctx.run_udf(dataset=ds, udf=[SumUDF(), MaxUDF()])
    assert np.array_equal(r[0]["intensity"].data, d.sum(axis=(0, 1)))
    assert np.array_equal(r[1]["maxbuf"].data, d.max(axis=(0, 1)))


def test_real_merlin_recording_matches_the_reference(ctx, merlin_9, reference):
    ds = ctx.load("mib", path=merlin_9, nav_shape=(3, 3))
    ref = reference["Single_9_Frame_CounterDepth_12_Rows_256.mib"]
    assert tuple(ds.shape.sig) == tuple(ref["sig_shape"])
    r = ctx.run_udf(dataset=ds, udf=[SumSigUDF(), SumUDF(), MaxUDF()])
    assert list(r[0]["intensity"].data.reshape(-1)) == ref["per_frame_sums"]
    assert r[1]["intensity"].data.sum() == ref["total"]
    assert r[2]["maxbuf"].data.max() == ref["max_value"]


def test_dectris_master_file(ctx):
    from conftest import DATA

    ds = ctx.load("dectris", path=DATA / "dectris" / "arina" / "test_00_master.h5")
    assert tuple(ds.shape.sig) == (192, 192)
    assert int(np.prod(ds.shape.nav)) == 16
    r = ctx.run_udf(dataset=ds, udf=SumUDF())
    assert r["intensity"].data.sum() == 0  # a dark recording


def test_bad_input_gets_a_clear_error(ctx, tmp_path):
    with pytest.raises(ValueError, match="no-such"):
        ctx.load("mib", path=tmp_path / "no-such.hdr")
    (tmp_path / "short.raw").write_bytes(b"\0" * 100)
    short = ctx.load(
        "raw", path=tmp_path / "short.raw", dtype="uint16", nav_shape=(2, 2), sig_shape=(8, 8)
    )
    with pytest.raises(RuntimeError, match="need bytes up to 128, the file has 100"):
        ctx.run_udf(dataset=short, udf=SumUDF())
    with pytest.raises(TypeError, match="unknown"):
        ctx.load("npy", path=tmp_path / "x.npy", colour="blue")
    with pytest.raises(ValueError, match="scan"):
        ctx.run_udf(
            dataset=ctx.load("memory", data=np.zeros((2, 2, 4, 4), np.uint8)),
            udf=SumUDF(),
            roi=np.ones((3, 3), bool),
        )


class Boom(UDF):
    def get_result_buffers(self):
        return {"x": self.buffer(kind="nav")}

    def process_frame(self, frame):
        if self.meta.coordinates[0, 0] == 3:
            raise ZeroDivisionError("frame row 3 is bad")
        self.results.x[:] = 1


class Keeps(UDF):
    kept: ClassVar[list] = []

    def get_preferred_input_dtype(self):
        return self.USE_NATIVE_DTYPE

    def get_result_buffers(self):
        return {"x": self.buffer(kind="nav")}

    def process_partition(self, partition):
        Keeps.kept.append(partition)


def test_udf_exception_ends_the_run_with_its_traceback_and_the_context_stays_usable(ctx, data):
    ds = ctx.load("memory", data=data)
    with pytest.raises(ZeroDivisionError, match="row 3") as info:
        ctx.run_udf(dataset=ds, udf=[SumUDF(), Boom()])
    assert any(t.name == "process_frame" for t in info.traceback)
    r = ctx.run_udf(dataset=ds, udf=SumUDF())
    assert np.array_equal(r["intensity"].data, data.sum(axis=(0, 1)))


def test_a_udf_keeping_its_frames_gets_an_error_and_an_own_copy(ctx, data):
    Keeps.kept.clear()
    with pytest.raises(RuntimeError, match="copy"):
        ctx.run_udf(dataset=ctx.load("memory", data=data), udf=Keeps(), roi=(0, 0))
    kept = Keeps.kept[0][0]
    # The view it kept was re-pointed at its own copy: the frame's pixels, still readable.
    assert np.array_equal(kept, data[0, 0])


def test_frames_are_read_only_views(ctx, data):
    class Writes(UDF):
        def get_preferred_input_dtype(self):
            return self.USE_NATIVE_DTYPE

        def get_result_buffers(self):
            return {"x": self.buffer(kind="nav")}

        def process_frame(self, frame):
            frame[0, 0] = 1

    with pytest.raises(ValueError, match="read-only"):
        ctx.run_udf(dataset=ctx.load("memory", data=data), udf=Writes())


def test_run_udf_iter_yields_partial_then_final_results(ctx):
    class Slow(UDF):
        """Takes 0.1 s per partition, so that the run lasts several snapshot intervals."""

        def get_result_buffers(self):
            return {"x": self.buffer(kind="nav")}

        def process_partition(self, partition):
            import time

            time.sleep(0.1)
            self.results.x[:] = 1

    big = np.ones((64, 64, 16, 16), dtype=np.uint16)
    ds = ctx.load("memory", data=big)
    parts = list(ctx.run_udf_iter(dataset=ds, udf=[SumSigUDF(), MaxUDF(), Slow()]))
    assert parts[-1].finished and all(not p.finished for p in parts[:-1])
    assert parts[-1].frames_processed == 64 * 64
    assert np.all(parts[-1].buffers[0]["intensity"].data == 16 * 16)
    # Partial results came while the run went on: fewer frames, NaN where not yet done.
    partial = [p for p in parts[:-1] if 0 < p.frames_processed < 64 * 64]
    assert partial, [p.frames_processed for p in parts]
    p = partial[0]
    done = p.damage
    assert done.sum() == p.frames_processed
    assert np.isnan(p.buffers[0]["intensity"].data[~done]).all()
    assert (p.buffers[0]["intensity"].data[done] == 16 * 16).all()
    counts = [p.frames_processed for p in parts]
    assert counts == sorted(counts)


def test_async_variants(ctx, data):
    ds = ctx.load("memory", data=data)

    async def go():
        r = await ctx.run_udf(dataset=ds, udf=SumUDF(), sync=False)
        seen = [p async for p in ctx.run_udf_iter(dataset=ds, udf=SumUDF(), sync=False)]
        return r, seen

    r, seen = asyncio.run(go())
    assert np.array_equal(r["intensity"].data, data.sum(axis=(0, 1)))
    assert seen[-1].finished


def test_progress_and_plots_headless(ctx, data, capsys):
    import matplotlib

    matplotlib.use("Agg")
    ds = ctx.load("memory", data=data)
    r = ctx.run_udf(dataset=ds, udf=[SumUDF(), SumSigUDF()], progress=True, plots="matplotlib")
    assert "63/63 frames" in capsys.readouterr().err
    import matplotlib.pyplot as plt

    titles = [ax.get_title() for n in plt.get_fignums() for ax in plt.figure(n).axes]
    assert any("SumSigUDF: intensity (scan)" in t for t in titles), titles
    assert any("SumUDF: intensity (detector)" in t for t in titles), titles
    assert np.array_equal(r[0]["intensity"].data, data.sum(axis=(0, 1)))
    plt.close("all")


def test_cancel_raises_udf_run_cancelled(ctx):
    big = np.ones((128, 128, 32, 32), dtype=np.uint16)
    ds = ctx.load("memory", data=big)

    class Slow(UDF):
        def get_result_buffers(self):
            return {"x": self.buffer(kind="nav")}

        def process_partition(self, partition):
            import time

            time.sleep(0.01)

    gen = ctx.run_udf_iter(dataset=ds, udf=[Slow(), SumUDF()])
    next(gen)
    with pytest.raises(UDFRunCancelled):
        gen.throw(UDFRunCancelled("stop"))
    r = ctx.run_udf(dataset=ds, udf=SumUDF(), roi=(0, 0))
    assert r["intensity"].data.sum() == 32 * 32


def test_jupyter_plots_update_display_handles(ctx, monkeypatch):
    """The Jupyter path (IPython display handles, updated in place) runs headless."""
    pytest.importorskip("IPython")
    import matplotlib

    matplotlib.use("Agg")
    import IPython.display

    updates = []

    class Handle:
        def update(self, obj):
            updates.append(obj)

    monkeypatch.setattr(IPython.display, "display", lambda obj, display_id=None: Handle())
    big = np.ones((64, 64, 64, 64), dtype=np.uint16)
    ds = ctx.load("memory", data=big)
    ctx.run_udf(dataset=ds, udf=[SumUDF(), SumSigUDF()], plots="jupyter")
    # One figure per 2-D result, each updated at least at the end.
    figs = {id(f) for f in updates}
    assert len(figs) == 2 and len(updates) >= 2
    import matplotlib.pyplot as plt

    plt.close("all")
