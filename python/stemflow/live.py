"""Live connections and acquisitions (LiberTEM-live's ``make_connection`` /
``make_acquisition``), run by stemflow's orchestrator: the detector is configured, armed,
triggered and read by the Rust drivers, the frames reduced by the engine, the raw frames
optionally recorded to HDF5 — with the GIL released throughout.

Live processing runs on this machine (Dask executors are for offline data).
"""

from __future__ import annotations

import os
import queue
import threading
from typing import Any

import numpy as np

from . import _native
from .udf import Shape

__all__ = [
    "Acquisition",
    "ActiveController",
    "Connection",
    "PendingAcquisition",
    "connection_builder",
]

#: How long a pending (passive) acquisition waits for ``run_udf`` once it has started, s.
PLAN_TIMEOUT_S = 120.0

_DEFAULT_PORTS = {
    # detector: (api/control port, data/stream port) — the vendors' defaults.
    "merlin": (6341, 6342),
    "dectris": (80, 31001),
    # ASI TPX3: Serval's REST API only when given (active mode); the CSR stream on 8283.
    "asi_tpx3": (0, 8283),
}


def connection_builder(detector_type: str) -> _Builder:
    """The ``make_connection(detector_type)`` object; call ``.open(...)`` on it.

    Raises
    ------
    ValueError
        A detector stemflow does not drive (it drives ``merlin``, ``dectris`` and
        ``asi_tpx3``).
    """
    t = detector_type.lower()
    if t in ("arina", "dectris", "quadro", "eiger"):
        t = "dectris"
    if t in ("tpx3", "timepix3", "asi_tpx3", "asi-tpx3"):
        t = "asi_tpx3"
    if t not in _DEFAULT_PORTS and t != "simulated":
        raise ValueError(
            f"unknown or unsupported detector type {detector_type!r}: give 'merlin', "
            "'dectris', 'asi_tpx3' or 'simulated'"
        )
    return _Builder(t)


class _Builder:
    def __init__(self, detector: str):
        self.detector = detector

    def open(
        self,
        data_host: str = "127.0.0.1",
        data_port: int | None = None,
        api_host: str | None = None,
        api_port: int | None = None,
        drain: bool = False,
        profile=None,
        **kwargs,
    ) -> Connection:
        """A connection with LiberTEM-live's keyword names: ``data_host``, ``data_port``
        (Merlin data port 6342 / DECTRIS zmq stream 31001 / ASI TPX3 CSR stream 8283),
        ``api_host``, ``api_port`` (Merlin control 6341 / DECTRIS REST 80 / ASI TPX3
        Serval, usually 8080: give it for active mode; without it the TPX3 connection is
        passive only, as LiberTEM-live's). Other keyword arguments of LiberTEM-live
        (``drain``, buffer sizes, ``bytes_per_frame``, …) are accepted; stemflow's receivers
        size their buffers themselves.

        ``make_connection("simulated").open(profile=None)``: stemflow's simulated
        instrument (its scan engine triggering a simulated Merlin over a modelled trigger
        line, a microscope, a synthetic specimen) from an instrument profile (TOML; the
        embedded one by default), as ``stemflow simulate`` runs it.

        The connection is persistent across acquisitions; close it with ``close()`` or a
        ``with`` block.
        """
        if self.detector == "simulated":
            return Connection("simulated", None, None, None, None, profile=profile)
        return self._open(data_host, data_port, api_host, api_port)

    def _open(self, data_host, data_port, api_host, api_port) -> Connection:
        api_default, data_default = _DEFAULT_PORTS[self.detector]
        return Connection(
            detector=self.detector,
            data_host=data_host,
            data_port=data_default if data_port is None else int(data_port),
            api_host=api_host or data_host,
            api_port=api_default if api_port is None else int(api_port),
        )


class ActiveController:
    """Detector settings stemflow applies in active mode.

    Parameters
    ----------
    trigger_mode : str
        ``soft`` (stemflow triggers the detector over its control channel), ``internal``
        (the detector's timer), ``exte``/``external`` (the scan engine's pixel clock).
    frame_time, count_time : float, s
        Frame period / exposure (DECTRIS: ``frame_time``, ``count_time``; Merlin:
        ``count_time`` is the acquisition time per frame).
    counter_depth : int
        Merlin counter depth (1, 6, 12, 24 bits).
    """

    def __init__(
        self,
        trigger_mode: str = "soft",
        frame_time: float | None = None,
        count_time: float | None = None,
        counter_depth: int = 12,
        **extra,
    ):
        self.trigger_mode = trigger_mode
        self.frame_time = frame_time
        self.count_time = count_time
        self.counter_depth = counter_depth
        self.extra = extra

    def options(self) -> dict:
        t = self.count_time or self.frame_time or 1e-3
        return {
            "trigger": self.trigger_mode,
            "exposure_s": float(t),
            "frame_time_s": None if self.frame_time is None else float(self.frame_time),
            "count_time_s": None if self.count_time is None else float(self.count_time),
            "counter_depth": int(self.counter_depth),
        }


