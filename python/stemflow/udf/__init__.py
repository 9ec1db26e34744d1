"""User-defined functions (UDFs) with LiberTEM's interface.

Write a reduction as a subclass of :class:`UDF`: declare result buffers in
:meth:`UDF.get_result_buffers` with :meth:`UDF.buffer`, process data in
``process_frame`` (one 2-D frame), ``process_tile`` (a stack of frames) or
``process_partition`` (consecutive frames of one unit of work), and combine partition
results in :meth:`UDF.merge`. stemflow's Rust engine reads and decodes the frames on every
core and calls the UDF with the GIL held only for that call.

Buffer kinds (as in LiberTEM):

* ``kind="nav"``: one value (or an ``extra_shape`` array) per scan position. Inside
  ``process_frame`` the buffer is the current frame's slot, inside ``process_tile`` and
  ``process_partition`` the slots of those frames (first axis: frames).
* ``kind="sig"``: one value per detector pixel (``sig_shape + extra_shape``), private to a
  partition until merged.
* ``kind="single"``: any fixed ``extra_shape``, private to a partition until merged.

Results of :meth:`stemflow.api.Context.run_udf` are :class:`BufferWrapper` objects:
``.data`` has the full shape (nav buffers: ``nav_shape + extra_shape``, NaN outside the
ROI for float types, 0 for integer types), ``.raw_data`` the values of the processed
positions only (nav buffers with a ROI: ``(positions in ROI,) + extra_shape``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

__all__ = [
    "UDF",
    "BufferWrapper",
    "Shape",
    "UDFException",
    "UDFMeta",
    "UDFRunCancelled",
]


class UDFException(Exception):
    """A UDF declares or returns something the engine cannot use (a sentence says what)."""


class UDFRunCancelled(Exception):
    """The run ended before all frames were processed: a live stream stopped, or the run
    was cancelled. The context stays usable.

    Attributes
    ----------
    results : stemflow.api.UDFResults or None
        The results of the frames processed before the end.
    """

    def __init__(self, message: str = "", results=None):
        super().__init__(message)
        self.results = results


class Shape:
    """A data set's shape: ``.nav`` (scan, e.g. ``(128, 128)``) and ``.sig`` (frame,
    pixels, e.g. ``(256, 256)``); behaves as the tuple ``nav + sig``."""

    def __init__(self, nav: tuple[int, ...], sig: tuple[int, ...]):
        self.nav = _Dims(nav)
        self.sig = _Dims(sig)

    def to_tuple(self) -> tuple[int, ...]:
        """``nav + sig`` as a tuple."""
        return tuple(self.nav) + tuple(self.sig)

    def __iter__(self) -> Iterator[int]:
        return iter(self.to_tuple())

    def __len__(self) -> int:
        return len(self.to_tuple())

    def __getitem__(self, i):
        return self.to_tuple()[i]

    def __eq__(self, other) -> bool:
        return tuple(self) == tuple(other)

    def __repr__(self) -> str:
        return f"Shape(nav={tuple(self.nav)}, sig={tuple(self.sig)})"


class _Dims(tuple):
    """A tuple of dimensions with ``.size`` (product) and ``.dims`` (length)."""

    @property
    def size(self) -> int:
        return int(np.prod(self)) if len(self) else 1

    @property
    def dims(self) -> int:
        return len(self)

    def to_tuple(self) -> tuple[int, ...]:
        return tuple(self)


class UDFMeta:
    """What a UDF knows about the run (``self.meta``).

    Attributes
    ----------
    input_dtype : numpy.dtype
        Pixel type of the frames the UDF is given: ``numpy.result_type`` of the data set's
        and :meth:`UDF.get_preferred_input_dtype` (float32 by default).
    dataset_dtype : numpy.dtype
        The data set's own pixel type.
    dataset_shape : Shape
        ``nav`` and ``sig`` shape of the data set.
    roi : numpy.ndarray or None
        Bool mask of the scan's shape, or None for the whole scan.
    coordinates : numpy.ndarray
        Scan coordinates ``(row, col)`` of the frames being processed, shape
        ``(frames, 2)``, int64.
    """

    def __init__(self, dataset_shape: Shape, dataset_dtype, input_dtype, roi):
        self.dataset_shape = dataset_shape
        self.dataset_dtype = np.dtype(dataset_dtype)
        self.input_dtype = np.dtype(input_dtype)
        self.roi = roi
        self.coordinates = np.zeros((0, 2), dtype=np.int64)
        self.device_class = "cpu"
        self.backend = "numpy"


class UDFParams:
    """The constructor's keyword arguments as attributes (``self.params.peaks``)."""

    def __init__(self, kwargs: dict[str, Any]):
        self.__dict__.update(kwargs)

    def __getitem__(self, k):
        return self.__dict__[k]

    def __contains__(self, k) -> bool:
        return k in self.__dict__

    def __iter__(self):
        return iter(self.__dict__)


