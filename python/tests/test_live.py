"""Live acquisitions from stemflow's Merlin simulator (its real wire protocol, loopback):
active mode with a controller and hooks, LiberTEM-live's hook-driven mode, passive mode
with LiberTEM-live's own control client starting the acquisition, failures and cancels."""

import threading
import time

import numpy as np
import pytest
from udfs import MaxUDF, SumSigNav

from stemflow.api import Hooks, LiveContext, UDFRunCancelled
from stemflow.detectors.merlin.control import MerlinControl
from stemflow.sim import MerlinSimulator
from stemflow.udf.record import RecordUDF
from stemflow.udf.sum import SumUDF
from stemflow.udf.sumsigudf import SumSigUDF

NAV = (8, 12)
SIG = (64, 64)


@pytest.fixture
def sim():
    with MerlinSimulator(nav_shape=NAV, sig_shape=SIG) as s:
        yield s


@pytest.fixture
def ctx():
    with LiveContext() as c:
        yield c


def connect(ctx, sim):
    return ctx.make_connection("merlin").open(
        data_host="127.0.0.1",
        data_port=sim.data_port,
        api_host="127.0.0.1",
        api_port=sim.control_port,
    )


class Ready(Hooks):
    def __init__(self):
        self.seen = []

    def on_ready_for_data(self, env):
        self.seen.append(tuple(env.aq.shape.nav))


def check_against_frames(res, frames):
    assert np.array_equal(res[0]["intensity"].data, frames.sum(axis=(0, 1)))
    assert np.array_equal(res[1]["intensity"].data, frames.sum(axis=(2, 3)))
    assert np.array_equal(res[2]["maxbuf"].data, frames.max(axis=(0, 1)))
    assert np.array_equal(res[3]["intensity"].data, frames.sum(axis=(2, 3)))


def test_active_mode_with_controller_and_hooks_equals_numpy_on_the_recorded_frames(
    ctx, sim, tmp_path
):
    with connect(ctx, sim) as conn:
        hooks = Ready()
        aq = ctx.make_acquisition(
            conn=conn,
            nav_shape=NAV,
            hooks=hooks,
            controller=conn.get_active_controller(trigger_mode="soft", count_time=1e-4),
        )
        out = tmp_path / "frames.npy"
        res = ctx.run_udf(
            dataset=aq, udf=[SumUDF(), SumSigUDF(), MaxUDF(), SumSigNav(), RecordUDF(out)]
        )
    assert hooks.seen == [NAV]
    assert tuple(aq.shape.sig) == SIG and aq.dtype == np.uint16
    frames = np.load(out)
    assert frames.shape == NAV + SIG and frames.sum() > 0
    check_against_frames(res, frames)
    assert aq.record["frames_processed"] == np.prod(NAV)
    assert aq.record["exit_status"] == "completed"


def test_the_connection_serves_several_acquisitions_and_run_udf_iter(ctx, sim):
    with connect(ctx, sim) as conn:
        for _ in range(2):
            parts = list(
                ctx.run_udf_iter(
                    dataset=ctx.make_acquisition(conn=conn, nav_shape=NAV), udf=SumSigUDF()
                )
            )
            assert parts[-1].finished
            assert not np.isnan(parts[-1].buffers[0]["intensity"].data).any()
    assert sim.served[0] == 2


class StartsIt(Hooks):
    """LiberTEM-live's way: the hook arms and soft-triggers the Merlin itself."""

    def __init__(self, port, frames):
        self.port, self.frames = port, frames

    def on_ready_for_data(self, env):
        with MerlinControl(host="127.0.0.1", port=self.port, timeout=2.0) as c:
            c.set("NUMFRAMESTOACQUIRE", self.frames)
            c.set("NUMFRAMESPERTRIGGER", self.frames)
            c.set("TRIGGERSTART", 5)
            c.cmd("STARTACQUISITION")
            c.cmd("SOFTTRIGGER")


