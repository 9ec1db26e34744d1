"""``SumSigUDF``: the sum of each frame (LiberTEM's ``libertem.udf.sumsigudf.SumSigUDF``)."""

from ._builtin import BuiltinUDF

__all__ = ["SumSigUDF"]


class SumSigUDF(BuiltinUDF):
    """Sum over the signal (all pixels) of each frame.

    Results
    -------
    intensity : nav buffer, float64, counts
        NaN outside the ROI.
    """

    def __init__(self):
        super().__init__()

    def _describe(self, nav_shape, sig_shape, dtype):
        return {"kind": "sum_sig"}

    def _results(self, raw, nav_shape, sig_shape, roi):
        _, unit, _, v = raw["intensity"]
        return {"intensity": self._wrap("nav", v, nav_shape, roi, "float64", unit)}
