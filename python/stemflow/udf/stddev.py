"""``StdDevUDF``: per-pixel mean, variance and standard deviation over the frames
(LiberTEM's ``libertem.udf.stddev.StdDevUDF``)."""

import numpy as np

from ._builtin import BuiltinUDF

__all__ = ["StdDevUDF"]


class StdDevUDF(BuiltinUDF):
    """Per-pixel statistics over the frames in the ROI (population variance, ddof = 0).

    Results
    -------
    sum, mean, var, std, varsum : sig buffers, float64
        ``varsum`` is ``var * num_frames`` (LiberTEM's raw result).
    num_frames : single buffer, shape ``(1,)``, int64
    """

    def __init__(self, dtype="float32", use_numba=True):
        super().__init__(dtype=dtype, use_numba=use_numba)

    def _describe(self, nav_shape, sig_shape, dtype):
        return {"kind": "stats"}

    def _results(self, raw, nav_shape, sig_shape, roi):
        def v(name):
            return np.asarray(raw[name][3], dtype=np.float64)

        n = int(np.nan_to_num(v("frames")).reshape(-1)[0]) if "frames" in raw else 0
        var = v("var")
        out = {
            "sum": self._wrap("sig", v("sum"), nav_shape, roi, unit="counts"),
            "mean": self._wrap("sig", v("mean"), nav_shape, roi, unit="counts"),
            "var": self._wrap("sig", var, nav_shape, roi, unit="counts²"),
            "std": self._wrap("sig", v("std"), nav_shape, roi, unit="counts"),
            "varsum": self._wrap("sig", var * n, nav_shape, roi, unit="counts²"),
            "num_frames": self._wrap("single", np.array([n], dtype=np.int64), nav_shape, roi,
                                     extra_shape=(1,)),
        }
        return out