class BufferWrapper:
    """A result buffer: its declaration (kind, extra_shape, dtype, use) and, once a run
    has filled it, its values.

    Attributes
    ----------
    kind : {"nav", "sig", "single"}
    extra_shape : tuple of int
    dtype : numpy.dtype
    use : {None, "private", "result_only"}
        ``private`` buffers are not returned; ``result_only`` ones are filled only by
        :meth:`UDF.get_results`.
    unit : str
        Physical unit of the values (built-in UDFs: ``counts``, ``pixels``), or ``""``.
    """

    def __init__(self, kind: str, extra_shape=(), dtype="float32", where=None, use=None):
        if kind not in ("nav", "sig", "single"):
            raise UDFException(f"buffer kind must be 'nav', 'sig' or 'single', not {kind!r}")
        if use not in (None, "private", "result_only"):
            raise UDFException(f"buffer use must be None, 'private' or 'result_only', not {use!r}")
        self.kind = kind
        self.extra_shape = (
            tuple(int(x) for x in np.atleast_1d(extra_shape)) if extra_shape != () else ()
        )
        self.dtype = np.dtype(dtype)
        self.where = where
        self.use = use
        self.unit = ""
        self._raw: np.ndarray | None = None
        self._nav_shape: tuple[int, ...] = ()
        self._roi: np.ndarray | None = None

    # Filled by the runner.
    def _set(self, raw: np.ndarray, nav_shape, roi) -> BufferWrapper:
        self._raw = raw
        self._nav_shape = tuple(nav_shape)
        self._roi = roi
        return self

    @property
    def raw_data(self) -> np.ndarray:
        """The values of the processed positions: for nav buffers with a ROI
        ``(positions in ROI,) + extra_shape``, without one ``(nav positions,) +
        extra_shape``; sig and single buffers as :attr:`data`."""
        if self._raw is None:
            raise UDFException("this buffer holds no values yet")
        if self.kind == "nav" and self._roi is None:
            return self._raw.reshape((-1,) + self.extra_shape)
        return self._raw

    @property
    def data(self) -> np.ndarray:
        """The values in the buffer's full shape; nav buffers ``nav_shape +
        extra_shape``, NaN (float) or 0 (integer) outside the ROI."""
        if self._raw is None:
            raise UDFException("this buffer holds no values yet")
        if self.kind != "nav" or self._roi is None:
            return self._raw
        fill = np.nan if np.issubdtype(self._raw.dtype, np.inexact) else 0
        full = np.full(self._nav_shape + self.extra_shape, fill, dtype=self._raw.dtype)
        full[self._roi] = self._raw
        return full

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    def __array__(self, dtype=None, copy=None):
        a = self.data
        return a if dtype is None else a.astype(dtype)

    def __repr__(self) -> str:
        return f"<BufferWrapper kind={self.kind} dtype={self.dtype} extra_shape={self.extra_shape}>"


class _Views:
    """``self.results`` inside a UDF, and ``dest``/``src`` in :meth:`UDF.merge`: buffer
    name → NumPy view, as attributes and items. The views are plain instance attributes,
    so reading one costs what reading any attribute costs (the frame loop swaps them per
    frame)."""

    def __init__(self, views: dict[str, np.ndarray], wrappers: dict[str, BufferWrapper]):
        d = self.__dict__
        d.update(views)
        d["_names"] = tuple(views)
        d["_wrappers"] = wrappers

    def __setattr__(self, k, v):
        # `self.results.x = value` writes into the buffer, as in LiberTEM.
        if k not in self._names:
            raise AttributeError(f"no result buffer named {k!r}")
        self.__dict__[k][...] = v

    def __getattr__(self, k):
        # Only reached for names that are not buffers.
        raise AttributeError(f"no result buffer named {k!r}")

    def __getitem__(self, k):
        if k not in self._names:
            raise KeyError(k)
        return self.__dict__[k]

    def __contains__(self, k) -> bool:
        return k in self._names

    def __iter__(self):
        return iter(self._names)

    def keys(self):
        return list(self._names)

    def items(self):
        return [(k, self.__dict__[k]) for k in self._names]

    def get_buffer(self, k) -> BufferWrapper:
        """The :class:`BufferWrapper` of buffer ``k`` (``.data``, ``.raw_data``)."""
        return self._wrappers[k]


