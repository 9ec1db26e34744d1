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

    def _merge_raw(self, parts):
        """Chan et al.'s pairwise update of (n, mean, M2) per pixel, min/max/sum combined."""

        def get(p, k):
            return np.asarray(p[k][3], dtype=np.float64)

        first = parts[0]
        n = np.nan_to_num(get(first, "frames")).reshape(-1)[0]
        mean, m2 = get(first, "mean"), get(first, "var") * n
        mn, mx, total = get(first, "min"), get(first, "max"), get(first, "sum")
        for p in parts[1:]:
            nb = np.nan_to_num(get(p, "frames")).reshape(-1)[0]
            if nb == 0:
                continue
            if n == 0:
                n, mean, m2 = nb, get(p, "mean"), get(p, "var") * nb
                mn, mx, total = get(p, "min"), get(p, "max"), get(p, "sum")
                continue
            mb, m2b = get(p, "mean"), get(p, "var") * nb
            delta = mb - mean
            tot = n + nb
            mean = mean + delta * nb / tot
            m2 = m2 + m2b + delta * delta * n * nb / tot
            n = tot
            mn, mx, total = (
                np.fmin(mn, get(p, "min")),
                np.fmax(mx, get(p, "max")),
                total + get(p, "sum"),
            )
        var = m2 / n if n else m2 * np.nan
        out = dict(first)
        for k, v in (
            ("mean", mean),
            ("var", var),
            ("std", np.sqrt(var)),
            ("min", mn),
            ("max", mx),
            ("sum", total),
            ("frames", np.array(n)),
        ):
            kind, unit, dtype, _ = first[k]
            out[k] = (kind, unit, dtype, v)
        return out

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
            "num_frames": self._wrap(
                "single", np.array([n], dtype=np.int64), nav_shape, roi, extra_shape=(1,)
            ),
        }
        return out
