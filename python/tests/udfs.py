"""NumPy UDFs as the LiberTEM UDF guide writes them (with the imports a LiberTEM user has
changed to stemflow's)."""

import numpy as np

from stemflow.udf import UDF


class MaxUDF(UDF):
    """The guide's maximum over all frames (sig buffer, custom merge)."""

    def get_result_buffers(self):
        return {"maxbuf": self.buffer(kind="sig", dtype=self.meta.input_dtype)}

    def preprocess(self):
        self.results.maxbuf[:] = -np.inf

    def process_frame(self, frame):
        self.results.maxbuf[:] = np.maximum(frame, self.results.maxbuf)

    def merge(self, dest, src):
        dest.maxbuf[:] = np.maximum(dest.maxbuf, src.maxbuf)


class SumSigNav(UDF):
    """A nav-kind sum over the signal (default merge)."""

    def get_result_buffers(self):
        return {"intensity": self.buffer(kind="nav", dtype="float64")}

    def process_frame(self, frame):
        self.results.intensity[:] = np.sum(frame)


class TileMean(UDF):
    """process_tile: the mean of each frame, plus a single-kind frame counter."""

    def get_result_buffers(self):
        return {
            "mean": self.buffer(kind="nav", dtype="float64"),
            "count": self.buffer(kind="single", dtype="int64", extra_shape=(1,)),
        }

    def process_tile(self, tile):
        self.results.mean[:] = tile.reshape(tile.shape[0], -1).mean(axis=1)
        self.results.count[:] += tile.shape[0]

    def merge(self, dest, src):
        dest.mean[:] = src.mean
        dest.count[:] += src.count


class PartitionCoords(UDF):
    """process_partition with extra_shape: each frame's scan coordinates and its pixel at
    (row 1, col 2), in the data's own dtype."""

    def get_preferred_input_dtype(self):
        return self.USE_NATIVE_DTYPE

    def get_result_buffers(self):
        return {
            "where": self.buffer(kind="nav", dtype="int64", extra_shape=(2,)),
            "pixel": self.buffer(kind="nav", dtype=self.meta.input_dtype),
        }

    def process_partition(self, partition):
        self.results.where[:] = self.meta.coordinates
        self.results.pixel[:] = partition[:, 1, 2]


class Scaled(UDF):
    """Parameters through the constructor (self.params) and derived results."""

    def __init__(self, factor=1.0):
        super().__init__(factor=factor)

    def get_result_buffers(self):
        return {
            "total": self.buffer(kind="sig", dtype="float64"),
            "scaled": self.buffer(kind="sig", dtype="float64", use="result_only"),
        }

    def process_frame(self, frame):
        self.results.total[:] += frame

    def merge(self, dest, src):
        dest.total[:] += src.total

    def get_results(self):
        return {"scaled": self.results.total * self.params.factor}