def test_hook_driven_acquisition_as_libertem_live_writes_it(ctx, sim, tmp_path):
    with connect(ctx, sim) as conn:
        aq = ctx.make_acquisition(
            conn=conn, nav_shape=NAV, hooks=StartsIt(sim.control_port, int(np.prod(NAV)))
        )
        out = tmp_path / "frames.npy"
        res = ctx.run_udf(
            dataset=aq, udf=[SumUDF(), SumSigUDF(), MaxUDF(), SumSigNav(), RecordUDF(out)]
        )
    check_against_frames(res, np.load(out))


def test_passive_mode_waits_for_someone_else_to_start(ctx, sim):
    n = int(np.prod(NAV))

    def operator():
        time.sleep(0.5)
        # LiberTEM-live's own control client, a real peer of the simulator.
        from libertem_live.detectors.merlin.control import MerlinControl as LTControl

        with LTControl(host="127.0.0.1", port=sim.control_port, timeout=2.0) as c:
            c.set("NUMFRAMESTOACQUIRE", n)
            c.set("NUMFRAMESPERTRIGGER", n)
            c.set("TRIGGERSTART", 5)
            c.cmd("STARTACQUISITION")
            c.cmd("SOFTTRIGGER")

    with connect(ctx, sim) as conn:
        assert conn.wait_for_acquisition(timeout=0.3) is None
        t = threading.Thread(target=operator)
        t.start()
        pending = conn.wait_for_acquisition(timeout=10.0)
        assert pending is not None
        aq = ctx.make_acquisition(conn=conn, pending_aq=pending, nav_shape=NAV)
        res = ctx.run_udf(dataset=aq, udf=[SumUDF(), SumSigUDF()])
        t.join()
    total = res[0]["intensity"].data.sum()
    assert total > 0 and total == np.nansum(res[1]["intensity"].data)
    assert not np.isnan(res[1]["intensity"].data).any()


class Fails(Hooks):
    def on_ready_for_data(self, env):
        raise ValueError("the scan engine is not ready")


def test_a_failing_hook_fails_the_run_and_the_context_stays_usable(ctx, sim):
    with connect(ctx, sim) as conn:
        aq = ctx.make_acquisition(
            conn=conn, nav_shape=NAV, hooks=Fails(), controller=conn.get_active_controller()
        )
        with pytest.raises(ValueError, match="scan engine is not ready"):
            ctx.run_udf(dataset=aq, udf=SumUDF())
        res = ctx.run_udf(dataset=ctx.make_acquisition(conn=conn, nav_shape=NAV), udf=SumUDF())
    assert res["intensity"].data.sum() > 0


def test_a_stream_that_stops_raises_udf_run_cancelled(ctx):
    sim = MerlinSimulator(nav_shape=(64, 64), sig_shape=(256, 256), fast=False)
    try:
        with connect(ctx, sim) as conn:
            aq = ctx.make_acquisition(
                conn=conn,
                nav_shape=(64, 64),
                controller=conn.get_active_controller(count_time=1e-3),
            )
            threading.Timer(0.8, sim.stop).start()
            with pytest.raises(UDFRunCancelled) as info:
                ctx.run_udf(dataset=aq, udf=SumSigUDF())
            partial = info.value.results
            assert partial is not None and 0 < partial.frames_processed < 64 * 64
    finally:
        sim.stop()
    # The context stays usable.
    with MerlinSimulator(nav_shape=NAV, sig_shape=SIG) as s2, connect(ctx, s2) as conn:
        r = ctx.run_udf(dataset=ctx.make_acquisition(conn=conn, nav_shape=NAV), udf=SumUDF())
        assert r["intensity"].data.sum() > 0


def test_unreachable_detector_names_the_address(ctx):
    conn = ctx.make_connection("merlin").open(data_host="127.0.0.1", data_port=1, api_port=2)
    with pytest.raises(Exception, match="127.0.0.1"):
        ctx.run_udf(dataset=ctx.make_acquisition(conn=conn, nav_shape=(2, 2)), udf=SumUDF())


