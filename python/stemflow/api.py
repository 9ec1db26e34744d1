"""stemflow's Python API, under LiberTEM's and LiberTEM-live's names.

A notebook written for LiberTEM-live runs with its imports changed::

    from stemflow.api import LiveContext            # was: libertem_live.api
    from stemflow.udf.sum import SumUDF              # was: libertem.udf.sum

    with LiveContext() as ctx:
        ds = ctx.load("mib", path="scan.hdr")
        res = ctx.run_udf(dataset=ds, udf=[SumUDF(), MyNumpyUDF()])

Frames are read, decoded and reduced by stemflow's Rust engine on every core, with the
GIL released; Python UDFs are called per partition with read-only NumPy views.
"""

from __future__ import annotations

import asyncio
import os
import queue
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from . import _native
from ._runner import PartitionRunner
from .udf import UDF, BufferWrapper, Shape, UDFRunCancelled, _is_builtin

__all__ = [
    "Context",
    "DataSet",
    "Hooks",
    "LiveContext",
    "UDFResults",
    "UDFRunCancelled",
]

# Pixel types the engine holds natively; others are converted for in-memory data.
_NATIVE = {np.dtype(t) for t in ("uint8", "uint16", "uint32", "uint64", "float32", "float64")}


class DataSet:
    """An offline data set (what :meth:`Context.load` returns).

    Attributes
    ----------
    shape : Shape
        ``shape.nav`` (scan, ``(rows, cols)``) and ``shape.sig`` (frame, pixels).
    dtype : numpy.dtype
        Pixel type of the decoded frames (float32 for int16 files, …).
    path : str
        The file (``<memory>`` for an array).
    """

    def __init__(self, native, dtype=None, load=None):
        self._native = native
        # How to open it again (in a Dask worker): the load arguments, or the array.
        self._load = load
        self.shape = Shape(native.nav_shape, native.sig_shape)
        self.dtype = np.dtype(dtype if dtype is not None else native.dtype)
        self.path = native.path

    @property
    def nav_shape(self) -> tuple[int, int]:
        return tuple(self.shape.nav)

    @property
    def sig_shape(self) -> tuple[int, int]:
        return tuple(self.shape.sig)

    def __repr__(self) -> str:
        return f"<DataSet {self.path} {self.shape!r} {self.dtype}>"


class UDFResults:
    """Partial or final results of :meth:`Context.run_udf_iter`.

    Attributes
    ----------
    buffers : list of dict
        One dict per UDF (buffer name → :class:`~stemflow.udf.BufferWrapper`).
    frames_processed : int
    damage : numpy.ndarray of bool
        Nav-shaped: True where a frame was processed.
    finished : bool
        True for the last (final) results.
    """

    def __init__(self, buffers, frames_processed, damage, finished):
        self.buffers = buffers
        self.frames_processed = frames_processed
        self.damage = damage
        self.finished = finished


class Hooks:
    """Callbacks around a live acquisition; subclass and override what you need.

    LiberTEM-live's two:

    * ``on_ready_for_data(env)``: once the receiver is ready (``env.aq.shape.nav``). With a
      controller, after stemflow armed the detector and before it triggers — start an
      external scan here; without one, start the acquisition here.
    * ``on_determine_nav_shape(env)``: passive mode, may return the scan shape (same number
      of positions as the detector sends).

    stemflow's other hooks (those of its sequence scripts):

    * ``on_setup(env)``: before anything is sent to the detector;
    * ``on_acquisition_done(env)``: after the last frame, with ``env.results`` (the final
      :class:`UDFResults`) and ``env.aq.record``;
    * ``on_error(env)``: the run failed or was cancelled, ``env.error`` the exception
      (re-raised after the hook);
    * ``on_cleanup(env)``: always, last.

    An exception raised by ``on_setup``, ``on_ready_for_data`` or
    ``on_determine_nav_shape`` fails the run cleanly (the detector disarmed, the recording
    finished).
    """

    def on_setup(self, env) -> None:
        pass

    def on_ready_for_data(self, env) -> None:
        pass

    def on_determine_nav_shape(self, env):
        return None

    def on_acquisition_done(self, env) -> None:
        pass

    def on_error(self, env) -> None:
        pass

    def on_cleanup(self, env) -> None:
        pass


