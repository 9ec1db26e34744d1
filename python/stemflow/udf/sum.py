"""``SumUDF``: the sum of all frames (LiberTEM's ``libertem.udf.sum.SumUDF``)."""

from ._builtin import BuiltinUDF

__all__ = ["SumUDF"]


class SumUDF(BuiltinUDF):
    """Sum of all frames in the ROI.

    Results
    -------
    intensity : sig buffer, float64, counts
        Exact: integer pixels are summed in 64-bit integers (LiberTEM sums in the input
        type, float32 by default).
    """

    def __init__(self, dtype="float32"):
        super().__init__(dtype=dtype)

    def _describe(self, nav_shape, sig_shape, dtype):
        return {"kind": "sum"}

    def _results(self, raw, nav_shape, sig_shape, roi):
        _, unit, _, v = raw["intensity"]
        return {"intensity": self._wrap("sig", v, nav_shape, roi, "float64", unit)}
