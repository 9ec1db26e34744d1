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