def _roi_mask(roi, nav_shape) -> np.ndarray | None:
    """LiberTEM's ROI forms → a bool mask of the scan's shape."""
    if roi is None:
        return None
    nav_shape = tuple(nav_shape)
    if isinstance(roi, np.ndarray) and roi.dtype == bool:
        if roi.shape == nav_shape:
            return roi
        if roi.size == int(np.prod(nav_shape)):
            return roi.reshape(nav_shape)
        raise ValueError(f"the ROI has shape {roi.shape}, the scan is {nav_shape}")
    mask = np.zeros(nav_shape, dtype=bool)
    if isinstance(roi, tuple) and all(isinstance(i, (int, np.integer)) for i in roi):
        mask[roi] = True
        return mask
    if isinstance(roi, (list, tuple)):
        for item in roi:
            coord, value = item
            mask[tuple(coord)] = bool(value)
        return mask
    arr = np.asarray(roi)
    if arr.dtype == bool:
        return _roi_mask(arr, nav_shape)
    raise ValueError(
        "roi must be a bool array of the scan's shape, a coordinate (row, col), or a list of "
        "((row, col), bool)"
    )


class _Progress:
    """Progress on the terminal (stderr), at most 4 updates a second."""

    def __init__(self, total: int):
        self.total = max(total, 1)
        self.last = 0.0
        self.t0 = time.monotonic()

    def update(self, done: int, final: bool = False):
        now = time.monotonic()
        if not final and now - self.last < 0.25:
            return
        self.last = now
        rate = done / max(now - self.t0, 1e-9)
        end = "\n" if final else "\r"
        sys.stderr.write(
            f"stemflow: {done}/{self.total} frames ({100.0 * done / self.total:.0f} %), "
            f"{rate:,.0f} frames/s{end}"
        )
        sys.stderr.flush()


class _Plan:
    """The UDFs of one run split into the engine's built-ins and Python runners."""

    def __init__(self, udfs: Sequence[UDF], nav_shape, sig_shape, dtype, roi):
        self.udfs = list(udfs)
        self.nav_shape = tuple(nav_shape)
        self.sig_shape = tuple(sig_shape)
        self.roi = roi
        self.builtins: list[dict] = []
        self.runners: list[PartitionRunner] = []
        # Per user UDF: ("builtin", index) or ("python", index).
        self.slots: list[tuple[str, int]] = []
        for u in self.udfs:
            if not isinstance(u, UDF):
                raise TypeError(f"{u!r} is not a UDF (subclass stemflow.udf.UDF)")
            target = u
            if _is_builtin(u):
                fallback = u._python_fallback(self.nav_shape, self.sig_shape, dtype)
                if fallback is None:
                    self.slots.append(("builtin", len(self.builtins)))
                    self.builtins.append(u._describe(self.nav_shape, self.sig_shape, dtype))
                    continue
                target = fallback
            self.slots.append(("python", len(self.runners)))
            self.runners.append(PartitionRunner(target, self.nav_shape, self.sig_shape, dtype, roi))

    def results(self, engine: list[dict], final: bool) -> list[dict[str, BufferWrapper]]:
        out = []
        for u, (kind, i) in zip(self.udfs, self.slots):
            if kind == "builtin":
                out.append(u._results(engine[i], self.nav_shape, self.sig_shape, self.roi))
            else:
                r = self.runners[i]
                res = r.finish() if final else r.results()
                if _is_builtin(u):
                    # A built-in run as NumPy code keeps its buffer names.
                    for w in res.values():
                        w.unit = "counts"
                out.append(res)
        return out


