"""How a Python UDF runs inside the engine.

The Rust engine calls :meth:`PartitionRunner.new_task` once per worker thread and
:meth:`PartitionTask.process_partition` once per partition (consecutive frames, all inside
the ROI) with the GIL held. A partition is LiberTEM's unit: fresh partition buffers,
``preprocess``, the process method, then ``merge`` into the merged buffers under a lock.
"""

from __future__ import annotations

import threading

import numpy as np

from .udf import UDF, BufferWrapper, Shape, UDFException, UDFMeta, _Views


def input_dtype(udf: UDF, dataset_dtype) -> np.dtype:
    """The pixel type ``udf`` is given: ``numpy.result_type`` of the data set's type and
    the UDF's preference (LiberTEM's rule)."""
    pref = udf.get_preferred_input_dtype()
    if pref is UDF.USE_NATIVE_DTYPE or pref is bool:
        return np.dtype(dataset_dtype)
    return np.result_type(np.dtype(dataset_dtype), np.dtype(pref))


def _declared(udf: UDF) -> dict[str, BufferWrapper]:
    decl = udf.get_result_buffers()
    if not isinstance(decl, dict):
        raise UDFException(f"{type(udf).__name__}.get_result_buffers must return a dict")
    return decl


def _alloc(decl: dict[str, BufferWrapper], n_nav, sig_shape) -> dict[str, np.ndarray]:
    """Zeroed buffers: nav ``(n_nav,) + extra`` (or ``n_nav`` a shape tuple), sig
    ``sig_shape + extra``, single ``extra``."""
    out = {}
    for k, b in decl.items():
        if b.use == "result_only":
            continue
        if b.kind == "nav":
            lead = tuple(n_nav) if isinstance(n_nav, tuple) else (n_nav,)
            shape = lead + b.extra_shape
        elif b.kind == "sig":
            shape = tuple(sig_shape) + b.extra_shape
        else:
            shape = b.extra_shape
        out[k] = np.zeros(shape, dtype=b.dtype)
    return out


class PartitionRunner:
    """One Python UDF of a run: holds the merged results (in ``self.udf``, the user's
    instance) and makes the per-worker tasks.

    Parameters
    ----------
    udf : UDF
        The user's instance; after the run its ``results`` are the merged buffers.
    nav_shape, sig_shape : tuple of int
    dataset_dtype : numpy dtype
        The decoded frames' type.
    roi : numpy.ndarray of bool or None
        Scan positions processed.
    """

    def __init__(self, udf: UDF, nav_shape, sig_shape, dataset_dtype, roi):
        self.udf = udf
        self.nav_shape = tuple(nav_shape)
        self.sig_shape = tuple(sig_shape)
        self.roi = roi
        self.dtype = input_dtype(udf, dataset_dtype)
        native = np.dtype(dataset_dtype)
        self.native = native
        if self.dtype == native:
            self.input_conversion = "native"
            self.astype = None
        elif self.dtype in (np.dtype(np.float32), np.dtype(np.float64)):
            self.input_conversion = str(self.dtype)
            self.astype = None
        else:
            # Another type (e.g. int32): the frames come native and NumPy converts them.
            self.input_conversion = "native"
            self.astype = self.dtype
        self.shape = Shape(self.nav_shape, self.sig_shape)
        self.lock = threading.Lock()
        # Index among the processed positions of each frame (partitions are runs of
        # consecutive frames inside the ROI, so their positions are consecutive there too).
        if roi is None:
            self.rank = None
        else:
            flat = roi.reshape(-1)
            self.rank = np.cumsum(flat) - flat
        self.method = udf.get_method()
        # The merged buffers.
        udf.meta = self._meta()
        self.decl = _declared(udf)
        lead = self.nav_shape if roi is None else (int(roi.sum()),)
        self.merged = _alloc(self.decl, lead, self.sig_shape)
        udf.results = _Views(self.merged, self._wrappers(self.merged))
        if hasattr(udf, "preprocess"):
            # As in LiberTEM, preprocess also prepares the merged buffers (e.g. -inf
            # before a maximum is merged).
            udf.preprocess()

    def _meta(self) -> UDFMeta:
        return UDFMeta(self.shape, self.native, self.dtype, self.roi)

    def _wrappers(self, arrays: dict[str, np.ndarray]) -> dict[str, BufferWrapper]:
        out = {}
        for k, b in self.decl.items():
            w = BufferWrapper(b.kind, b.extra_shape, b.dtype, b.where, b.use)
            if k in arrays:
                w._set(arrays[k], self.nav_shape, self.roi)
            out[k] = w
        return out

    def new_task(self) -> PartitionTask:
        """A task for one engine worker."""
        return PartitionTask(self)

    def nav_view(self, arrays: dict[str, np.ndarray], start: int, n: int) -> dict[str, np.ndarray]:
        """Views of the merged buffers for processed positions ``start..start+n``."""
        views = {}
        for k, a in arrays.items():
            b = self.decl[k]
            if b.kind == "nav":
                views[k] = a.reshape((-1,) + b.extra_shape)[start : start + n]
            else:
                views[k] = a
        return views

    def finish(self) -> dict[str, BufferWrapper]:
        """After the run: ``postprocess``, then the results (declared buffers that are not
        private, replaced or completed by ``get_results``)."""
        udf = self.udf
        udf.results = _Views(self.merged, self._wrappers(self.merged))
        if hasattr(udf, "postprocess"):
            udf.postprocess()
        return self.results()

    def results(self) -> dict[str, BufferWrapper]:
        """The current results (also for partial results while the run goes on)."""
        udf = self.udf
        with self.lock:
            snapshot = {k: a.copy() for k, a in self.merged.items()}
        udf.results = _Views(snapshot, self._wrappers(snapshot))
        derived = udf.get_results() or {}
        out = {}
        for k, b in self.decl.items():
            if b.use == "private" and k not in derived:
                continue
            if k in derived:
                continue
            if k in snapshot:
                out[k] = BufferWrapper(b.kind, b.extra_shape, b.dtype, b.where, b.use)._set(
                    snapshot[k], self.nav_shape, self.roi
                )
        for k, v in derived.items():
            if isinstance(v, BufferWrapper):
                out[k] = v
                continue
            arr = np.asarray(v)
            b = self.decl.get(k)
            kind = b.kind if b is not None else "single"
            extra = b.extra_shape if b is not None else arr.shape
            w = BufferWrapper(kind, extra, arr.dtype)
            if (
                kind == "nav"
                and self.roi is not None
                and arr.shape[: len(self.nav_shape)] == self.nav_shape
            ):
                arr = arr[self.roi]
            w._set(arr, self.nav_shape, self.roi if kind == "nav" else None)
            if kind == "nav" and self.roi is None and arr.shape[:1] != self.nav_shape[:1]:
                w._raw = arr.reshape(self.nav_shape + extra)
            out[k] = w
        udf.results = _Views(self.merged, self._wrappers(self.merged))
        return out


