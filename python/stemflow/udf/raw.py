"""``PickUDF``: the raw frames of the ROI (LiberTEM's ``libertem.udf.raw.PickUDF``)."""

from __future__ import annotations

import numpy as np

from . import UDF

__all__ = ["PickUDF"]


class PickUDF(UDF):
    """Copies the frames inside the ROI, in the data set's own pixel type (meant for a
    small ROI, usually one frame).

    Results
    -------
    intensity : single buffer, shape ``(positions in ROI,) + sig_shape``
        ``raw_data[i]`` is the i-th frame of the ROI in scan order.
    """

    def __init__(self):
        super().__init__()

    def get_preferred_input_dtype(self):
        return self.USE_NATIVE_DTYPE

    def _count(self) -> int:
        roi = self.meta.roi
        return int(np.prod(self.meta.dataset_shape.nav)) if roi is None else int(roi.sum())

    def get_result_buffers(self):
        sig = tuple(self.meta.dataset_shape.sig)
        return {
            "intensity": self.buffer(
                kind="single", dtype=self.meta.input_dtype, extra_shape=(self._count(),) + sig
            )
        }

    def process_partition(self, partition):
        nav = tuple(self.meta.dataset_shape.nav)
        flat = np.ravel_multi_index(tuple(self.meta.coordinates.T), nav)
        roi = self.meta.roi
        if roi is None:
            slots = flat
        else:
            r = roi.reshape(-1)
            slots = (np.cumsum(r) - r)[flat]
        self.results.intensity[slots] = partition

    def merge(self, dest, src):
        dest.intensity[:] += src.intensity
