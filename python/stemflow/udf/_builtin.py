"""The machinery shared by the built-in UDFs: each describes itself to the Rust engine
(``_describe``) and turns the engine's merged buffers into LiberTEM's result buffers
(``_results``). They run at the engine's speed with the GIL released."""

from __future__ import annotations

import numpy as np

from . import UDF, BufferWrapper


class BuiltinUDF(UDF):
    """Base of the UDFs the Rust engine computes itself."""

    _stemflow_builtin = True

    def _describe(self, nav_shape, sig_shape, dtype) -> dict:
        """The engine's description (a dict with ``kind`` and its parameters)."""
        raise NotImplementedError

    def _python_fallback(self, nav_shape, sig_shape, dtype):
        """A Python UDF to run instead, when the engine cannot (None: the engine can)."""
        return

    def _results(self, raw: dict, nav_shape, sig_shape, roi) -> dict[str, BufferWrapper]:
        """LiberTEM's buffers from the engine's ``{name: (kind, unit, dtype, values)}``."""
        raise NotImplementedError

    def _merge_raw(self, parts: list) -> dict:
        """The engine's buffers of several parts of a data set (Dask workers, each over its
        own frames) merged: nav values where a part processed the position, sig and single
        buffers added."""
        out = {}
        for name, (kind, unit, dtype, v) in parts[0].items():
            acc = np.array(v, dtype=np.float64)
            for p in parts[1:]:
                w = np.asarray(p[name][3], dtype=np.float64)
                if kind == "nav":
                    acc = np.where(np.isnan(acc), w, acc)
                else:
                    acc = np.nan_to_num(acc) + np.nan_to_num(w)
            out[name] = (kind, unit, dtype, acc)
        return out

    def get_result_buffers(self):  # pragma: no cover - built-ins are not run as Python UDFs
        return {}

    # The engine's values are float64 arrays; nav values of positions outside the ROI
    # are NaN there. These helpers make LiberTEM's buffers from them.
    @staticmethod
    def _wrap(kind, values, nav_shape, roi, dtype=None, unit="", extra_shape=()):
        arr = np.asarray(values)
        if dtype is not None:
            arr = arr.astype(dtype)
        w = BufferWrapper(kind, extra_shape, arr.dtype)
        w.unit = unit
        if kind == "nav" and roi is not None:
            w._set(arr[roi], nav_shape, roi)
        else:
            w._set(arr, nav_shape, None)
        return w