class Context:
    """The entry point for offline work (LiberTEM's ``libertem.api.Context``).

    Parameters
    ----------
    executor : None, "inline", or a :class:`stemflow.executor.DaskExecutor`
        Where offline partitions run: this process (the Rust engine on every core), or
        Dask workers (see :mod:`stemflow.executor`).
    threads : int, optional
        Engine worker threads in this process (default: one per core).
    plot_class : ignored
        Accepted for compatibility.

    A context manager; :meth:`close` releases its resources. It stays usable after an
    error or a cancelled run.
    """

    def __init__(self, executor=None, threads: int | None = None, plot_class=None):
        self.executor = executor
        self.threads = threads
        self._closed = False

    # --- lifecycle --------------------------------------------------------------------
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def close(self) -> None:
        """Releases the context (and a Dask executor it was given)."""
        if self.executor is not None and hasattr(self.executor, "close"):
            self.executor.close()
        self._closed = True

    @classmethod
    def make_with(cls, executor_spec: str = "inline", **kwargs) -> Context:
        """A context for ``"inline"``/``"threads"`` (this process) or
        ``"dask-make-default"`` (a local Dask cluster)."""
        if executor_spec in ("inline", "threads", "default", "synchronous"):
            return cls(**kwargs)
        if executor_spec in ("dask", "dask-make-default", "dask-integration"):
            from .executor import DaskExecutor

            return cls(executor=DaskExecutor.make_local(), **kwargs)
        raise ValueError(f"unknown executor spec {executor_spec!r}")

    # --- data sets --------------------------------------------------------------------
    def load(self, filetype: str, *args, **kwargs) -> DataSet:
        """Opens a data set.

        Parameters
        ----------
        filetype : str
            ``auto``, ``mib``/``merlin``, ``dectris``/``arina``, ``hdf5`` (``ds_path``),
            ``npy``, ``raw`` (``dtype``, ``nav_shape``, ``sig_shape``, ``offset``), or
            ``memory`` (``data=ndarray``, ``sig_dims=2``).
        path : str
            The file (first positional argument or keyword).
        nav_shape, sig_shape : tuple of int, optional
            Scan shape (checked against the file's frame count) and, for raw files, the
            frame shape.

        Raises
        ------
        ValueError
            The file cannot be read as that type (naming the file and the problem).
        TypeError
            An unknown keyword argument.
        """
        ft = filetype.lower()
        if ft == "memory":
            return self._load_memory(**kwargs)
        path = kwargs.pop("path", args[0] if args else None)
        if path is None:
            raise TypeError("load() needs a path")
        nav_shape = kwargs.pop("nav_shape", None)
        sig_shape = kwargs.pop("sig_shape", None)
        ds_path = kwargs.pop("ds_path", None)
        dtype = kwargs.pop("dtype", None)
        offset = int(kwargs.pop("offset", 0) or 0)
        byte_order = kwargs.pop("byte_order", None)
        frame_header = int(kwargs.pop("frame_header_bytes", 0) or 0)
        sync_offset = kwargs.pop("sync_offset", 0)
        if sync_offset:
            raise ValueError(
                "sync_offset is not offered; give nav_shape for the frames in the file"
            )
        for ignored in ("io_backend", "num_partitions", "enable_direct", "nav_shape_fallback"):
            kwargs.pop(ignored, None)
        if kwargs:
            raise TypeError(f"load() got unknown arguments: {sorted(kwargs)}")
        fmt = {
            "auto": None,
            "mib": "merlin",
            "merlin": "merlin",
            "dectris": "dectris",
            "arina": "dectris",
            "hdf5": "hdf5",
            "h5": "hdf5",
            "npy": "npy",
            "raw": "raw",
        }.get(ft, "?")
        if fmt == "?":
            raise ValueError(f"unknown file type {filetype!r}")
        if nav_shape is not None:
            nav_shape = tuple(int(x) for x in nav_shape)
            if len(nav_shape) == 1:
                nav_shape = (1, nav_shape[0])
        if sig_shape is not None:
            sig_shape = tuple(int(x) for x in sig_shape)
        dt = "u16" if dtype is None else np.dtype(dtype).str.lstrip("=|")
        load = {
            "path": os.fspath(path),
            "format": fmt,
            "nav_shape": nav_shape,
            "sig_shape": sig_shape,
            "dtype": dt,
            "ds_path": ds_path,
            "byte_order": byte_order,
            "offset": offset,
            "frame_header_bytes": frame_header,
        }
        native = _native.open_dataset(**load)
        return DataSet(native, load=load)

    def _load_memory(self, data=None, sig_dims: int = 2, nav_shape=None, sig_shape=None, **kw):
        for ignored in ("num_partitions", "tileshape", "io_backend"):
            kw.pop(ignored, None)
        if kw:
            raise TypeError(f"load('memory') got unknown arguments: {sorted(kw)}")
        if data is None:
            raise TypeError("load('memory') needs data=ndarray")
        data = np.asarray(data)
        if sig_dims != 2:
            raise ValueError("only 2-D frames (sig_dims=2) are offered")
        sig = tuple(sig_shape) if sig_shape is not None else data.shape[-2:]
        nav = tuple(nav_shape) if nav_shape is not None else data.shape[:-2]
        if len(nav) == 1:
            nav = (1, nav[0])
        if len(nav) != 2:
            raise ValueError(f"the scan must be 1-D or 2-D, the array is {data.shape}")
        original = data.dtype
        if data.dtype == bool:
            data = data.astype(np.uint8)
        elif data.dtype not in _NATIVE:
            # Signed and small float types are held as float (exact for int8/16 in
            # float32, int32 in float64).
            data = data.astype(np.float32 if data.dtype.itemsize <= 2 else np.float64)
        data = np.ascontiguousarray(data)
        native = _native.memory_dataset(data.reshape(-1), nav, sig)
        return DataSet(native, dtype=original, load={"memory": data, "nav": nav, "sig": sig})

    # --- running UDFs -----------------------------------------------------------------
    def run_udf(
        self,
        dataset,
        udf,
        roi=None,
        corrections=None,
        progress: bool = False,
        backends=None,
        plots=None,
        sync: bool = True,
    ):
        """Runs one UDF or a list of UDFs in one pass over ``dataset``.

        Parameters
        ----------
        dataset : DataSet or a live acquisition
        udf : UDF or list of UDF
        roi : bool array of the scan's shape, a coordinate ``(row, col)``, or a list of
            ``((row, col), bool)``; results outside it are NaN (nav buffers)
        progress : bool
            Show progress on the terminal.
        plots : None, True, or a list
            Live plots of the results (in Jupyter; progress lines elsewhere).
        sync : bool
            False: return an awaitable instead.

        Returns
        -------
        dict or list of dict
            Buffer name → :class:`~stemflow.udf.BufferWrapper` (``.data``, ``.raw_data``),
            one dict per UDF when ``udf`` is a list.

        Raises
        ------
        UDFRunCancelled
            A live stream stopped before all frames arrived, or the run was cancelled.
        Exception
            The first exception a Python UDF raised, with its traceback.
        """
        if not sync:
            return self._async(
                self.run_udf,
                dataset,
                udf,
                roi=roi,
                corrections=corrections,
                progress=progress,
                backends=backends,
                plots=plots,
            )
        single = isinstance(udf, UDF)
        udfs = [udf] if single else list(udf)
        last = None
        for last in self._iterate(dataset, udfs, roi, progress, plots, partial=False):
            pass
        out = last.buffers
        return out[0] if single else out

    def run_udf_iter(
        self,
        dataset,
        udf,
        roi=None,
        corrections=None,
        progress: bool = False,
        backends=None,
        plots=None,
        sync: bool = True,
    ):
        """As :meth:`run_udf`, yielding :class:`UDFResults` with partial results while the
        run goes on (about every 0.1 s) and the final ones last.

        With ``sync=False``, an async iterator.
        """
        single = isinstance(udf, UDF)
        udfs = [udf] if single else list(udf)
        gen = self._iterate(dataset, udfs, roi, progress, plots, partial=True)
        if sync:
            return gen
        return _AsyncGen(gen)

    async def _async(self, fn, *args, **kwargs):
        return await asyncio.to_thread(fn, *args, **kwargs)

    def _iterate(self, dataset, udfs, roi, progress, plots, partial) -> Iterator[UDFResults]:
        if hasattr(dataset, "_run_live"):
            yield from dataset._run_live(self, udfs, roi, progress, plots, partial)
            return
        if not isinstance(dataset, DataSet):
            raise TypeError(f"{dataset!r} is not a data set from ctx.load")
        if self.executor is not None and hasattr(self.executor, "run"):
            yield from self.executor.run(self, dataset, udfs, roi, progress)
            return
        nav, sig = dataset.nav_shape, dataset.sig_shape
        mask = _roi_mask(roi, nav)
        plan = _Plan(udfs, nav, sig, dataset._native.dtype, mask)

        def start(on_snap, token):
            return _native.run_dataset(
                dataset._native,
                plan.builtins,
                plan.runners,
                mask,
                on_snap,
                0.1,
                self.threads,
                token,
            )

        yield from _drive(_PlanRef(plan), progress, plots, partial, start)