class Connection:
    """A connection to a detector (``merlin``, ``dectris`` or ``asi_tpx3``) or to
    stemflow's simulated instrument (``simulated``)."""

    def __init__(self, detector, data_host, data_port, api_host, api_port, profile=None):
        self.detector = detector
        self.data_host, self.data_port = data_host, data_port
        self.api_host, self.api_port = api_host, api_port
        self.profile = None if profile is None else os.fspath(profile)
        self._closed = False

    def options(self) -> dict:
        """The receiver's addresses (or the profile) for the Rust side."""
        if self.detector == "simulated":
            return {"detector": "simulated", "profile": self.profile}
        o = {"detector": self.detector, "host": self.data_host}
        if self.detector == "merlin":
            o.update(control_port=self.api_port, data_port=self.data_port)
        elif self.detector == "asi_tpx3":
            o.update(detector="tpx3", api_port=self.api_port or 0, data_port=self.data_port)
        else:
            o.update(api_port=self.api_port, stream_port=self.data_port)
        return o

    def get_active_controller(self, **kwargs) -> ActiveController:
        """Settings for active mode (see :class:`ActiveController`)."""
        return ActiveController(**kwargs)

    def wait_for_acquisition(self, timeout: float | None = None, nav_shape=None):
        """Waits until someone else arms the detector and its acquisition starts (passive
        mode).

        Returns
        -------
        PendingAcquisition or None
            None when ``timeout`` s pass first.

        Raises
        ------
        RuntimeError
            The receiver could not connect, naming the detector and the address.
        """
        if self.detector == "simulated":
            raise ValueError("the simulated instrument runs in active mode only")
        pending = PendingAcquisition(self, timeout, nav_shape)
        return pending if pending.wait() else None

    def close(self) -> None:
        """Closes the connection (stemflow connects per acquisition; nothing stays open)."""
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class PendingAcquisition:
    """An acquisition someone else started (passive mode), waiting for ``run_udf``.

    Attributes
    ----------
    nav_shape, sig_shape : tuple of int
        As the detector announced them.
    """

    def __init__(self, conn: Connection, timeout: float | None, nav_shape=None):
        self.conn = conn
        self.timeout = timeout
        self.token = _native.CancelToken()
        self.armed = threading.Event()
        self.done = threading.Event()
        self.plans: queue.Queue = queue.Queue(maxsize=1)
        self.snap_target = None
        self.nav_shape = tuple(nav_shape) if nav_shape is not None else None
        self.sig_shape = None
        self.dtype = None
        self.result = None
        self.error: BaseException | None = None
        wait = 3600.0 if timeout is None else float(timeout)
        opts = dict(
            conn.options(),
            mode="passive",
            arm_timeout_s=wait + 5.0,
            nav_shape=self.nav_shape,
            output=None,
        )
        self._thread = threading.Thread(
            target=self._run, args=(opts,), daemon=True, name="stemflow-passive"
        )
        self._thread.start()

    def _on_armed(self, nav, sig, dtype):
        if self.nav_shape is None:
            self.nav_shape = tuple(nav)
        self.sig_shape, self.dtype = tuple(sig), dtype
        self.armed.set()
        try:
            make_plan = self.plans.get(timeout=PLAN_TIMEOUT_S)
        except queue.Empty:
            raise RuntimeError(
                f"no run_udf for the pending acquisition within {PLAN_TIMEOUT_S:.0f} s"
            ) from None
        return make_plan(tuple(nav), tuple(sig), dtype)

    def _on_snapshot(self, frames, engine):
        target = self.snap_target
        if target is not None:
            target(frames, engine)

    def _run(self, opts):
        try:
            self.result = _native.live_run(
                opts, self._on_armed, self._on_snapshot, None, self.token
            )
        except BaseException as e:  # noqa: BLE001 - re-raised by wait() or run_udf
            self.error = e
        finally:
            self.done.set()
            self.armed.set()

    def wait(self) -> bool:
        """True once the acquisition started; False (and stopped) when the timeout passed."""
        if not self.armed.wait(self.timeout):
            self.token.cancel()
            self._thread.join()
            return False
        if self.done.is_set() and self.sig_shape is None:
            if self.error is not None:
                raise self.error
            raise RuntimeError((self.result or {}).get("error") or "the acquisition did not start")
        return True

    def _attach(self, make_plan, on_snapshot, token):
        self.snap_target = on_snapshot
        self.plans.put(make_plan)
        while not self.done.wait(0.05):
            if token.cancelled:
                self.token.cancel()
        if self.error is not None:
            raise self.error
        return self.result


class _Env:
    """What a hook is given: ``env.aq`` (the acquisition: ``.shape.nav``, ``.shape.sig``,
    ``.record``), and for some hooks ``env.results`` or ``env.error``."""

    def __init__(self, aq, results=None, error=None):
        self.aq = aq
        self.results = results
        self.error = error