class FailsAtRow(SumSigNav):
    def process_frame(self, frame):
        if self.meta.coordinates[0, 0] == 5:
            raise ArithmeticError("bad frame at row 5")
        super().process_frame(frame)


def test_a_failing_udf_ends_the_live_run_with_its_traceback_and_the_recording_is_whole(
    ctx, sim, tmp_path
):
    h5py = pytest.importorskip("h5py")
    out = tmp_path / "live.h5"
    with connect(ctx, sim) as conn:
        aq = ctx.make_acquisition(
            conn=conn,
            nav_shape=NAV,
            output=out,
            controller=conn.get_active_controller(count_time=1e-4),
        )
        with pytest.raises(ArithmeticError, match="row 5") as info:
            ctx.run_udf(dataset=aq, udf=[SumUDF(), FailsAtRow()])
        assert any(t.name == "process_frame" for t in info.traceback)
    with h5py.File(out, "r") as f:
        assert f["/entry"].attrs["recording_complete"] == 1
        validity = f["/entry/data/validity"][()]
        frames = f["/entry/data/frames"]
        received = int(f["/entry/data/validity"].attrs["frames_received"])
        # Every frame that arrived is recorded (and marked so); none is lost.
        assert received == int((validity == 1).sum()) > 0
        assert int(f["/entry/data/validity"].attrs["frames_lost"]) == 0
        ys, xs = np.nonzero(validity == 1)
        assert all(frames[y, x].sum() > 0 for y, x in zip(ys[:5], xs[:5]))


class Normalised(SumSigNav):
    """postprocess on the merged buffers (divides by the frame count)."""

    def postprocess(self):
        self.results.intensity[:] = self.results.intensity / self.results.intensity.size


def test_postprocess_and_on_determine_nav_shape_in_passive_mode(ctx, sim):
    n = int(np.prod(NAV))

    class Shape(Hooks):
        def on_determine_nav_shape(self, env):
            return (NAV[1], NAV[0])  # the transposed scan, same number of positions

    def operator():
        time.sleep(0.3)
        with MerlinControl(host="127.0.0.1", port=sim.control_port, timeout=2.0) as c:
            c.set("NUMFRAMESTOACQUIRE", n)
            c.set("NUMFRAMESPERTRIGGER", n)
            c.set("TRIGGERSTART", 5)
            c.cmd("STARTACQUISITION")
            c.cmd("SOFTTRIGGER")

    with connect(ctx, sim) as conn:
        threading.Thread(target=operator).start()
        pending = conn.wait_for_acquisition(timeout=10.0)
        aq = ctx.make_acquisition(conn=conn, pending_aq=pending, hooks=Shape())
        res = ctx.run_udf(dataset=aq, udf=[SumSigUDF(), Normalised()])
    assert tuple(aq.shape.nav) == (NAV[1], NAV[0])
    plain = res[0]["intensity"].data
    assert plain.shape == (NAV[1], NAV[0])
    assert np.allclose(res[1]["intensity"].data, plain / plain.size)


def test_dectris_active_mode_from_the_simulator(ctx):
    from stemflow.sim import DectrisSimulator

    with DectrisSimulator(nav_shape=(6, 7), sig_shape=(96, 96)) as dsim:
        conn = ctx.make_connection("dectris").open(
            api_host="127.0.0.1",
            api_port=dsim.api_port,
            data_host="127.0.0.1",
            data_port=dsim.stream_port,
        )
        aq = ctx.make_acquisition(
            conn=conn,
            nav_shape=(6, 7),
            controller=conn.get_active_controller(
                trigger_mode="internal", frame_time=1e-3, count_time=1e-3
            ),
        )
        res = ctx.run_udf(dataset=aq, udf=[SumUDF(), SumSigUDF(), SumSigNav()])
    assert tuple(aq.shape.sig) == (96, 96)
    d = res[1]["intensity"].data
    assert d.shape == (6, 7) and not np.isnan(d).any() and d.sum() > 0
    assert np.array_equal(d, res[2]["intensity"].data)
    assert res[0]["intensity"].data.sum() == d.sum()