def _damage(plan: _Plan, frames_processed: int, engine=None) -> np.ndarray:
    """Nav-shaped: True where a frame was processed. From a built-in nav buffer when the
    run has one (positions not yet merged are NaN there); else the first
    ``frames_processed`` positions (exact at the end of a run, approximate for partial
    results, whose partitions finish out of order)."""
    for raw in engine or ():
        for kind, _unit, _dtype, values in raw.values():
            if kind == "nav":
                v = np.asarray(values)
                done = ~np.isnan(v)
                return done.reshape(plan.nav_shape + (-1,)).any(axis=-1)
    d = np.zeros(plan.nav_shape, dtype=bool)
    d.reshape(-1)[:frames_processed] = True
    if plan.roi is not None:
        d &= plan.roi
    return d


class _PlanRef:
    """The plan of a run, known at once offline and once the detector is armed live."""

    def __init__(self, plan: _Plan | None = None):
        self.plan = plan
        self.total = 0
        if plan is not None:
            self.total = (
                int(plan.roi.sum()) if plan.roi is not None else int(np.prod(plan.nav_shape))
            )

    def set(self, plan: _Plan) -> None:
        self.plan = plan
        self.total = int(plan.roi.sum()) if plan.roi is not None else int(np.prod(plan.nav_shape))