class PartitionTask:
    """The per-worker copy of a UDF."""

    def __init__(self, runner: PartitionRunner):
        self.runner = runner
        self.udf = runner.udf.copy()
        self.udf.meta = runner._meta()
        self.decl = runner.decl

    def process_partition(self, first_frame: int, frames: np.ndarray) -> None:
        """Processes frames ``first_frame..`` (a read-only ``(n, rows, cols)`` array,
        valid only during this call) as one partition and merges the results."""
        r = self.runner
        udf = self.udf
        n = frames.shape[0]
        if r.astype is not None:
            frames = frames.astype(r.astype)
        part = _alloc(self.decl, n, r.sig_shape)
        udf.results = _Views(part, {})
        idx = np.arange(first_frame, first_frame + n, dtype=np.int64)
        cols = r.nav_shape[-1] if r.nav_shape else 1
        coords = np.stack([idx // cols, idx % cols], axis=1)
        meta = udf.meta
        meta.coordinates = coords
        if hasattr(udf, "preprocess"):
            udf.preprocess()
        try:
            if r.method == "frame":
                # One results object for the partition; per frame only its nav views are
                # swapped (a scalar slot stays an array, shape (1,), so that
                # `self.results.x[:] = v` writes into the partition buffer).
                views = _Views(part, {})
                slots = views.__dict__
                navs = [
                    (k, a if self.decl[k].extra_shape else a.reshape(n, 1))
                    for k, a in part.items()
                    if self.decl[k].kind == "nav"
                ]
                udf.results = views
                process = udf.process_frame
                for i in range(n):
                    for k, a in navs:
                        slots[k] = a[i]
                    meta.coordinates = coords[i : i + 1]
                    process(frames[i])
            elif r.method == "tile":
                udf.process_tile(frames)
            else:
                udf.process_partition(frames)
        finally:
            udf.results = None
            meta.coordinates = coords
        start = first_frame if r.rank is None else int(r.rank[first_frame])
        with r.lock:
            dest = _Views(r.nav_view(r.merged, start, n), {})
            src = _Views(part, {})
            r.udf.merge(dest, src)