class Acquisition:
    """A live acquisition, used like a data set in ``run_udf``.

    Three ways to run it, as in LiberTEM-live:

    * ``controller`` given: stemflow configures, arms and triggers the detector;
      ``hooks.on_ready_for_data`` runs after the arm, before the trigger (start an
      external scan there);
    * no controller, ``hooks`` given: the hook starts the acquisition (e.g. with
      :class:`stemflow.detectors.merlin.control.MerlinControl`) and stemflow receives it;
    * ``pending_aq`` from ``conn.wait_for_acquisition``: someone else started it.

    Attributes
    ----------
    shape : Shape
        The scan shape (``nav``) and, once armed, the frame shape (``sig``).
    dtype : numpy.dtype or None
        Pixel type, once armed.
    record : dict or None
        The last run's record (run.json's: frame counts, end reason, metadata).
    """

    def __init__(
        self,
        conn: Connection,
        nav_shape=None,
        controller=None,
        pending_aq=None,
        hooks=None,
        output=None,
        record_raw: bool = True,
        compression: str | None = None,
        scan_step_nm: float | None = None,
    ):
        if pending_aq is None and controller is None and hooks is None:
            controller = conn.get_active_controller()
        if pending_aq is None and nav_shape is None:
            raise ValueError("an active acquisition needs nav_shape")
        self.conn = conn
        self.controller = controller
        self.pending = pending_aq
        self.hooks = hooks
        self.output = output
        self.record_raw = record_raw
        self.compression = compression
        self.scan_step_nm = scan_step_nm
        nav = (
            tuple(nav_shape)
            if nav_shape is not None
            else (pending_aq.nav_shape if pending_aq is not None else ())
        )
        sig = pending_aq.sig_shape if pending_aq is not None else ()
        self.shape = Shape(tuple(nav or ()), tuple(sig or ()))
        self.dtype = (
            np.dtype(pending_aq.dtype) if pending_aq is not None and pending_aq.dtype else None
        )
        self.record: dict | None = None

    def _plan_maker(self, ctx, udfs, roi, ref):
        from .api import _Plan, _roi_mask

        passive = self.pending is not None

        def make(nav, sig, dtype):
            nav = tuple(nav)
            given = tuple(self.shape.nav) if len(self.shape.nav) else None
            if given is not None and len(given) == 2 and int(np.prod(given)) == int(np.prod(nav)):
                nav = given
            if passive and self.hooks is not None:
                decided = self.hooks.on_determine_nav_shape(_Env(self))
                if decided is not None:
                    decided = tuple(decided)
                    if int(np.prod(decided)) != int(np.prod(nav)):
                        raise ValueError(
                            f"on_determine_nav_shape gave {decided}, the detector sends "
                            f"{int(np.prod(nav))} frames"
                        )
                    nav = decided
            self.shape = Shape(nav, tuple(sig))
            self.dtype = np.dtype(dtype)
            plan = _Plan(udfs, nav, sig, dtype, _roi_mask(roi, nav))
            ref.set(plan)
            return plan.builtins, plan.runners, plan.roi, nav

        return make

    def _hook(self, name: str, **env) -> None:
        f = getattr(self.hooks, name, None) if self.hooks is not None else None
        if f is not None:
            f(_Env(self, **env))

    def _run_live(self, ctx, udfs, roi, progress, plots, partial):
        """The run with stemflow's hooks around it (see :class:`stemflow.api.Hooks`)."""
        last = None
        try:
            self._hook("on_setup")
            for last in self._run(ctx, udfs, roi, progress, plots, partial):
                yield last
            self._hook("on_acquisition_done", results=last)
        except BaseException as e:
            self._hook("on_error", error=e)
            raise
        finally:
            self._hook("on_cleanup")

    def _run(self, ctx, udfs, roi, progress, plots, partial):
        from .api import _drive, _PlanRef

        ref = _PlanRef()
        make_plan = self._plan_maker(ctx, udfs, roi, ref)
        if self.pending is not None:
            pending = self.pending
            self.pending = None  # one run per pending acquisition
            token = _native.CancelToken()

            def start(on_snap, tok):
                return pending._attach(make_plan, on_snap, tok)

            yield from self._finish(_drive(ref, progress, plots, partial, start, token))
            return
        # With a controller stemflow configures, arms and triggers the detector; without
        # one (LiberTEM-live's way for a Merlin) the hook starts the acquisition and
        # stemflow receives it.
        mode = "active" if self.controller is not None else "passive"
        opts: dict[str, Any] = dict(
            self.conn.options(),
            mode=mode,
            nav_shape=tuple(self.shape.nav),
            output=None if self.output is None else str(self.output),
            record_raw=self.record_raw,
        )
        if self.compression is not None:
            opts["compression"] = self.compression
        if self.scan_step_nm is not None:
            opts["scan_step_nm"] = float(self.scan_step_nm)
        if self.controller is not None:
            opts.update(self.controller.options())
        hook = None
        if self.hooks is not None:

            def hook(nav):
                self.hooks.on_ready_for_data(_Env(self))

        def start(on_snap, token):
            return _native.live_run(opts, make_plan, on_snap, hook, token)

        yield from self._finish(_drive(ref, progress, plots, partial, start))

    def _finish(self, gen):
        import json

        for res in gen:
            if getattr(res, "record", None):
                self.record = json.loads(res.record)
            yield res