class UDF:
    """Base class of user-defined functions (LiberTEM's interface).

    Subclasses implement :meth:`get_result_buffers` and one of ``process_frame(frame)``,
    ``process_tile(tile)`` or ``process_partition(partition)``; optionally
    ``preprocess()`` (once per partition, on fresh buffers), :meth:`merge`,
    ``postprocess()`` (once, on the merged results) and :meth:`get_results`.

    Constructor keyword arguments become ``self.params``; a subclass's ``__init__`` must
    pass every parameter to ``super().__init__(**kwargs)`` so that copies for the engine's
    workers (and Dask workers) can be made.
    """

    #: Return from :meth:`get_preferred_input_dtype` to get frames in the data set's own
    #: pixel type.
    USE_NATIVE_DTYPE = bool

    def __init__(self, **kwargs):
        self._kwargs = kwargs
        self.params = UDFParams(kwargs)
        self.meta: UDFMeta | None = None
        self.results: _Views | None = None

    # --- what subclasses override -------------------------------------------------------
    def get_result_buffers(self) -> dict[str, BufferWrapper]:
        """The result buffers, name → :meth:`buffer`."""
        raise NotImplementedError("a UDF must implement get_result_buffers")

    def get_preferred_input_dtype(self):
        """The pixel type the UDF wants (default float32); combined with the data set's by
        ``numpy.result_type``. Return :attr:`USE_NATIVE_DTYPE` for the data set's own."""
        return np.float32

    def merge(self, dest: _Views, src: _Views) -> None:
        """Combines a partition's results ``src`` into the merged results ``dest``.

        The default assigns every buffer (``dest.x[:] = src.x``), right for nav buffers,
        whose ``dest`` views are the partition's positions; a UDF with sig or single
        buffers must override it (e.g. ``dest.total[:] += src.total``).
        """
        for k in dest:
            dest[k][...] = src[k]

    def get_results(self) -> dict[str, Any]:
        """Results derived from the merged buffers, name → array (wrapped as
        :class:`BufferWrapper`); buffers not returned and not private are added as they
        are. The default returns nothing extra."""
        return {}

    def get_backends(self):
        """Array back ends the UDF supports; stemflow runs NumPy only."""
        return ("numpy",)

    def get_method(self) -> str:
        """``"tile"``, ``"frame"`` or ``"partition"``: which process method is fed (tile
        first, as in LiberTEM)."""
        cls = type(self)
        if _overrides(cls, "process_tile"):
            return "tile"
        if _overrides(cls, "process_frame"):
            return "frame"
        if _overrides(cls, "process_partition"):
            return "partition"
        raise UDFException(
            f"{cls.__name__} implements none of process_frame, process_tile, process_partition"
        )

    # --- helpers ------------------------------------------------------------------------
    def buffer(
        self, kind: str, dtype="float32", extra_shape=(), where=None, use=None
    ) -> BufferWrapper:
        """Declares a result buffer.

        Parameters
        ----------
        kind : {"nav", "sig", "single"}
        dtype : numpy dtype, default float32
        extra_shape : tuple of int
            Values per scan position (nav), per pixel (sig), or the whole shape (single).
        where, use : as in LiberTEM; ``use="private"`` hides the buffer from the results,
            ``use="result_only"`` marks one filled only by :meth:`get_results`.

        Raises
        ------
        UDFException
            For an unknown kind or use.
        """
        return BufferWrapper(kind=kind, extra_shape=extra_shape, dtype=dtype, where=where, use=use)

    def copy(self) -> UDF:
        """A fresh instance with the same parameters."""
        return type(self)(**self._kwargs)

    def __getstate__(self):
        # Only the parameters travel (to Dask workers); buffers are made there.
        return {"_kwargs": self._kwargs}

    def __setstate__(self, state):
        self.__init__(**state["_kwargs"])


def _overrides(cls, name: str) -> bool:
    return getattr(cls, name, None) is not None and name not in UDF.__dict__


def _is_builtin(udf) -> bool:
    return getattr(udf, "_stemflow_builtin", False)
