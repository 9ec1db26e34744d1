"""``RecordUDF``: the raw frames to a ``.npy`` file while they are processed
(LiberTEM-live's ``libertem_live.udf.record.RecordUDF``)."""

from __future__ import annotations

import os

from ._builtin import BuiltinUDF

__all__ = ["RecordUDF"]


class RecordUDF(BuiltinUDF):
    """Writes every frame at its scan position into a NumPy ``.npy`` file of shape
    ``nav_shape + sig_shape`` in the data's pixel type (written by the Rust engine's
    workers; positions never processed hold zeros).

    Parameters
    ----------
    filename : str or os.PathLike
        The file, created or truncated when the run starts.
    **kwargs
        LiberTEM-live's other arguments (``_is_master``) are accepted; the frames are
        written in their own type.

    Results
    -------
    frames_written : single buffer, shape ``()``, int64
    """

    def __init__(self, filename, **kwargs):
        super().__init__(filename=os.fspath(filename))

    def _describe(self, nav_shape, sig_shape, dtype):
        return {"kind": "record", "path": self.params.filename}

    def _results(self, raw, nav_shape, sig_shape, roi):
        v = raw["frames_written"][3]
        return {"frames_written": self._wrap("single", v, nav_shape, None, "int64")}