def _drive(ref: _PlanRef, progress, plots, partial, start, token=None) -> Iterator[UDFResults]:
    """Runs ``start(on_snapshot, cancel_token)`` (blocking, GIL released inside) on a
    thread, yielding partial results from its snapshots when ``partial``."""
    from .viz import LivePlots

    prog: _Progress | None = None
    viz: LivePlots | None = None
    token = token if token is not None else _native.CancelToken()
    q: queue.Queue = queue.Queue(maxsize=2)
    outcome: dict[str, Any] = {}

    def on_snapshot(frames, engine):
        nonlocal prog
        if progress:
            if prog is None:
                prog = _Progress(ref.total)
            prog.update(frames)
        if partial or plots:
            try:
                q.put_nowait((frames, engine))
            except queue.Full:
                pass

    def work():
        try:
            outcome["summary"] = start(on_snapshot, token)
        except BaseException as e:  # noqa: BLE001 - re-raised on the caller's thread
            outcome["error"] = e
        finally:
            q.put(None)

    if not (partial or plots):
        # Blocking on this thread: Ctrl-C reaches the engine through its snapshot callback.
        work()
        q.get_nowait()
    else:
        t = threading.Thread(target=work, name="stemflow-run", daemon=True)
        t.start()
        try:
            while True:
                item = q.get()
                if item is None:
                    break
                frames, engine = item
                plan = ref.plan
                res = UDFResults(
                    plan.results(engine, final=False), frames, _damage(plan, frames, engine), False
                )
                if plots:
                    if viz is None:
                        viz = LivePlots.make(plots, plan)
                    viz.update(res)
                if partial:
                    yield res
        except BaseException:
            token.cancel()
            t.join()
            raise
        t.join()
    if "error" in outcome:
        raise outcome["error"]
    summary = outcome["summary"]
    plan = ref.plan
    if plan is None:
        raise RuntimeError(summary.get("error") or "the acquisition ended before it started")
    done = summary["frames_processed"]
    error = summary.get("error")
    if len(summary["results"]) < len(plan.builtins):
        # The run ended before its pipeline produced results (a failed arm, a deadline).
        raise RuntimeError(error or "the run ended without results")
    if prog is not None:
        prog.update(done, final=True)
    res = UDFResults(
        plan.results(summary["results"], final=True),
        done,
        _damage(plan, done, summary["results"]),
        True,
    )
    res.record = summary.get("record")
    if plots:
        if viz is None:
            viz = LivePlots.make(plots, plan)
        viz.update(res, final=True)
    expected = summary.get("frames_expected", ref.total)
    if summary["cancelled"] or summary.get("exit_status") == "Cancelled" or done < expected:
        # A live stream that stopped (or a cancel): the frames so far are in `results`.
        why = error or summary.get("end_reason")
        why = f": {why}" if why else ""
        raise UDFRunCancelled(f"the run ended after {done} of {expected} frames{why}", results=res)
    if error:
        raise RuntimeError(error)
    yield res