def test_stemflows_other_hooks_run_in_order(ctx, sim):
    calls = []

    class All(Hooks):
        def on_setup(self, env):
            calls.append("setup")

        def on_ready_for_data(self, env):
            calls.append("ready")

        def on_acquisition_done(self, env):
            calls.append(("done", env.results.frames_processed, env.aq.record["exit_status"]))

        def on_error(self, env):
            calls.append(("error", type(env.error).__name__))

        def on_cleanup(self, env):
            calls.append("cleanup")

    with connect(ctx, sim) as conn:
        aq = ctx.make_acquisition(
            conn=conn, nav_shape=NAV, hooks=All(), controller=conn.get_active_controller()
        )
        ctx.run_udf(dataset=aq, udf=SumUDF())
        assert calls == ["setup", "ready", ("done", int(np.prod(NAV)), "completed"), "cleanup"]
        calls.clear()
        aq = ctx.make_acquisition(
            conn=conn, nav_shape=NAV, hooks=All(), controller=conn.get_active_controller()
        )
        with pytest.raises(ArithmeticError):
            ctx.run_udf(dataset=aq, udf=[SumUDF(), FailsAtRow()])
        assert calls == ["setup", "ready", ("error", "ArithmeticError"), "cleanup"]


def test_the_simulated_instrument_from_python(ctx, tmp_path):
    """The scan engine triggers the simulated detector; the specimen shows in the virtual
    image (not a flat field) and the numpy UDF agrees with the built-in."""
    with ctx.make_connection("simulated").open() as conn:
        aq = ctx.make_acquisition(conn=conn, nav_shape=(16, 16), output=tmp_path / "sim.h5")
        res = ctx.run_udf(dataset=aq, udf=[SumSigUDF(), SumSigNav()])
    img = res[0]["intensity"].data
    assert img.shape == (16, 16) and not np.isnan(img).any()
    assert img.std() > 0
    assert np.array_equal(img, res[1]["intensity"].data)
    assert aq.record["metadata"]["mode"] == "simulated"
    assert (tmp_path / "sim.h5").exists()


def test_asi_tpx3_passive_mode_reads_the_shared_capture_exactly(ctx):
    """LiberTEM-live's passive TPX3 notebook with stemflow's imports, against stemflow's
    simulator serving the shared stream capture: sums equal its CSR reference."""
    from conftest import DATA

    from stemflow.sim import Tpx3Simulator

    ref = np.load(DATA / "tpx3" / "synthetic_16x16_512.npz")
    indptr, values = ref["indptr"], ref["values"].astype(np.float64)
    frame_sums = np.array([values[a:b].sum() for a, b in zip(indptr[:-1], indptr[1:])])
    summed = np.zeros(512 * 512)
    np.add.at(summed, ref["indices"], values)
    with Tpx3Simulator(recording=DATA / "tpx3" / "synthetic_16x16_512.tpx") as tsim:
        conn = ctx.make_connection("asi_tpx3").open(data_port=tsim.data_port)
        pending = conn.wait_for_acquisition(timeout=30.0)
        assert pending is not None
        aq = ctx.make_acquisition(conn=conn, pending_aq=pending)
        res = ctx.run_udf(dataset=aq, udf=[SumUDF(), SumSigUDF(), SumSigNav()])
        conn.close()
    assert tuple(aq.shape.nav) == (16, 16) and tuple(aq.shape.sig) == (512, 512)
    assert np.array_equal(res[1]["intensity"].data.ravel(), frame_sums)
    assert np.array_equal(res[0]["intensity"].data.ravel(), summed)
    # A Python UDF (frames densified per tile) sees the same frames.
    assert np.array_equal(res[2]["intensity"].data.ravel(), frame_sums)
    assert summed.sum() == 104_619