class _AsyncGen:
    """An async iterator over a blocking generator (each step on a worker thread)."""

    def __init__(self, gen):
        self._gen = gen

    def __aiter__(self):
        return self

    async def __anext__(self):
        def step():
            try:
                return next(self._gen)
            except StopIteration:
                raise StopAsyncIteration from None

        return await asyncio.to_thread(step)


class LiveContext(Context):
    """The entry point for live work (LiberTEM-live's ``libertem_live.api.LiveContext``):
    everything :class:`Context` does, plus connections to detectors and acquisitions.
    """

    def make_connection(self, detector_type: str):
        """A connection builder for ``'merlin'`` or ``'dectris'``: call ``.open(...)`` with
        LiberTEM-live's keyword names.

        Raises
        ------
        ValueError
            An unknown detector type.
        """
        from .live import connection_builder

        return connection_builder(detector_type)

    def make_acquisition(
        self,
        conn,
        nav_shape=None,
        frames_per_partition=None,
        controller=None,
        pending_aq=None,
        hooks=None,
        output=None,
        record_raw: bool = True,
        compression: str | None = None,
        scan_step_nm: float | None = None,
    ):
        """An acquisition on ``conn``, used like a data set in :meth:`run_udf`.

        Active mode (``controller`` from ``conn.get_active_controller(...)``): stemflow
        configures and arms the detector, then calls ``hooks.on_ready_for_data``. Without a
        controller, ``hooks.on_ready_for_data`` starts the acquisition (LiberTEM-live's
        way). Passive mode (``pending_aq`` from ``conn.wait_for_acquisition``): someone
        else arms it. See :class:`stemflow.live.Acquisition`.

        Parameters
        ----------
        output : str or os.PathLike, optional
            stemflow's addition: an HDF5 file (stemflow's recording layout,
            ``docs/formats.md``) the raw frames, their validity and the run record are
            written to while they are processed (active and hook-driven modes).
        record_raw : bool
            False: the file gets the validity map, metadata and results, not the frames.
        compression : str, optional
            The frames' compression in ``output``: ``"none"``, ``"deflate"`` (the default:
            every reader opens it), ``"deflate:N"`` (N = 1–9) or ``"bslz4"``
            (bitshuffle-LZ4; readers need ``hdf5plugin``).
        scan_step_nm : float, optional
            Scan step, nm per position, for the recording's calibration (default: the
            profile's for ``'simulated'``, else uncalibrated).

        Raises
        ------
        ValueError
            Active mode without ``nav_shape``.
        """
        from .live import Acquisition

        return Acquisition(
            conn,
            nav_shape=nav_shape,
            controller=controller,
            pending_aq=pending_aq,
            hooks=hooks,
            output=output,
            record_raw=record_raw,
            compression=compression,
            scan_step_nm=scan_step_nm,
        )
